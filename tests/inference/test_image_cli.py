"""scripts/sampling/simple_image_sample.py and scripts/demo/detect.py end to end on CPU:
tiny random-weight models saved under the released checkpoint names."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgm.inference.watermark import WATERMARK_BITS
from sgm.modules.diffusionmodules.denoiser import Denoiser

pytestmark = pytest.mark.inference

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sampling" / "simple_image_sample.py"
DETECT = ROOT / "scripts" / "demo" / "detect.py"
SIZE = ["--width", "320", "--height", "256"]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return _load(SCRIPT, "simple_image_sample")


@pytest.fixture(scope="module")
def detect():
    return _load(DETECT, "detect_watermark_script")


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_image_clip_dir):
    """Folder of checkpoints under the released names, and the tiny config of each."""
    from builders import write_tiny_model

    root = tmp_path_factory.mktemp("image_cli")
    clip = tiny_image_clip_dir
    folder = root / "checkpoints"
    configs = {}
    for i, (version, kind, name, twin, twin_name) in enumerate(
        [
            (
                "sdxl_base_1.0",
                "sdxl_base",
                "sd_xl_base_1.0.safetensors",
                "sdxl_turbo",
                "sd_xl_turbo_1.0.safetensors",
            ),
            ("sdxl_refiner_1.0", "sdxl_refiner", "sd_xl_refiner_1.0.safetensors", None, None),
            (
                "sd2.1",
                "sd_2_1",
                "v2-1_512-ema-pruned.safetensors",
                "sd_turbo",
                "sd_turbo.safetensors",
            ),
        ]
    ):
        configs[version], ckpt = write_tiny_model(kind, clip, folder, name, seed=i)
        if twin:  # Turbo has its base model's architecture (same random weights here)
            os.link(ckpt, folder / twin_name)
            configs[twin] = configs[version]
    return folder, configs


def _args(models, version, out, *extra):
    folder, configs = models
    config = [] if version is None else ["--version", version, "--config", str(configs[version])]
    return [
        *config,
        "--checkpoints",
        str(folder),
        "--output_folder",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def _run(cli, capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out.split(), captured.err


def _oracle_bits(path) -> list[int]:
    """invisible-watermark's own decoder on the file as OpenCV reads it (BGR)."""
    import cv2
    from imwatermark import WatermarkDecoder

    return [int(b) for b in WatermarkDecoder("bits", 48).decode(cv2.imread(str(path)), "dwtDct")]


def _check_outputs(paths, out, count, size):
    from PIL import Image

    images = sorted(str(p) for p in out.glob("*.png"))
    assert len(paths) == count and sorted(paths) == images
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
            text = dict(image.text)
        # dwtDct is not exact: a few of the 48 bits may flip on some images (the original's
        # detector calls more than 35 matching bits watermarked)
        matching = sum(a == b for a, b in zip(_oracle_bits(path), WATERMARK_BITS))
        assert matching >= 44, (path, matching)
        yield text


@pytest.fixture
def sigmas_seen(monkeypatch):
    """The noise level of every network evaluation, in order."""
    seen = []
    forward = Denoiser.forward

    def recording(self, network, x, sigma, cond, **kwargs):
        seen.append(float(sigma[0]))
        return forward(self, network, x, sigma, cond, **kwargs)

    monkeypatch.setattr(Denoiser, "forward", recording)
    return seen


