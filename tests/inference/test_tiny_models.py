"""sgm-tiny: a tiny random-weight model of every release, written by the command line, that
the library loads strictly, that keeps the release's structure, and that every sampling
command line and the Streamlit image page run on."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sgm.commands import tiny
from sgm.inference.releases import config_path, get_release, names

REPO = Path(__file__).resolve().parents[2]


def _run(module, argv, capsys):
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def _targets(node) -> list[str]:
    """Every ``target`` of a config tree, in order."""
    if isinstance(node, dict):
        own = [node["target"]] if isinstance(node.get("target"), str) else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def _tree(path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


@pytest.mark.parametrize("name", names())
def test_every_release_gets_a_tiny_model_the_loader_takes_strictly(name, tmp_path, capsys):
    from safetensors import safe_open

    from sgm.inference.engines import load_engine
    from sgm.inference.video import load_video_model

    release = get_release(name)
    code, out, err = _run(tiny, ["--release", name, "--out", tmp_path], capsys)
    assert code == 0, err
    config, ckpt = tmp_path / f"{name}.yaml", tmp_path / release.ckpt
    assert out.split() == [f"{name}:", "--config", str(config), "--ckpt", str(ckpt)]
    assert ckpt.stat().st_size < 40e6
    # the release's structure: the same targets in the same order, the same condition keys
    released, written = _tree(config_path(release)), _tree(config)
    assert _targets(written) == _targets(released)
    embedders = written["model"]["params"]["conditioner_config"]["params"]["emb_models"]
    assert tuple(e["input_key"] for e in embedders) == release.conditions_on
    assert _tree(tmp_path / "configs" / Path(release.config).name) == written
    # the checkpoint holds exactly the engine's weights: the library's strict loader takes it
    if release.kind == "image":
        engine = load_engine(OmegaConf.load(config), ckpt, "cpu")
    else:
        frames = release.num_frames if release.kind == "video" else release.n_time * release.n_view
        engine = load_video_model(config, ckpt, "cpu", frames)
    with safe_open(str(ckpt), "pt") as f:
        assert set(f.keys()) == set(engine.state_dict())
    assert sum(p.numel() for p in engine.parameters()) < 10e6
    network = written["model"]["params"]["network_config"]["params"]
    assert network["model_channels"] == 32


def test_refuses_to_replace_a_model_and_unknown_releases(tmp_path, capsys):
    (tmp_path / "sd_turbo.safetensors").write_bytes(b"mine")
    code, _, err = _run(tiny, ["--release", "sd_turbo", "--out", tmp_path], capsys)
    assert code == 2 and "exists; pass --overwrite" in err and len(err.splitlines()) == 1
    assert (tmp_path / "sd_turbo.safetensors").read_bytes() == b"mine"
    assert not (tmp_path / "sd_turbo.yaml").exists()
    code, _, err = _run(tiny, ["--release", "sdxl_base_2.0", "--out", tmp_path], capsys)
    assert code == 2 and "sdxl_base_2.0" in err


def test_open_clip_arch_file_is_open_clips_format(tmp_path, capsys):
    """The written architecture file builds the same towers through open_clip itself."""
    import open_clip
    import torch

    from sgm.modules.encoders.modules import FrozenOpenCLIPEmbedder2

    code, _, err = _run(tiny, ["--release", "sdxl_base_1.0", "--out", tmp_path], capsys)
    assert code == 0, err
    arch = tmp_path / "open_clip.json"
    torch.manual_seed(0)
    ours = FrozenOpenCLIPEmbedder2(
        arch=str(arch), version=None, always_return_pooled=True, legacy=False
    )
    open_clip.factory.add_model_config(arch)
    peer = open_clip.create_model("open_clip", pretrained=None)
    missing, unexpected = peer.load_state_dict(ours.model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("visual.") for k in missing)
    with torch.no_grad():
        hidden, pooled = ours(["a red cube"])
        expected = peer.encode_text(open_clip.get_tokenizer("open_clip")(["a red cube"]))
    assert json.loads(arch.read_text())["embed_dim"] == 32
    assert hidden.shape == (1, 77, 32)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def readme_commands() -> dict[str, list[str]]:
    """The command lines of the README's "Try every command line ... without weights"
    block: script path -> argv (the streamlit line left out)."""
    import shlex

    text = (REPO / "README.md").read_text()
    start = text.index("### Try every command line in a minute without weights")
    block = text[text.index("```bash\n", start) + 8 :]
    block = block[: block.index("```")].replace("\\\n", " ")
    commands = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "python":
            commands[words[1]] = words[2:]
    return commands


README = readme_commands()


def _readme_run(script: str, cwd: Path, monkeypatch, capsys):
    """Run the README's command line of ``script`` as written, from ``cwd``."""
    spec = importlib.util.spec_from_file_location(f"_readme_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(cwd)
    return _run(module, README[script], capsys)


def test_readme_block_covers_every_sampling_command_line():
    scripts = {f"scripts/sampling/{n}.py" for n in ("simple_image_sample", "simple_video_sample")}
    scripts |= {f"scripts/sampling/simple_video_sample_4d{n}.py" for n in ("", "2")}
    assert set(README) == scripts | {"scripts/tiny_model.py"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder where the README's tiny_model.py line ran (``tiny/``); the sampling lines
    read the example inputs shipped with sgm from here (outside the checkout)."""
    root = tmp_path_factory.mktemp("tiny_models")
    argv = README["scripts/tiny_model.py"]
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert tiny.main(argv) == 0
    finally:
        os.chdir(cwd)
    return root


def _mp4_frames(path: Path) -> int:
    import imageio_ffmpeg

    return sum(1 for _ in list(imageio_ffmpeg.read_frames(str(path)))[1:])


def test_image_command_line_runs_on_a_tiny_model(tiny_dir, monkeypatch, capsys):
    from PIL import Image

    script = "scripts/sampling/simple_image_sample.py"
    code, out, err = _readme_run(script, tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    written = [tiny_dir / line for line in out.split() if line.endswith(".png")]
    assert written and all(p.is_file() for p in written)
    assert written[0].parent == tiny_dir / "outputs" / "simple_image_sample" / "sdxl_base_1.0"
    with Image.open(written[0]) as image:
        assert image.size == (64, 64)
        assert np.asarray(image).std() > 0  # random weights, yet not a constant picture


def test_video_command_line_runs_on_a_tiny_model(tiny_dir, monkeypatch, capsys):
    script = "scripts/sampling/simple_video_sample.py"
    code, out, err = _readme_run(script, tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    videos = sorted((tiny_dir / "outputs" / "simple_video_sample").rglob("*.mp4"))
    assert len(videos) == 1 and _mp4_frames(videos[0]) == 4


@pytest.mark.slow
def test_sv4d2_command_line_runs_on_a_tiny_model(tiny_dir, monkeypatch, capsys):
    script = "scripts/sampling/simple_video_sample_4d2.py"
    code, out, err = _readme_run(script, tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    videos = sorted((tiny_dir / "outputs" / "sv4d2").rglob("*.mp4"))
    assert len(videos) == 5  # the processed input and 4 views
    assert all(_mp4_frames(v) == 13 for v in videos)


@pytest.mark.slow
def test_sv4d_command_line_runs_on_a_tiny_model(tiny_dir, monkeypatch, capsys):
    script = "scripts/sampling/simple_video_sample_4d.py"
    code, out, err = _readme_run(script, tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tiny_dir / "outputs" / "sv4d").iterdir())
    assert len(written) == 11  # input, frame 0, 8 views, diagonal
    assert _mp4_frames(tiny_dir / "outputs" / "sv4d" / "000000_v001.mp4") == 21


def test_streamlit_image_page_runs_on_a_tiny_model(tiny_dir, monkeypatch, tmp_path):
    """The page pointed at the tiny folder (--checkpoints tiny --configs tiny/configs)
    shows the picture the library makes from the same files."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from sgm.demo.image import ImageRequest, generate, image_model, to_pil
    from sgm.demo.options import demo_options
    from sgm.inference.api import SamplingPipeline

    sys_path = str(REPO / "tests" / "demo")
    monkeypatch.syspath_prepend(sys_path)
    from demo_support import capture_media, shown_images

    st.cache_resource.clear()
    environ = {
        "SGM_DEMO_CHECKPOINTS": str(tiny_dir / "tiny"),
        "SGM_DEMO_CONFIGS": str(tiny_dir / "tiny" / "configs"),
        "SGM_DEMO_OUTPUTS": str(tmp_path / "out"),
        "SGM_DEMO_DEVICE": "cpu",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SGM_DEMO_CONFIG", raising=False)
    monkeypatch.delenv("SGM_DEMO_CKPT", raising=False)
    page_file = str(REPO / "scripts" / "demo" / "sampling.py")
    # without weights the page says how to get tiny ones; its instructions are what follows
    monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", str(tmp_path / "no_weights"))
    at = AppTest.from_file(page_file, default_timeout=120).run()
    assert at.error and at.button(key="sample").disabled
    (hint,) = [i.value for i in at.info]
    assert "`sgm-tiny --release all --out tiny`" in hint
    assert "`-- --checkpoints tiny --configs tiny/configs`" in hint
    assert "SGM_DEMO_CHECKPOINTS=tiny SGM_DEMO_CONFIGS=tiny/configs" in hint
    monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", environ["SGM_DEMO_CHECKPOINTS"])
    st.cache_resource.clear()
    media = capture_media(monkeypatch)
    at = AppTest.from_file(page_file, default_timeout=120).run()
    assert not at.info
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.selectbox(key="resolution").select("custom").run()
    at.number_input(key="W").set_value(64)
    at.number_input(key="H").set_value(64)
    at.number_input(key="steps").set_value(2)
    at.text_area(key="prompt").input("a red cube")
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (shown,) = shown_images(media)

    model = image_model("SDXL-base-1.0", demo_options(environ=environ))
    assert model.files.ckpt == tiny_dir / "tiny" / "sd_xl_base_1.0.safetensors"
    pipe = SamplingPipeline(
        config=str(model.files.config), ckpt=model.files.ckpt, spec=model.spec, device="cpu"
    )
    request = ImageRequest(prompt="a red cube", width=64, height=64, steps=2)
    expected = generate(pipe, request)["samples"]
    assert np.array_equal(shown, np.asarray(to_pil(expected)[0]))


@pytest.mark.parametrize("text", ["{not json", '{"embed_dim": 32}', "[1, 2]"])
def test_a_bad_open_clip_arch_file_is_a_config_error_naming_it(tmp_path, text):
    from sgm.errors import ConfigError
    from sgm.modules.encoders.modules import FrozenOpenCLIPEmbedder

    arch = tmp_path / "arch.json"
    arch.write_text(text)
    with pytest.raises(ConfigError, match="open_clip architecture file .*arch.json"):
        FrozenOpenCLIPEmbedder(arch=str(arch), version=None)
