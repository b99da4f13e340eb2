"""Paths: an output given as a symlink counts as what it points to (a link to a file is a
file; a link to a folder is that folder), and a symlink to nothing, given as an output
folder or a new output file, is refused by name. Every folder option that is given is
checked: an empty value, or a missing ``--configs`` folder, is never silently replaced by
a default."""

from __future__ import annotations

import argparse
import os

import pytest
from cli_contract_support import (
    CACHE,
    CONVERT,
    EXAMPLES,
    GRADIO,
    GRADIO_4D,
    IMAGE,
    LORA,
    MAIN,
    PACK,
    SV4D,
    SV4D2,
    TINY_MODEL,
    TOY,
    VIDEO,
    check_row,
    row_id,
)

from sgm import cli
from sgm.errors import InputError
from sgm.output_files import write_new_file

MISSING = "is a symlink to the missing"
EMPTY = "the path is empty"


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("links")
    (folder / "target.txt").write_text("a file\n")
    (folder / "dangling").symlink_to(folder / "nowhere")
    (folder / "dangling.safetensors").symlink_to(folder / "nowhere.safetensors")
    (folder / "file_link").symlink_to(folder / "target.txt")
    (folder / "no_yaml").mkdir()
    return {
        "dangling": str(folder / "dangling"),
        "dangling_st": str(folder / "dangling.safetensors"),
        "file_link": str(folder / "file_link"),
        "no_yaml": str(folder / "no_yaml"),
    }


DANGLING = f"{{dangling}} {MISSING}"
ROWS: list[tuple[str, str, list[str], str]] = [
    # ---------------------------------------------------------------- symlink
    (MAIN, "symlink", ["--base", "{config}", "--logdir", "{dangling}"], DANGLING),
    (IMAGE, "symlink", ["--output_folder={dangling}"], DANGLING),
    (IMAGE, "symlink", ["--output_folder={file_link}"], "{file_link} is a file (a symlink to"),
    (VIDEO, "symlink", ["--input_path={image}", "--output_folder={dangling}"], DANGLING),
    (
        SV4D,
        "symlink",
        ["--input_path={frames}", "--output_folder={dangling}/views"],
        f"{{dangling}}/views lies below {{dangling}}, which {MISSING}",
    ),
    (SV4D2, "symlink", ["--input_path={frames}", "--output_folder={dangling}"], DANGLING),
    (TOY, "symlink", ["--outdir", "{dangling}"], DANGLING),
    (TOY, "symlink", ["--logdir", "{dangling}"], DANGLING),
    (GRADIO, "symlink", ["--outputs={dangling}"], DANGLING),
    (GRADIO_4D, "symlink", ["--outputs={dangling}"], DANGLING),
    (CONVERT, "symlink", ["to_sgm", "{diffusers}", "{dangling_st}"], f"{{dangling_st}} {MISSING}"),
    (
        CONVERT,
        "symlink",
        ["to_diffusers", "{file}", "{dangling}", "--config", "{config}"],
        DANGLING,
    ),
    (
        LORA,
        "symlink",
        ["bake", "--config", "{config}", "--ckpt", "{file}", "{dangling_st}"],
        f"{{dangling_st}} {MISSING}",
    ),
    (PACK, "symlink", ["{frames}", "{dangling}"], DANGLING),
    (CACHE, "symlink", ["--base", "{config}", "--output", "{dangling}"], DANGLING),
    (TINY_MODEL, "symlink", ["--release", "sd2.1", "--out", "{dangling}"], DANGLING),
    (EXAMPLES, "symlink", ["--out", "{dangling}"], DANGLING),
    # ---------------------------------------------------------------- folder replaced
    (MAIN, "folder replaced", ["--base", "{config}", "--logdir="], EMPTY),
    (IMAGE, "folder replaced", ["--checkpoints="], f"--checkpoints: {EMPTY}"),
    (VIDEO, "folder replaced", ["--input_path={image}", "--output_folder="], EMPTY),
    (SV4D, "folder replaced", ["--input_path={frames}", "--output_folder="], EMPTY),
    (TOY, "folder replaced", ["--outdir="], EMPTY),
    (GRADIO, "folder replaced", ["--configs={missing}"], "{missing} does not exist"),
    (GRADIO, "folder replaced", ["--outputs="], f"--outputs: {EMPTY}"),
    (GRADIO_4D, "folder replaced", ["--configs={no_yaml}"], "{no_yaml} holds no .yaml"),
    (PACK, "folder replaced", ["{frames}", ""], EMPTY),
    (CACHE, "folder replaced", ["--base", "{config}", "--output="], EMPTY),
    (TINY_MODEL, "folder replaced", ["--release", "sd2.1", "--out="], EMPTY),
    (EXAMPLES, "folder replaced", ["--out="], EMPTY),
]


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_paths_are_one_line_exit_2(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


# ------------------------------------------------------------------ unit tests


def test_a_symlink_to_a_folder_works_as_that_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cli.output_folder(str(tmp_path / "link")) == tmp_path / "link"
    assert cli.output_folder(str(tmp_path / "link" / "new")) == tmp_path / "link" / "new"
    assert cli.input_folder(str(tmp_path / "link")) == tmp_path / "link"
    assert cli.new_output(str(tmp_path / "link" / "x.safetensors")).name == "x.safetensors"
    written = write_new_file(lambda tmp: open(tmp, "w").close(), [tmp_path / "link" / "a.txt"])
    assert written == tmp_path / "link" / "a.txt"
    assert os.listdir(tmp_path / "real") == ["a.txt"]


def test_a_symlink_to_nothing_is_named(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for text in ("gone", "gone/below", "loop"):
        with pytest.raises(argparse.ArgumentTypeError, match=MISSING):
            cli.output_folder(str(tmp_path / text))
        with pytest.raises(argparse.ArgumentTypeError, match=MISSING):
            cli.new_output(str(tmp_path / text))
    with pytest.raises(argparse.ArgumentTypeError, match=MISSING):
        cli.input_folder(str(tmp_path / "gone"))


def test_write_new_file_refuses_a_symlink_to_nothing_and_writes_nothing(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for target in (tmp_path / "gone", tmp_path / "gone" / "x.txt"):
        with pytest.raises(InputError, match=f"{tmp_path / 'gone'}.* {MISSING}"):
            write_new_file(lambda tmp: open(tmp, "w").close(), [target])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="lies below the file"):
        write_new_file(lambda tmp: open(tmp, "w").close(), [tmp_path / "file" / "x.txt"])
    assert sorted(os.listdir(tmp_path)) == ["file", "gone"]


def test_empty_paths_are_refused():
    for check in (cli.output_folder, cli.input_folder, cli.new_output):
        with pytest.raises(argparse.ArgumentTypeError, match=EMPTY):
            check("")


def test_demo_options_refuse_a_missing_or_empty_configs_folder(tmp_path):
    from sgm.demo.options import demo_options
    from sgm.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        demo_options(["--configs", str(tmp_path / "absent")], environ={})
    with pytest.raises(ConfigError, match="holds no .yaml"):
        demo_options(["--configs", str(tmp_path)], environ={})
    with pytest.raises(InputError, match="--outputs: the path is empty"):
        demo_options(["--outputs", ""], environ={})
    (tmp_path / "sd_xl_base.yaml").write_text("model: {}\n")
    assert demo_options(["--configs", str(tmp_path)], environ={}).configs == tmp_path