def ddpm_sigmas(n: int) -> np.ndarray:
    """SD's schedule at ``n`` steps, descending, 0 appended (closed form)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)
    t = np.linspace(999, 0, n, endpoint=False).astype(int)
    return np.append(np.sqrt((1 - abar[t]) / abar[t]), 0.0)


def test_txt2img_prompts_file_num_samples_metadata(cli, models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red barn\n\n  a blue boat  \n")
    out = tmp_path / "out"
    code, paths, _ = _run(
        cli,
        capsys,
        _args(
            models,
            "sdxl_base_1.0",
            out,
            "--prompts_file",
            str(prompts),
            "--num_samples",
            "2",
            "--steps",
            "3",
            "--seed",
            "7",
            "--cfg_scale",
            "4.5",
            *SIZE,
        ),
    )
    assert code == 0
    texts = list(_check_outputs(paths, out, 4, (320, 256)))
    # item k of the file (line x sample) has seed --seed + k
    assert [(t["prompt"], t["seed"]) for t in texts] == [
        ("a red barn", "7"),
        ("a red barn", "8"),
        ("a blue boat", "9"),
        ("a blue boat", "10"),
    ]
    assert texts[0]["model"] == "sdxl_base_1.0"
    assert texts[0]["checkpoint"] == "sd_xl_base_1.0.safetensors"
    # the config actually used (here --config's tiny one), not the release's
    assert texts[0]["config"] == str(models[1]["sdxl_base_1.0"])
    assert (texts[0]["sampler"], texts[0]["steps"], texts[0]["cfg_scale"]) == (
        "EulerEDMSampler",
        "3",
        "4.5",
    )
    assert (texts[0]["width"], texts[0]["height"]) == ("320", "256")
    assert Path(paths[0]).name == "000000000.png"


def test_speedup_flags_reach_the_network(cli, models, tmp_path, capsys):
    """--deepcache and --tgate change the image (each is checked against its reference
    implementation in tests/modules); --tome where the network has no attention at that
    level is one line, exit 2, nothing written."""
    from PIL import Image

    base = ["--steps", "3", "--prompt", "a cat", "--width", "128", "--height", "128"]
    arrays = {}
    for name, extra in (
        ("off", []),
        ("deepcache", ["--deepcache", "2"]),
        ("tgate", ["--tgate", "2"]),
    ):
        out = tmp_path / name
        code, paths, err = _run(cli, capsys, _args(models, "sdxl_base_1.0", out, *base, *extra))
        assert code == 0, err
        arrays[name] = np.asarray(Image.open(paths[0]), dtype=np.int16)
    assert np.abs(arrays["deepcache"] - arrays["off"]).max() > 0
    assert np.abs(arrays["tgate"] - arrays["off"]).max() > 0
    out = tmp_path / "tome"
    code, paths, err = _run(
        cli, capsys, _args(models, "sdxl_base_1.0", out, *base, "--tome", "0.5")
    )
    assert code == 2 and paths == []
    assert "token merging at max_downsample 1 finds no transformer block" in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and not out.exists()  # (the text encoder's loading bar aside)


def test_same_seed_same_bytes_and_never_overwrites(cli, models, tmp_path, capsys):
    argv = ["--steps", "2", "--prompt", "a cat", "--width", "256", "--height", "256"]
    _, first, _ = _run(
        cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / "a", *argv, "--seed", "3")
    )
    _, second, _ = _run(
        cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / "b", *argv, "--seed", "3")
    )
    before = Path(first[0]).read_bytes()
    assert Path(second[0]).read_bytes() == before
    # into the same folder, another seed: a new file, the old one untouched
    _, third, _ = _run(
        cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / "a", *argv, "--seed", "4")
    )
    assert Path(third[0]).name == "000000001.png" and Path(first[0]).read_bytes() == before
    assert Path(third[0]).read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["000000000.png", "000000001.png"]


def test_compile_flag_compiles_the_network_and_keeps_the_bytes(
    cli, models, tmp_path, capsys, monkeypatch
):
    # TorchDynamo's eager backend: the network is traced (graphs counted) without paying
    # a C++ compilation; the samples must be byte-identical to the uncompiled run.
    import functools

    import torch._dynamo

    argv = ["--steps", "2", "--prompt", "a cat", "--width", "256", "--height", "256"]
    _, plain, _ = _run(cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / "a", *argv))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    try:
        code, compiled, _ = _run(
            cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / "b", *argv, "--compile")
        )
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert code == 0 and graphs >= 1
    assert Path(compiled[0]).read_bytes() == Path(plain[0]).read_bytes()


def test_sd21_uses_the_full_schedule(cli, models, tmp_path, capsys, sigmas_seen):
    code, paths, _ = _run(
        cli,
        capsys,
        _args(
            models,
            "sd2.1",
            tmp_path,
            "--steps",
            "4",
            "--negative_prompt",
            "blurry",
            "--width",
            "256",
            "--height",
            "256",
        ),
    )
    assert code == 0
    (text,) = _check_outputs(paths, tmp_path, 1, (256, 256))
    assert text["negative_prompt"] == "blurry" and text["model"] == "sd2.1"
    np.testing.assert_allclose(sigmas_seen, ddpm_sigmas(4)[:-1], rtol=1e-5)


def test_img2img_starts_at_the_strength_level(cli, models, tmp_path, capsys, sigmas_seen):
    from PIL import Image

    init = tmp_path / "init.png"
    pixels = np.random.default_rng(0).integers(0, 256, (300, 330, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(init)
    out = tmp_path / "out"
    code, paths, _ = _run(
        cli,
        capsys,
        _args(
            models,
            "sdxl_base_1.0",
            out,
            "--init_image",
            str(init),
            "--strength",
            "0.5",
            "--steps",
            "8",
        ),
    )
    assert code == 0
    (text,) = _check_outputs(paths, out, 1, (320, 256))  # cut to multiples of 64
    assert text["init_image"] == "init.png" and text["strength"] == "0.5"
    kept = int(0.5 * 9)
    expected = ddpm_sigmas(8)[9 - kept : -1]
    np.testing.assert_allclose(sigmas_seen, expected, rtol=1e-5)


def test_refiner_hand_off(cli, models, tmp_path, capsys, sigmas_seen):
    out = tmp_path / "out"
    code, paths, _ = _run(
        cli,
        capsys,
        _args(
            models,
            "sdxl_base_1.0",
            out,
            "--refiner",
            "--refiner_config",
            str(models[1]["sdxl_refiner_1.0"]),
            "--refiner_strength",
            "0.3",
            "--steps",
            "6",
            *SIZE,
        ),
    )
    assert code == 0
    (text,) = _check_outputs(paths, out, 1, (320, 256))
    assert (text["refiner"], text["refiner_checkpoint"], text["refiner_strength"]) == (
        "sdxl_refiner_1.0",
        "sd_xl_refiner_1.0.safetensors",
        "0.3",
    )
    assert text["refiner_config"] == str(models[1]["sdxl_refiner_1.0"])
    # base and refiner together visit the 6-step schedule once each level
    np.testing.assert_allclose(sigmas_seen, ddpm_sigmas(6)[:-1], rtol=1e-5)


@pytest.mark.parametrize(
    "version,steps,samples", [("sdxl_turbo", 1, 2), ("sdxl_turbo", 4, 1), ("sd_turbo", 2, 1)]
)
def test_turbo(cli, models, tmp_path, capsys, sigmas_seen, version, steps, samples):
    out = tmp_path / "out"
    code, paths, _ = _run(
        cli,
        capsys,
        _args(
            models,
            version,
            out,
            "--steps",
            str(steps),
            "--num_samples",
            str(samples),
            "--seed",
            "5",
            "--width",
            "256",
            "--height",
            "256",
        ),
    )
    assert code == 0
    texts = list(_check_outputs(paths, out, samples, (256, 256)))
    assert [t["seed"] for t in texts] == [str(5 + k) for k in range(samples)]
    assert texts[0]["steps"] == str(steps) and texts[0]["model"] == version
    assert texts[0]["sampler"].startswith("SubstepSampler")
    # unguided steps at levels 0, 100, 200, 300 of the 1000-step schedule, per image
    levels = ddpm_sigmas(1000)[[0, 100, 200, 300][:steps]]
    np.testing.assert_allclose(sigmas_seen, list(levels) * samples, rtol=1e-5)


def test_lora_flag_reaches_the_network(cli, models, tmp_path, capsys):
    """An adapter at scale 0 leaves the pixels as they are; at scale 1 it changes them."""
    from omegaconf import OmegaConf
    from PIL import Image

    from sgm.lora import add_lora, lora_parameters, save_lora
    from sgm.util import instantiate_from_config

    engine = instantiate_from_config(OmegaConf.load(models[1]["sdxl_base_1.0"]).model)
    add_lora(engine, {"rank": 4})
    with torch.no_grad():
        for param in lora_parameters(engine):
            param.normal_(0.0, 0.5)
    adapter = save_lora(engine, tmp_path / "style.lora.safetensors")
    argv = ["--steps", "2", "--prompt", "a cat", "--width", "256", "--height", "256"]
    pixels, texts = [], []
    for name, extra in (
        ("plain", []),
        ("zero", ["--lora", f"{adapter}:0"]),
        ("full", ["--lora", str(adapter)]),
    ):
        code, (path,), _ = _run(
            cli, capsys, _args(models, "sdxl_base_1.0", tmp_path / name, *argv, *extra)
        )
        assert code == 0
        with Image.open(path) as image:
            pixels.append(np.asarray(image))
            texts.append(dict(image.text))
    assert np.array_equal(pixels[0], pixels[1])
    assert np.abs(pixels[0].astype(int) - pixels[2]).mean() > 1.0
    assert "lora" not in texts[0]
    assert texts[2]["lora"] == "style.lora.safetensors:1.0"


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is built: bad input is caught before any loading."""
    from sgm.inference import api

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(api.SamplingPipeline, "__init__", refuse)


