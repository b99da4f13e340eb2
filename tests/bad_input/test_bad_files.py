"""Files: a truncated weights file found inside a folder is named itself (not the folder,
not a library's internal message); a pickle that would run code is called that on every
path that reads checkpoints (and a damaged pickle is still called damaged); a text input
(config, prompts file, JSON) that is not UTF-8 text is refused naming the file."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_contract_support import (
    CACHE,
    CONVERT,
    GRADIO,
    GRADIO_4D,
    IMAGE,
    LORA,
    MAIN,
    PACK,
    ROOT,
    SV4D,
    SV4D2,
    TOY,
    VIDEO,
    check_row,
    row_id,
)

from sgm.errors import CheckpointError, ConfigError, InputError

CODE = (
    "holds Python objects beyond tensors and plain containers, which would run arbitrary "
    "code when loaded; refused"
)
TRUNCATED = "not a readable safetensors file (truncated or corrupt?)"
NOT_TEXT = "not UTF-8 text"
UNET = "unet/diffusion_pytorch_model.safetensors"
TINY_CKPT = "v2-1_512-ema-pruned.safetensors"  # the tiny SD 2.1's file, its release name
CLIP_WEIGHTS = "clip_text/model.safetensors"  # weights in a tiny model's CLIP text folder
BINARY = b"a fox\n\xff\xfe\x00 in the snow\n"
MIXED = {"a": b"a fox\n", "b": BINARY, "c": b"an owl\n"}


class _Code:
    def __reduce__(self):
        return (print, ("this must never run",))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _code_pickle(path: Path) -> Path:
    weights = {"lora_A.weight": torch.ones(2, 2)}
    torch.save({"state_dict": weights, "payload": _Code()}, path)
    return path


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    from PIL import Image
    from safetensors.torch import save_file

    from sgm.convert import to_diffusers
    from sgm.inference.tiny_models import write_tiny_release

    tmp = tmp_path_factory.mktemp("files")
    out = {f"code_{ext}": str(_code_pickle(tmp / f"code.{ext}")) for ext in ("ckpt", "pt", "bin")}
    save_file({"w": torch.ones(64, 64)}, str(tmp / "cut.safetensors"))
    _truncate(tmp / "cut.safetensors")
    (tmp / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256))
    (tmp / "nul.yaml").write_bytes(b"model:\n  target: x\x00y\n")
    (tmp / "binary.txt").write_bytes(b"a fox\n\xff\xfe\x00 in the snow\n")
    (tmp / "nul.txt").write_bytes(b"a fox\x00 in the snow\n")
    (tmp / "latin1.txt").write_bytes("a caf\xe9 at night\n".encode("latin-1"))
    # a --checkpoints folder whose SDXL base file is cut in half
    (tmp / "release").mkdir()
    shutil.copy(tmp / "cut.safetensors", tmp / "release" / "sd_xl_base_1.0.safetensors")
    # a tiny model folder (scripts/tiny_model.py) and a copy whose checkpoint is cut
    config, ckpt = write_tiny_release("sd2.1", tmp / "tiny")
    shutil.copytree(tmp / "tiny", tmp / "tiny_cut")
    _truncate(tmp / "tiny_cut" / TINY_CKPT)
    # tiny SDXL folders (its first text encoder reads clip_text/) whose CLIP text folder
    # holds weights: cut in half, a code pickle
    write_tiny_release("sdxl_base_1.0", tmp / "tiny_xl")
    _tiny_copy(tmp / "tiny_xl", tmp / "tiny_clip_cut")
    save_file({"w": torch.ones(64, 64)}, str(tmp / "tiny_clip_cut" / CLIP_WEIGHTS))
    _truncate(tmp / "tiny_clip_cut" / CLIP_WEIGHTS)
    _tiny_copy(tmp / "tiny_xl", tmp / "tiny_clip_code")
    _code_pickle(tmp / "tiny_clip_code" / "clip_text" / "pytorch_model.bin")
    # image folders for pack_shards: every caption binary; one binary among good ones
    for name, captions in (("captions_binary", {"a": BINARY}), ("captions_mixed", MIXED)):
        (tmp / name).mkdir()
        for stem, text in captions.items():
            Image.new("RGB", (16, 16), (20, 90, 200)).save(tmp / name / f"{stem}.png")
            (tmp / name / f"{stem}.txt").write_bytes(text)
    # diffusers folders: one with its UNet weights cut, one whose text encoder is a code pickle
    to_diffusers(ckpt, config, tmp / "diffusers")
    shutil.copytree(tmp / "diffusers", tmp / "diffusers_cut")
    _truncate(tmp / "diffusers_cut" / UNET)
    shutil.copytree(tmp / "diffusers", tmp / "diffusers_code")
    encoder = tmp / "diffusers_code" / "text_encoder"
    (encoder / "model.safetensors").unlink()
    _code_pickle(encoder / "pytorch_model.bin")
    return {
        **out,
        "cut": str(tmp / "cut.safetensors"),
        "binary_yaml": str(tmp / "binary.yaml"),
        "nul_yaml": str(tmp / "nul.yaml"),
        "binary_txt": str(tmp / "binary.txt"),
        "nul_txt": str(tmp / "nul.txt"),
        "latin1_txt": str(tmp / "latin1.txt"),
        "release": str(tmp / "release"),
        "tiny": str(tmp / "tiny"),
        "tiny_cut": str(tmp / "tiny_cut"),
        "tiny_ckpt": str(ckpt),
        "diffusers_cut": str(tmp / "diffusers_cut"),
        "diffusers_code": str(tmp / "diffusers_code"),
        "sv4d2_config": str(ROOT / "sgm" / "configs" / "sampling" / "sv4d2.yaml"),
        "tiny_xl": str(tmp / "tiny_xl"),
        "tiny_clip_cut": str(tmp / "tiny_clip_cut"),
        "tiny_clip_code": str(tmp / "tiny_clip_code"),
        "captions_binary": str(tmp / "captions_binary"),
        "captions_mixed": str(tmp / "captions_mixed"),
    }


def _tiny_copy(folder: Path, copy: Path) -> None:
    """A copy of a tiny model folder whose config reads the copy's own text encoders."""
    shutil.copytree(folder, copy)
    for config in copy.rglob("*.yaml"):
        config.write_text(config.read_text().replace(f"{folder}/", f"{copy}/"))


