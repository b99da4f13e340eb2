"""Adversarial training data: shards that are not tar archives (random bytes, a text file a
pattern matches, a truncated tar), shard patterns that match nothing, samples without the
fields the config reads, and runs ended by SIGTERM (as SLURM and Kubernetes end them).

Bad shards and empty patterns stop ``main.py`` and ``cache_conditioning.py`` before any
model is built, with one line naming the shard or the pattern and its option; a shard
that breaks mid-run ends the run with one line naming it, from DataLoader workers too.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from cli_contract_support import CACHE, MAIN, PACK, ROOT, TINY, check_row, row_id
from omegaconf import OmegaConf

from sgm.errors import InputError

URLS = "data.params.train.datapipeline.urls"


def _png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (20 * seed, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _image_shard(path: Path, captions: bool = True) -> Path:
    members = {}
    for i in range(3):
        members[f"{i:06d}.png"] = _png(i)
        if captions:
            members[f"{i:06d}.txt"] = f"picture {i}".encode()
    return _tar(path, members)


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("training_data")
    for name in ("good", "random", "mixed", "truncated", "empty", "nokeys", "uncaptioned"):
        (tmp / name).mkdir()
    _image_shard(tmp / "good" / "000000.tar")
    (tmp / "random" / "x.tar").write_bytes(os.urandom(4096))
    _image_shard(tmp / "mixed" / "000000.tar")
    (tmp / "mixed" / "notes.txt").write_text("not a shard\n")
    data = _image_shard(tmp / "good" / "000001.tar").read_bytes()
    (tmp / "truncated" / "000000.tar").write_bytes(data[: len(data) // 2 + 100])
    _image_shard(tmp / "nokeys" / "000000.tar", captions=False)
    for name in ("a", "b"):
        (tmp / "uncaptioned" / f"{name}.png").write_bytes(_png(1))
    config = OmegaConf.load(TINY)
    config.data = {
        "target": "sgm.data.dataset.StableDataModuleFromConfig",
        "params": {
            "train": {
                "datapipeline": {
                    "urls": [str(tmp / "good")],
                    "decoders": ["pil"],
                    "postprocessors": [
                        {
                            "target": "sgm.data.image_caption.ImageCaptionSample",
                            "params": {"size": 8},
                        }
                    ],
                },
                "loader": {"batch_size": 2, "num_workers": 0},
            },
            "skip_val_loader": True,
        },
    }
    OmegaConf.save(config, tmp / "shards.yaml")
    return {
        "data": str(tmp),
        "shard_config": str(tmp / "shards.yaml"),
        "random_shard": str(tmp / "random" / "x.tar"),
        "text_shard": str(tmp / "mixed" / "notes.txt"),
        "truncated_shard": str(tmp / "truncated" / "000000.tar"),
        "nokeys_shard": str(tmp / "nokeys" / "000000.tar"),
    }


TRAIN = ["--base", "{shard_config}", "--logdir", "logs"]
CACHE_ARGS = ["--base", "{shard_config}", "--output", "out"]

ROWS: list[tuple[str, str, list[str], str]] = [
    # ---------------------------------------------------------------- main.py
    (MAIN, "bad shard", [*TRAIN, f"{URLS}={{random_shard}}"], "{random_shard}"),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}={{data}}/mixed/*"], "{text_shard}"),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}=[{{truncated_shard}}]"], "{truncated_shard}"),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}="], URLS),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}=[]"], URLS),
    (
        MAIN,
        "bad shard",
        [*TRAIN, f"{URLS}={{data}}/none-{{{{000000..000003}}}}.tar"],
        "none-{{000000..000003}}.tar",
    ),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}={{data}}/good/*.tgz"], "good/*.tgz"),
    (MAIN, "bad shard", [*TRAIN, f"{URLS}={{data}}/empty"], "{data}/empty"),
    # ---------------------------------------------------------------- cache_conditioning.py
    (CACHE, "bad shard", [*CACHE_ARGS, f"{URLS}={{random_shard}}"], "{random_shard}"),
    (CACHE, "bad shard", [*CACHE_ARGS, f"{URLS}={{truncated_shard}}"], "{truncated_shard}"),
    (CACHE, "bad shard", [*CACHE_ARGS, f"{URLS}="], URLS),
    (
        CACHE,
        "real cause",
        [*CACHE_ARGS, f"{URLS}={{nokeys_shard}}"],
        "{nokeys_shard}, sample '000000': missing field 'txt'",
    ),
    # ---------------------------------------------------------------- pack_shards.py
    (PACK, "real cause", ["{data}/uncaptioned", "out", "--quiet"], "a.png (no a.txt)"),
]


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_training_data_is_refused(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


# ------------------------------------------------------------ a shard that breaks mid-run


@pytest.mark.parametrize("workers", [0, 1])
def test_shard_broken_mid_run_stops_with_one_line_naming_it(tmp_path, workers):
    """A tar cut inside a member (whole blocks: it passes the up-front look) is found while
    reading; the error names the shard, from a DataLoader worker too."""
    from sgm.data._webdataset import build_loader

    good = _tar(tmp_path / "000000.tar", {f"{i:06d}.bin": os.urandom(3000) for i in range(4)})
    data = good.read_bytes()
    broken = tmp_path / "000001.tar"
    broken.write_bytes(data[: 512 * 20])  # inside the 4th member's data
    pipeline = {"urls": [str(broken)]}
    loader = build_loader(pipeline, {"batch_size": 1, "num_workers": workers}, where="data")
    with pytest.raises(InputError) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    assert str(broken) in message and len(message.splitlines()) == 1, message
    assert "Caught" not in message


def test_missing_field_names_the_field_and_the_shard(materials):
    from sgm.data._webdataset import build_loader

    pipeline = {
        "urls": [materials["nokeys_shard"]],
        "postprocessors": [{"target": "sgm.data.mappers.Rescaler", "params": {"key": "jpg"}}],
    }
    with pytest.raises(InputError) as caught:
        next(iter(build_loader(pipeline, {"batch_size": 1, "num_workers": 1}, where="data")))
    message = str(caught.value)
    assert "'jpg'" in message and materials["nokeys_shard"] in message, message
    assert len(message.splitlines()) == 1, message


# ------------------------------------------------------------ SIGTERM ends every run


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SGM_RUN_NOW", None)
    return env


def _train(logdir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--base", str(TINY), "--logdir", str(logdir)]
        + ["-n", "term", *overrides],
        cwd=logdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_during_fit_with_loader_workers_ends_and_leaves_a_resumable_checkpoint(tmp_path):
    from sgm.checkpoint import check_training_checkpoint

    proc = _train(
        tmp_path,
        "lightning.trainer.max_steps=100000",
        "lightning.callbacks.image_logger.params.disabled=true",
        "lightning.modelcheckpoint.params.every_n_train_steps=100000",
        "data.params.num_workers=2",
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("*_term/configs/*-project.yaml")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    time.sleep(2.0)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.time() - sent < 30, out[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    (last,) = tmp_path.glob("*_term/checkpoints/last.ckpt")
    check_training_checkpoint(str(last))
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert f"Stopped by signal {int(signal.SIGTERM)} at step {step};" in out, out[-3000:]


def test_sigterm_during_startup_ends_the_run(tmp_path):
    proc = _train(tmp_path, "lightning.trainer.max_steps=100000")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, out[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))


VALIDATION_RUN = """
import os, signal, sys
import torch
import pytorch_lightning as pl
from sgm.training.callbacks import SignalCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
    def training_step(self, batch, _):
        return self.layer(batch).pow(2).mean()
    def validation_step(self, batch, index):
        if index == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=4)
trainer = pl.Trainer(max_steps=1000, val_check_interval=3, num_sanity_val_steps=0,
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, callbacks=[SignalCheckpoint(sys.argv[1])])
try:
    trainer.fit(Net(), data, data)
except SIGTERMException:
    print("stopped at step", trainer.global_step)
    sys.exit(143)
print("not stopped", trainer.global_step)
"""


def test_sigterm_during_validation_writes_the_checkpoint(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(VALIDATION_RUN))
    result = subprocess.run(
        [sys.executable, "-c", f"import sgm; exec(open({str(script)!r}).read())", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 143, result.stdout + result.stderr[-3000:]
    assert "stopped at step 3" in result.stdout, result.stdout
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
