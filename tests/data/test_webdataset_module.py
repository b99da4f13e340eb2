"""StableDataModuleFromConfig over webdataset shards written here, with the image mappers."""

import io

import pytest
import torch
from PIL import Image

from sgm.data.dataset import StableDataModuleFromConfig
from sgm.errors import ConfigError

N_SAMPLES = 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    import webdataset as wds

    root = tmp_path_factory.mktemp("shards")
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(N_SAMPLES):
            height, width = 20 + i, 30
            image = Image.new("RGB", (width, height), color=(10 * i, 255, 0))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            sink.write(
                {
                    "__key__": f"s{i:03d}",
                    "png": buffer.getvalue(),
                    "cls": i,
                    "json": {"height": 1000 + i, "width": 2000},
                    "txt": f"caption {i}",
                }
            )
    return root


def _config(root, workers, pattern=True):
    urls = [str(root / "shard-{000000..000002}.tar")] if pattern else [str(root)]
    return {
        "datapipeline": {
            "urls": urls,
            "pipeline_config": {"shardshuffle": 10, "sample_shuffle": 5},
            "decoders": ["pil"],
            "postprocessors": [
                {
                    "target": "sgm.data.mappers.TorchVisionImageTransforms",
                    "params": {
                        "key": "png",
                        "transforms": [
                            {
                                "target": "torchvision.transforms.Resize",
                                "params": {"size": 16, "interpolation": 3},
                            },
                            {"target": "torchvision.transforms.ToTensor"},
                        ],
                    },
                },
                # the original configs name these sdata.mappers.*; they resolve here
                {"target": "sdata.mappers.Rescaler", "params": {"key": "png"}},
                {
                    "target": "sgm.data.mappers.AddOriginalImageSizeAsTupleAndCropToSquare",
                    "params": {"h_key": "height", "w_key": "width", "key": "png"},
                },
            ],
        },
        "loader": {"batch_size": 5, "num_workers": workers},
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_reads_every_sample_once_with_mappers(shards, workers):
    module = StableDataModuleFromConfig(train=_config(shards, workers, pattern=workers == 0))
    batches = list(module.train_dataloader())
    labels = torch.cat([b["cls"] for b in batches]).tolist()
    assert sorted(labels) == list(range(N_SAMPLES))
    for batch in batches:
        images = batch["png"]
        assert images.shape[1:] == (3, 16, 16)
        for img, cls, orig, crop, txt in zip(
            images,
            batch["cls"],
            batch["original_size_as_tuple"],
            batch["crop_coords_top_left"],
            batch["txt"],
        ):
            i = int(cls)
            # solid colour (10 i, 255, 0) mapped to [-1, 1]
            torch.testing.assert_close(
                img[:, 4, 4], torch.tensor([20 * i / 255 - 1, 1.0, -1.0]), atol=2 / 255, rtol=0
            )
            assert orig.tolist() == [1000 + i, 2000]
            height, width = 20 + i, 30
            long_side = int(max(height, width) * 16 / min(height, width))
            assert min(crop.tolist()) == 0 and 0 <= max(crop.tolist()) <= long_side - 16
            assert txt == f"caption {i}"


def test_validation_defaults_to_train_and_bad_configs(shards):
    module = StableDataModuleFromConfig(train=_config(shards, 0))
    assert module.val_config == module.train_config
    assert (
        StableDataModuleFromConfig(train=_config(shards, 0), skip_val_loader=True).val_dataloader()
        == []
    )
    with pytest.raises(ConfigError, match="datapipeline"):
        StableDataModuleFromConfig(train={"loader": {"batch_size": 1}})
    bad = _config(shards, 0)
    bad["datapipeline"]["urls"] = [str(shards / "missing-{0..1}.tar")]
    with pytest.raises(ConfigError, match="matches no file"):
        StableDataModuleFromConfig(train=bad)  # refused up front, before any loader


def test_importing_sgm_data_needs_no_optional_package():
    import importlib
    import sys

    import sgm.data

    importlib.reload(sgm.data)
    assert "sdata" not in sys.modules
    assert sgm.data.StableDataModuleFromConfig is StableDataModuleFromConfig


def test_fsspec_urls(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in sorted(shards.glob("*.tar")):
        fs.pipe(f"/sgm-test/{path.name}", path.read_bytes())
    config = _config(shards, 0)
    config["datapipeline"]["urls"] = ["memory://sgm-test/shard-{000000..000002}.tar"]
    batches = list(StableDataModuleFromConfig(train=config).train_dataloader())
    assert sorted(torch.cat([b["cls"] for b in batches]).tolist()) == list(range(N_SAMPLES))