TINY = ["--version=sd2.1", "--config={tiny}/sd2.1.yaml"]


def _tiny_xl(folder: str) -> list[str]:
    """The image command line's flags for the tiny SDXL folder ``{folder}``."""
    return [
        "--version=sdxl_base_1.0",
        f"--config={{{folder}}}/sdxl_base_1.0.yaml",
        f"--checkpoints={{{folder}}}",
    ]


VIDEO_IN = ["--input_path={image}"]
SV4D_IN = ["--input_path={frames}"]
TRAIN = ["--base", "{config}", "--logdir", "logs"]

ROWS: list[tuple[str, str, list[str], str]] = [
    # ------------------------------------------------------------ truncated in folder
    (IMAGE, "truncated in folder", ["--checkpoints={release}"], "sd_xl_base_1.0.safetensors"),
    (
        IMAGE,
        "truncated in folder",
        ["--version=sd2.1", "--config={tiny_cut}/sd2.1.yaml", "--checkpoints={tiny_cut}"],
        f"{{tiny_cut}}/{TINY_CKPT}: {TRUNCATED}",
    ),
    (
        IMAGE,
        "truncated in folder",
        _tiny_xl("tiny_clip_cut"),
        f"{{tiny_clip_cut}}/{CLIP_WEIGHTS}: {TRUNCATED}",
    ),
    (IMAGE, "truncated in folder", ["--ckpt={cut}"], f"{{cut}}: {TRUNCATED}"),
    (VIDEO, "truncated in folder", [*VIDEO_IN, "--ckpt={cut}"], f"{{cut}}: {TRUNCATED}"),
    (SV4D, "truncated in folder", [*SV4D_IN, "--ckpt={cut}"], f"{{cut}}: {TRUNCATED}"),
    (
        SV4D2,
        "truncated in folder",
        [*SV4D_IN, "--ckpt={cut}", "--config={sv4d2_config}"],
        f"{{cut}}: {TRUNCATED}",
    ),
    (
        CONVERT,
        "truncated in folder",
        ["to_sgm", "{diffusers_cut}", "out.safetensors", "--config", "{tiny}/sd2.1.yaml"],
        f"{{diffusers_cut}}/{UNET}: {TRUNCATED}",
    ),
    (LORA, "truncated in folder", ["inspect", "{cut}"], "{cut}: not a readable .safetensors"),
    (
        MAIN,
        "truncated in folder",
        [*TRAIN, "model.params.ckpt_path={cut}"],
        f"model.params.ckpt_path: {{cut}}: {TRUNCATED}",
    ),
    (GRADIO, "truncated in folder", ["--checkpoints={release}"], "sd_xl_base_1.0.safetensors"),
    (GRADIO_4D, "truncated in folder", ["--ckpt={cut}"], f"{{cut}}: {TRUNCATED}"),
    # ------------------------------------------------------------ code pickle
    (IMAGE, "code pickle", ["--ckpt={code_ckpt}"], f"{{code_ckpt}}: {CODE}"),
    (IMAGE, "code pickle", [*TINY, "--checkpoints={tiny}", "--lora={code_pt}"], CODE),
    (
        IMAGE,
        "code pickle",
        _tiny_xl("tiny_clip_code"),
        f"{{tiny_clip_code}}/clip_text/pytorch_model.bin: {CODE}",
    ),
    (VIDEO, "code pickle", [*VIDEO_IN, "--ckpt={code_ckpt}"], f"{{code_ckpt}}: {CODE}"),
    (VIDEO, "code pickle", [*VIDEO_IN, "--lora={code_bin}"], f"{{code_bin}}: {CODE}"),
    (SV4D, "code pickle", [*SV4D_IN, "--ckpt={code_pt}"], f"{{code_pt}}: {CODE}"),
    (
        SV4D2,
        "code pickle",
        [*SV4D_IN, "--ckpt={code_ckpt}", "--config={sv4d2_config}"],
        f"{{code_ckpt}}: {CODE}",
    ),
    (
        CONVERT,
        "code pickle",
        ["to_diffusers", "{code_ckpt}", "out", "--config", "{config}"],
        f"{{code_ckpt}}: {CODE}",
    ),
    (
        CONVERT,
        "code pickle",
        ["to_sgm", "{diffusers_code}", "out.safetensors", "--config", "{tiny}/sd2.1.yaml"],
        f"{{diffusers_code}}/text_encoder/pytorch_model.bin: {CODE}",
    ),
    (LORA, "code pickle", ["inspect", "{code_pt}"], f"{{code_pt}}: {CODE}"),
    (LORA, "code pickle", ["inspect", "{code_bin}"], f"{{code_bin}}: {CODE}"),
    (LORA, "code pickle", ["inspect", "{code_ckpt}"], f"{{code_ckpt}}: {CODE}"),
    (
        LORA,
        "code pickle",
        [
            "bake",
            "--config",
            "{config}",
            "--ckpt",
            "{code_ckpt}",
            "--lora",
            "{tiny_ckpt}",
            "o.safetensors",
        ],
        f"{{code_ckpt}}: {CODE}",
    ),
    (
        LORA,
        "code pickle",
        [
            "bake",
            "--config",
            "{config}",
            "--ckpt",
            "{tiny_ckpt}",
            "--lora",
            "{code_pt}",
            "o.safetensors",
        ],
        f"{{code_pt}}: {CODE}",
    ),
    (TOY, "code pickle", ["--checkpoint", "{code_ckpt}", "--outdir", "out"], CODE),
    (MAIN, "code pickle", [*TRAIN, "model.params.ckpt_path={code_ckpt}"], CODE),
    (
        CACHE,
        "code pickle",
        ["--base", "{config}", "--output", "c", "model.params.ckpt_path={code_pt}"],
        CODE,
    ),
    (GRADIO, "code pickle", ["--ckpt={code_ckpt}"], f"{{code_ckpt}}: {CODE}"),
    (GRADIO_4D, "code pickle", ["--ckpt={code_pt}"], f"{{code_pt}}: {CODE}"),
    # ------------------------------------------------------------ not text
    (IMAGE, "not text", ["--prompts_file={binary_txt}"], f"{{binary_txt}}, line 2: {NOT_TEXT}"),
    (IMAGE, "not text", ["--prompts_file={nul_txt}"], f"{{nul_txt}}, line 1: {NOT_TEXT}"),
    (IMAGE, "not text", ["--prompts_file={latin1_txt}"], f"{{latin1_txt}}, line 1: {NOT_TEXT}"),
    (
        IMAGE,
        "not text",
        ["--ckpt={tiny_ckpt}", "--config={binary_yaml}"],
        f"{{binary_yaml}}: {NOT_TEXT}",
    ),
    (SV4D, "not text", [*SV4D_IN, "--config={nul_yaml}"], f"{{nul_yaml}}: {NOT_TEXT}"),
    (
        VIDEO,
        "not text",
        ["--input_path={image}", "--config={nul_yaml}", "--ckpt={file}"],
        f"{{nul_yaml}}: {NOT_TEXT}",
    ),
    (SV4D2, "not text", [*SV4D_IN, "--config={binary_yaml}"], f"{{binary_yaml}}: {NOT_TEXT}"),
    (MAIN, "not text", ["--base", "{binary_yaml}"], f"{{binary_yaml}}: {NOT_TEXT}"),
    (MAIN, "not text", ["--base", "{nul_yaml}"], f"{{nul_yaml}}: {NOT_TEXT} (a NUL byte"),
    (CACHE, "not text", ["--base", "{nul_yaml}", "--output", "c"], f"{{nul_yaml}}: {NOT_TEXT}"),
    (
        TOY,
        "not text",
        ["--config", "{binary_yaml}", "--outdir", "o"],
        f"{{binary_yaml}}: {NOT_TEXT}",
    ),
    (
        CONVERT,
        "not text",
        ["to_diffusers", "{tiny_ckpt}", "out", "--config", "{binary_yaml}"],
        f"{{binary_yaml}}: {NOT_TEXT}",
    ),
    (
        LORA,
        "not text",
        [
            "bake",
            "--config",
            "{nul_yaml}",
            "--ckpt",
            "{tiny_ckpt}",
            "--lora",
            "{tiny_ckpt}",
            "o.safetensors",
        ],
        f"{{nul_yaml}}: {NOT_TEXT}",
    ),
    (GRADIO, "not text", ["--config={binary_yaml}"], f"{{binary_yaml}}: {NOT_TEXT}"),
    (
        PACK,
        "not text",
        ["{captions_binary}", "out", "--quiet"],
        f"{{captions_binary}}/a.txt: {NOT_TEXT} (byte 0xff at line 2)",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_files_are_one_line_exit_2_and_write_nothing(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


# ---------------------------------------------------------------- the Python API


def test_a_damaged_pickle_that_reads_as_a_global_is_corrupt_not_code(tmp_path):
    # PROTO 2, GLOBAL 'junk thing', then random bytes: the weights-only unpickler stops at
    # the global, but the stream never parses whole, so the file is damaged, not code.
    from sgm.checkpoint import check_weights_file, load_state_dict

    path = tmp_path / "damaged.ckpt"
    path.write_bytes(b"\x80\x02cjunk\nthing\n" + bytes(range(256)) * 4)
    for read in (load_state_dict, check_weights_file):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
            read(path)
        assert "arbitrary code" not in str(error.value)


def test_every_checkpoint_reader_calls_a_code_pickle_that(tmp_path, capsys):
    from sgm.checkpoint import check_training_checkpoint, check_weights_file, load_state_dict
    from sgm.inference.checkpoint_fit import checkpoint_shapes
    from sgm.inference.sv4d_job import check_checkpoint

    for suffix in (".ckpt", ".pt", ".pth", ".bin"):
        path = _code_pickle(tmp_path / f"code{suffix}")
        for read in (
            load_state_dict,
            check_weights_file,
            check_training_checkpoint,
            checkpoint_shapes,
            check_checkpoint,
        ):
            with pytest.raises(CheckpointError, match=CODE):
                read(path)
    assert "this must never run" not in capsys.readouterr().out


def test_lora_adapters_may_be_pickles_but_not_code(tmp_path, capsys):
    from sgm.lora import read

    plain = tmp_path / "adapter.pt"
    torch.save({"unet.x.lora_A.weight": torch.ones(2, 3)}, plain)
    tensors, header = read(plain)
    assert list(tensors) == ["unet.x.lora_A.weight"] and header == {}
    with pytest.raises(CheckpointError, match=CODE):
        read(_code_pickle(tmp_path / "adapter.bin"))
    assert "this must never run" not in capsys.readouterr().out


def test_a_truncated_safetensors_header_is_checked_against_the_file_size(tmp_path):
    from safetensors.torch import save_file

    from sgm.checkpoint import check_weights_folder, safetensors_header
    from sgm.inference.checkpoint_fit import checkpoint_shapes

    folder = tmp_path / "model" / "unet"
    folder.mkdir(parents=True)
    path = folder / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.ones(8, 8)}, str(path))
    assert safetensors_header(path)["w"]["shape"] == [8, 8]
    check_weights_folder(tmp_path / "model")
    _truncate(path)
    for read in (safetensors_header, checkpoint_shapes, check_weights_folder):
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: {TRUNCATED}")):
            read(path if read is not check_weights_folder else tmp_path / "model")


@pytest.mark.parametrize(
    "data, where",
    [
        (b"a: 1\nb: \xff\n", "byte 0xff at line 2"),
        (b"a: 1\x00\n", "a NUL byte at line 1"),
        (b"a: caf\xc3", "ends inside a character"),
    ],
)
def test_configs_that_are_not_text_are_named(tmp_path, data, where):
    from sgm.config import load_configs

    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text") as error:
        load_configs([path])
    assert where in str(error.value) or "byte 0xc3" in str(error.value)


def test_prompts_files_with_nul_bytes_are_not_text(tmp_path):
    from sgm.inference.work_items import read_prompts_file

    path = tmp_path / "p.txt"
    path.write_bytes(b"a fox\nan owl\x00\n")
    with pytest.raises(InputError, match=f"{path}, line 2: not UTF-8 text"):
        read_prompts_file(path)


def test_pack_skips_a_caption_that_is_not_text_naming_it(materials, tmp_path, capsys):
    import tarfile

    from sgm.commands.pack_shards import main

    source = Path(materials["captions_mixed"])
    assert main([str(source), str(tmp_path / "shards"), "--quiet"]) == 0
    printed = capsys.readouterr()
    out = printed.out + printed.err
    assert "Traceback" not in out
    assert f"{source / 'b.txt'}: {NOT_TEXT} (byte 0xff at line 2)" in out
    assert "wrote 2 samples" in out and "skipped 1 file(s)" in out
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        captions = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("txt")]
    assert captions == [b"a fox\n", b"an owl\n"]


