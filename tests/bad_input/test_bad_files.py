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
    }


TINY = ["--version=sd2.1", "--config={tiny}/sd2.1.yaml"]
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