def _unreadable(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    return path


def _empty_prompts(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n   \n")
    return path


BAD = [
    ("unknown version", lambda t: ["--version", "sd3"], "sd3"),
    ("width", lambda t: ["--width", "200"], "--width 200"),
    ("height", lambda t: ["--height", "1000"], "--height 1000"),
    ("zero steps", lambda t: ["--steps", "0"], "--steps"),
    ("negative steps", lambda t: ["--steps", "-3"], "--steps"),
    (
        "strength zero",
        lambda t: ["--init_image", str(t / "x.png"), "--strength", "0"],
        "--strength",
    ),
    ("strength above one", lambda t: ["--strength", "1.5"], "--strength"),
    ("init image missing", lambda t: ["--init_image", str(t / "nope.png")], "nope.png"),
    ("init image unreadable", lambda t: ["--init_image", str(_unreadable(t))], "broken.png"),
    ("prompts file missing", lambda t: ["--prompts_file", str(t / "p.txt")], "p.txt"),
    ("prompts file empty", lambda t: ["--prompts_file", str(_empty_prompts(t))], "empty.txt"),
    (
        "refiner checkpoint missing",
        lambda t: ["--refiner", "sdxl_refiner_0.9"],
        "sd_xl_refiner_0.9.safetensors",
    ),
    ("refiner for sd2.1", lambda t: ["--version", "sd2.1", "--refiner"], "--refiner"),
    ("turbo steps", lambda t: ["--version", "sdxl_turbo", "--steps", "5"], "--steps 5"),
    (
        "turbo img2img",
        lambda t: ["--version", "sd_turbo", "--init_image", str(t / "x.png")],
        "--init_image",
    ),
    ("deepcache interval 0", lambda t: ["--deepcache", "0"], "--deepcache"),
    ("tome ratio 1", lambda t: ["--tome", "1"], "--tome"),
    ("tome ratio nan", lambda t: ["--tome", "nan"], "--tome"),
    ("tgate beyond the steps", lambda t: ["--steps", "4", "--tgate", "9"], "--tgate 9"),
    ("tgate with deepcache", lambda t: ["--tgate", "2", "--deepcache", "2"], "--tgate"),
    ("turbo deepcache", lambda t: ["--version", "sdxl_turbo", "--deepcache", "2"], "sdxl_turbo"),
]


@pytest.mark.parametrize("name,extra,culprit", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_2_nothing_written(
    cli, models, tmp_path, capsys, no_model, name, extra, culprit
):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    extra = extra(tmp_path)
    # the released config of the version named in `extra`, or the tiny SDXL base
    version = None if "--version" in extra else "sdxl_base_1.0"
    argv = _args(models, version, out, *extra)
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert culprit in lines[0], lines[0]
    assert not out.exists()


def test_base_checkpoint_missing_names_the_file(cli, tmp_path, capsys, no_model):
    code = cli.main(
        [
            "--version",
            "sdxl_turbo",
            "--checkpoints",
            str(tmp_path),
            "--output_folder",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "sd_xl_turbo_1.0.safetensors" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_exit_status_of_the_real_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--version",
            "sd_turbo",
            "--steps",
            "8",
            "--output_folder",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: simple_image_sample.py: --steps 8: sd_turbo samples in 1 to 4 steps"
    ]
    assert not (tmp_path / "out").exists() and result.stdout == ""


def test_help_lists_the_sdxl_buckets(cli, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "704x1408" in text and "1024x1024" in text and "1728x576" in text
    for version in cli.VERSIONS:
        assert version in text


# --------------------------------------------------------------------------- detect.py


def test_detect_files_folders_globs(cli, detect, models, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = tmp_path / "out"
    _, paths, _ = _run(
        cli,
        capsys,
        _args(models, "sdxl_turbo", out, "--num_samples", "1", "--width", "256", "--height", "256"),
    )
    clean = tmp_path / "clean" / "photo.png"
    clean.parent.mkdir()
    Image.fromarray(load_sample_images().images[0]).save(clean)
    (tmp_path / "clean" / "notes.png").write_text("not an image")
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    argv = [
        str(out),
        str(tmp_path / "clean" / "*.png"),
        str(tmp_path / "small.png"),
    ]
    assert detect.main(argv) == 1  # some files could not be read
    lines = capsys.readouterr().out.strip().splitlines()
    results = {}
    for line in lines[:-1]:
        if " bits match: " in line:
            path, count, verdict = re.fullmatch(r"(.*): (\d+)/48 bits match: (.*)", line).groups()
            results[path] = (int(count), verdict)
    assert len(results) == 2
    for path in [*paths, str(clean)]:  # the count is what invisible-watermark decodes
        oracle = sum(a == b for a, b in zip(_oracle_bits(path), WATERMARK_BITS))
        assert results[path][0] == oracle
    assert [results[p][1] for p in paths] == ["watermarked"]
    assert results[str(clean)][1] == "not watermarked"
    unreadable = [line for line in lines if ": unreadable (" in line]
    assert len(unreadable) == 2  # notes.png, small.png
    assert lines[-1] == (
        "4 file(s): 1 watermarked, 0 likely watermarked, 0 partial match, "
        "1 not watermarked, 2 unreadable"
    )
    assert detect.main(paths) == 0  # every file checked