@pytest.mark.parametrize("damage", ["truncated", "code"])
def test_a_local_clip_folder_names_its_damaged_weights_file(tmp_path, damage, capsys):
    from builders import write_tiny_clip

    from sgm.modules.encoders.modules import FrozenCLIPEmbedder

    folder = write_tiny_clip(tmp_path / "clip")
    FrozenCLIPEmbedder(version=str(folder))  # whole: it loads
    weights = folder / "model.safetensors"
    if damage == "truncated":
        _truncate(weights)
        culprit = f"{weights}: {TRUNCATED}"
    else:
        weights.unlink()
        culprit = f"{_code_pickle(folder / 'pytorch_model.bin')}: {CODE}"
    with pytest.raises(CheckpointError, match=re.escape(culprit)):
        FrozenCLIPEmbedder(version=str(folder))
    assert "this must never run" not in capsys.readouterr().out


def test_local_encoders_of_a_config_are_checked_whole(materials):
    from omegaconf import OmegaConf

    from sgm.checkpoint_files import check_local_encoders

    check_local_encoders(OmegaConf.load(Path(materials["tiny"]) / "sd2.1.yaml"))
    check_local_encoders(OmegaConf.load(Path(materials["tiny_xl"]) / "sdxl_base_1.0.yaml"))
    cut = Path(materials["tiny_clip_cut"])
    with pytest.raises(CheckpointError, match=re.escape(f"{cut / CLIP_WEIGHTS}: {TRUNCATED}")):
        check_local_encoders(OmegaConf.load(cut / "sdxl_base_1.0.yaml"))
    # main.py and cache_conditioning check a training config's files with these too
    from sgm.checkpoint_files import check_config_checkpoints, check_model_files

    config = OmegaConf.load(cut / "sdxl_base_1.0.yaml")
    with pytest.raises(CheckpointError, match=re.escape(f"{cut / CLIP_WEIGHTS}: {TRUNCATED}")):
        check_config_checkpoints(config.model, "model")
    # and the video / image command lines with the checkpoint first
    with pytest.raises(CheckpointError, match=re.escape(f"{cut / CLIP_WEIGHTS}: {TRUNCATED}")):
        check_model_files(cut / "sdxl_base_1.0.yaml", next(cut.glob("*.safetensors")))


