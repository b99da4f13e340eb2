"""scripts/convert.py: both directions end to end, and bad input (exit 2, one line on
stderr, nothing written)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "convert.py"

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("convert_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def sd21(engine_file, cli, tmp_path_factory):
    """(config, checkpoint, exported folder) through the command line."""
    config, ckpt, _ = engine_file("sd21")
    folder = tmp_path_factory.mktemp("cli") / "sd21_diffusers"
    assert cli(["to_diffusers", str(ckpt), "--config", str(config), str(folder)]) == 0
    return config, ckpt, folder


def _fails(cli, capsys, argv, *words, where: Path):
    before = sorted(where.rglob("*"))
    try:
        status = cli([str(a) for a in argv])
    except SystemExit as exit:  # argparse: a bad command line
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert sorted(where.rglob("*")) == before
    return err


def test_help_lists_both_directions():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "to_sgm" in out and "to_diffusers" in out


def test_round_trip_through_the_command_line(cli, sd21, tmp_path, capsys):
    from safetensors.torch import load_file

    config, ckpt, folder = sd21
    assert (folder / "model_index.json").is_file()
    out = tmp_path / "back.safetensors"
    assert cli(["to_sgm", str(folder), str(out), "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().endswith("back.safetensors")
    original, back = load_file(ckpt), load_file(out)
    assert back.keys() == original.keys()
    assert all((back[k] == v).all() for k, v in original.items())


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_to_sgm_bad_paths(cli, sd21, tmp_path, capsys):
    _, _, folder = sd21
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    _fails(
        cli,
        capsys,
        ["to_sgm", tmp_path / "nope", tmp_path / "a.safetensors"],
        "nope",
        "not a folder",
        where=tmp_path,
    )
    _fails(
        cli,
        capsys,
        ["to_sgm", tmp_path, tmp_path / "a.safetensors"],
        "model_index.json",
        where=tmp_path,
    )
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "taken.safetensors"],
        "taken.safetensors",
        "exists",
        where=tmp_path,
    )
    _fails(cli, capsys, ["to_sgm", folder, tmp_path / "a.ckpt"], ".safetensors", where=tmp_path)


def test_to_sgm_unsupported_pipeline(cli, sd21, tmp_path, capsys):
    folder = _copy(sd21[2], tmp_path)
    _edit_json(folder / "model_index.json", _class_name="StableDiffusion3Pipeline")
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors"],
        "StableDiffusion3Pipeline",
        "not supported",
        where=tmp_path,
    )


def test_to_sgm_sd1_is_refused(cli, sd21, tmp_path, capsys):
    folder = _copy(sd21[2], tmp_path)
    _edit_json(folder / "text_encoder" / "config.json", hidden_size=768)
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors"],
        "text_encoder",
        "768",
        "SD 1.x",
        where=tmp_path,
    )


def test_to_sgm_unsupported_component_class(cli, sd21, tmp_path, capsys):
    config, _, exported = sd21
    folder = _copy(exported, tmp_path)
    _edit_json(folder / "unet" / "config.json", _class_name="UNet3DConditionModel")
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors", "--config", config],
        "unet",
        "UNet3DConditionModel",
        "UNet2DConditionModel",
        where=tmp_path,
    )


def test_to_sgm_missing_component(cli, sd21, tmp_path, capsys):
    config, _, exported = sd21
    folder = _copy(exported, tmp_path)
    shutil.rmtree(folder / "vae")
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors", "--config", config],
        "vae",
        "missing",
        where=tmp_path,
    )


def test_to_sgm_config_of_another_family(cli, sd21, config_path, tmp_path, capsys):
    _, _, folder = sd21
    _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors", "--config", config_path("sdxl_refiner")],
        "StableDiffusionPipeline",
        "sdxl_refiner",
        where=tmp_path,
    )


def test_to_sgm_folder_of_other_sizes(cli, sd21, tmp_path, capsys):
    """A folder whose weights do not fit the config: the key and both shapes named."""
    config, _, folder = sd21
    other = OmegaConf.load(config)
    other.model.params.network_config.params.model_channels = 64
    OmegaConf.save(other, tmp_path / "wide.yaml")
    err = _fails(
        cli,
        capsys,
        ["to_sgm", folder, tmp_path / "a.safetensors", "--config", tmp_path / "wide.yaml"],
        "unet",
        where=tmp_path,
    )
    assert "shape" in err or "missing" in err


def test_to_diffusers_bad_input(cli, sd21, engine_file, tmp_path, capsys):
    config, ckpt, _ = sd21
    (tmp_path / "taken").mkdir()
    _fails(
        cli,
        capsys,
        ["to_diffusers", tmp_path / "none.safetensors", "--config", config, tmp_path / "out"],
        "none.safetensors",
        where=tmp_path,
    )
    _fails(
        cli,
        capsys,
        ["to_diffusers", ckpt, "--config", config, tmp_path / "taken"],
        "taken",
        "exists",
        where=tmp_path,
    )
    _fails(cli, capsys, ["to_diffusers", ckpt, tmp_path / "out"], "--config", where=tmp_path)
    other = engine_file("sdxl_refiner")[0]
    _fails(
        cli,
        capsys,
        ["to_diffusers", ckpt, "--config", other, tmp_path / "out"],
        "does not match",
        where=tmp_path,
    )


def test_to_diffusers_unsupported_architecture(cli, sd21, tmp_path, capsys):
    config, ckpt, _ = sd21
    pixel = OmegaConf.load(config)
    pixel.model.params.first_stage_config = {"target": "sgm.models.autoencoder.IdentityFirstStage"}
    OmegaConf.save(pixel, tmp_path / "pixel.yaml")
    _fails(
        cli,
        capsys,
        ["to_diffusers", ckpt, "--config", tmp_path / "pixel.yaml", tmp_path / "out"],
        "IdentityFirstStage",
        "not supported",
        where=tmp_path,
    )


def test_failed_export_leaves_nothing(sd21, tmp_path, monkeypatch):
    """An error after the first component: no output folder, no temporary left."""
    import sgm.convert.export as export

    config, ckpt, _ = sd21
    calls = []

    def fail_second(component, converted, folder):
        calls.append(component.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real(component, converted, folder)

    real = export.save_component
    monkeypatch.setattr(export, "save_component", fail_second)
    with pytest.raises(OSError):
        export.to_diffusers(ckpt, config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