def _cache_shard(path: Path, member: bytes) -> Path:
    import json

    from sgm.data.shard_writer import write_shard

    values = json.dumps({"txt": "a fox"}).encode()
    return write_shard(path, [("000000", {"safetensors": member, "json": values})])


def _cached_items(shard: Path) -> list:
    from sgm.data._webdataset import build_loader

    pipeline = {
        "urls": [str(shard)],
        "decoders": ["pil"],
        "postprocessors": [{"target": "sgm.data.latent_cache.CachedSample"}],
        "pipeline_config": {"resampled": False, "shardshuffle": False},
    }
    return list(build_loader(pipeline, {"batch_size": 1}))


def test_a_cache_shard_member_that_is_cut_is_named(tmp_path):
    from safetensors.torch import save

    whole = save({"cached_latent": torch.ones(4, 8, 8)})
    (batch,) = _cached_items(_cache_shard(tmp_path / "whole.tar", whole))
    assert batch["cached_latent"].shape == (1, 4, 8, 8) and batch["txt"] == ["a fox"]
    shard = _cache_shard(tmp_path / "cache-000000.tar", whole[: len(whole) // 2])
    with pytest.raises(InputError) as error:
        _cached_items(shard)
    message = str(error.value)
    assert message.startswith(f"{shard}, sample '000000': member '000000.safetensors' is not")
    assert "truncated or corrupt?" in message and "\n" not in message


def test_a_truncated_cache_shard_is_named(tmp_path):
    from safetensors.torch import save

    whole = save({"cached_latent": torch.ones(4, 64, 64)})
    shard = _cache_shard(tmp_path / "cache-000000.tar", whole)
    data = shard.read_bytes()
    for cut in (len(data) // 2 + 100, (len(data) // 2) // 512 * 512):  # mid-block, at a block
        shard.write_bytes(data[:cut])
        with pytest.raises(InputError, match=re.escape(str(shard))):
            _cached_items(shard)
