"""Video sampling: the CLI end to end on a toy SVD-structured engine, preprocessing
geometry, SV3D_p camera values against their closed forms, and mp4 output read back
through ffmpeg."""

from __future__ import annotations

import hashlib
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import save_state

from sgm.inference.helpers import get_unique_embedder_keys_from_conditioner as _embedder_keys
from sgm.inference.video import (
    build_value_dict,
    build_video_batch,
    load_video_model,
    prepare_sv3d_image,
    prepare_svd_image,
    sample_video,
    save_video,
    sv3d_orbit,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "sampling" / "simple_video_sample.py"
TINY_CONFIG = REPO / "tests" / "configs" / "video_tiny_svd.yaml"
# Registers the toy CLIP arch with open_clip, then runs the script as __main__.
LAUNCHER = """
import runpy, sys
import sgm
from open_clip.factory import add_model_config
add_model_config(sys.argv[1])
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def arch_dir(video_arch_dir):
    return video_arch_dir


@pytest.fixture(scope="module")
def tiny(arch_dir, tmp_path_factory):
    """The toy engine (random weights, fixed seed) and its .safetensors file."""
    torch.manual_seed(0)
    model = load_video_model(TINY_CONFIG, None, "cpu", num_frames=3, num_steps=2)
    return model, save_state(model, tmp_path_factory.mktemp("video_ckpt") / "tiny.safetensors")


def _png(path: Path, width: int = 70, height: int = 100) -> Path:
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _run(cwd: Path, *args: str, launcher_dir: Path | None = None):
    if launcher_dir is None:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        command = [sys.executable, "-c", LAUNCHER, str(launcher_dir), str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)


def _read_mp4(path: Path) -> tuple[dict, np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return meta, np.stack(frames)


def test_cli_end_to_end_writes_playable_mp4_and_never_overwrites(tiny, arch_dir, tmp_path):
    _, ckpt = tiny
    image = _png(tmp_path / "input.png")
    args = (
        f"--input_path={image}",
        f"--config={TINY_CONFIG}",
        f"--ckpt={ckpt}",
        "--num_frames=3",
        "--num_steps=2",
        "--decoding_t=2",
        "--fps_id=9",
        "--dtype=fp32",
    )
    first = _run(tmp_path, *args, launcher_dir=arch_dir)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "outputs" / "simple_video_sample" / "svd"
    mp4 = out / "000000.mp4"
    assert first.stdout.strip().endswith(str(mp4.relative_to(tmp_path)))
    meta, frames = _read_mp4(mp4)
    assert frames.shape == (3, 64, 64, 3)
    assert meta["fps"] == pytest.approx(10.0)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert (out / "000000.jpg").is_file()
    digest = hashlib.sha256(mp4.read_bytes()).hexdigest()

    second = _run(tmp_path, *args, launcher_dir=arch_dir)
    assert second.returncode == 0, second.stderr
    assert hashlib.sha256(mp4.read_bytes()).hexdigest() == digest
    _, again = _read_mp4(out / "000001.mp4")
    assert again.shape == frames.shape
    assert sorted(p.name for p in out.iterdir()) == [
        "000000.jpg",
        "000000.mp4",
        "000001.jpg",
        "000001.mp4",
    ]


def _engine_and_lora(folder: Path) -> tuple[Path, Path]:
    """A toy engine whose zero-initialised layers (output convolutions) are filled, so
    that its attention reaches the output, and a LoRA file that changes that attention."""
    from safetensors.torch import save_file

    from sgm.lora import add_lora, lora_parameters, save_lora

    torch.manual_seed(4)
    model = load_video_model(TINY_CONFIG, None, "cpu", num_frames=3, num_steps=2)
    with torch.no_grad():
        for param in model.model.parameters():
            if not param.any():
                param.copy_(torch.randn_like(param) * 0.05)
    ckpt = folder / "engine.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    add_lora(model, {"rank": 4})
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn_like(param) * 0.5)
    return ckpt, save_lora(model, folder / "toy.lora.safetensors")


def test_cli_lora_flag_applies_the_adapter_at_its_scale(arch_dir, tmp_path):
    ckpt, lora = _engine_and_lora(tmp_path)
    image = _png(tmp_path / "input.png")
    out = tmp_path / "out"
    common = dict(
        input_path=str(image),
        config=str(TINY_CONFIG),
        ckpt=str(ckpt),
        num_frames=3,
        num_steps=2,
        decoding_t=2,
        output_folder=str(out),
        device="cpu",
    )
    sample = _script_module().sample
    sample(**common)
    sample(**common, lora=[(lora, 0.0)])
    flags = [f"--{k}={v}" for k, v in common.items()] + [f"--lora={lora}:1.0"]
    result = _run(tmp_path, *flags, launcher_dir=arch_dir)
    assert result.returncode == 0, result.stderr
    plain, scale_0, scale_1 = (_read_mp4(out / f"00000{i}.mp4")[1].astype(int) for i in range(3))
    assert np.array_equal(plain, scale_0)  # an adapter at scale 0 changes nothing
    assert np.abs(plain - scale_1).mean() > 1.0


def test_compile_flag_compiles_the_network_and_keeps_the_frames(tiny, tmp_path, monkeypatch):
    # TorchDynamo's eager backend traces the network (graphs counted) without a C++ build;
    # the video must be byte-identical to the uncompiled one.
    import functools

    import torch._dynamo

    _, ckpt = tiny
    out = tmp_path / "out"
    common = dict(
        input_path=str(_png(tmp_path / "input.png")),
        config=str(TINY_CONFIG),
        ckpt=str(ckpt),
        num_frames=3,
        num_steps=2,
        decoding_t=2,
        output_folder=str(out),
        device="cpu",
    )
    sample = _script_module().sample
    sample(**common)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    try:
        sample(**common, compile=True)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert graphs >= 1
    assert (out / "000000.mp4").read_bytes() == (out / "000001.mp4").read_bytes()


def test_cli_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = _run(tmp_path, f"--input_path={_png(tmp_path / 'x.png')}", "--version=svd_xt")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoints/svd_xt.safetensors" in lines[0]


def test_cli_unknown_version_exit_2(tmp_path):
    result = _run(tmp_path, "--version=svd_xxl")
    assert result.returncode == 2 and "svd_xt_1_1" in result.stderr


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("simple_video_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_steps": -2}, "num_steps"),
        ({"decoding_t": 1.5}, "decoding_t"),
        ({"output_folder": "{file}"}, "output_folder"),
        ({"output_folder": "{file}/below"}, "output_folder"),
    ],
)
def test_sample_checks_everything_before_the_model_loads(kwargs, culprit, tmp_path):
    from sgm.errors import InputError

    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    unloadable = tmp_path / "config.yaml"  # loading it would raise ConfigError
    unloadable.write_text("model: [1, 2\n")
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"")
    kwargs = {k: v.format(file=taken) if isinstance(v, str) else v for k, v in kwargs.items()}
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InputError, match=culprit):
        _script_module().sample(
            input_path=str(_png(tmp_path / "in.png")), config=unloadable, ckpt=ckpt, **kwargs
        )
    assert sorted(p for p in tmp_path.rglob("*") if p.name != "in.png") == before


def test_cli_flags_keep_their_names_and_defaults():
    import inspect

    module = _script_module()
    args = module.get_parser().parse_args(
        ["--input_path=.", "--num_frames=3", "--elevations_deg=[5, 10]", "--verbose"]
    )
    defaults = {name: p.default for name, p in inspect.signature(module.sample).parameters.items()}
    assert args.num_frames == 3 and args.elevations_deg == [5.0, 10.0] and args.verbose
    for name in (
        "num_steps",
        "version",
        "fps_id",
        "motion_bucket_id",
        "cond_aug",
        "seed",
        "decoding_t",
        "output_folder",
        "azimuths_deg",
        "image_frame_ratio",
        "config",
        "ckpt",
        "dtype",
        "low_vram",
    ):
        assert getattr(args, name) == defaults[name], name
    assert args.lora == [] and args.device in ("cpu", "cuda", "mps")


def test_load_sets_sampler_and_guider(tiny):
    model, _ = tiny
    assert model.sampler.num_steps == 2
    assert model.sampler.guider.num_frames == 3
    assert torch.allclose(model.sampler.guider.scale, torch.tensor([[1.0, 1.75, 2.5]]))


def test_sampling_is_seeded(tiny):
    model, _ = tiny
    image = prepare_svd_image(_png_image(64, 64))

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        values = build_value_dict(image, 0.02, generator=generator)
        return sample_video(model, values, 3, generator=generator, decoding_t=2)

    a, b, c = run(5), run(5), run(6)
    assert a.shape == (3, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def _png_image(width, height, mode="RGB"):
    from PIL import Image

    channels = 4 if mode == "RGBA" else 3
    rng = np.random.RandomState(1)
    return Image.fromarray(rng.randint(0, 256, (height, width, channels), dtype=np.uint8), mode)


def test_cond_frames_noise_matches_torch_randn():
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    values = build_value_dict(
        image, 0.3, fps_id=4, motion_bucket_id=200, generator=torch.Generator().manual_seed(11)
    )
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(values["cond_frames"], image + 0.3 * noise)
    assert values["cond_frames_without_noise"] is image
    assert (values["fps_id"], values["motion_bucket_id"], values["cond_aug"]) == (4, 200, 0.3)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((70, 100), (64, 64)),
        ((1030, 580), (1024, 576)),
        ((128, 192), (128, 192)),
        ((40, 30), (64, 64)),
    ],
)
def test_svd_image_sizes_are_multiples_of_64(size, expected):
    image = _png_image(*size)
    tensor = prepare_svd_image(image)
    assert tensor.shape == (1, 3, expected[1], expected[0])
    if size == expected:
        exact = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        assert torch.allclose(tensor, exact)


def test_sv3d_rgba_object_is_centred_with_frame_ratio():
    from PIL import Image

    image = Image.new("RGBA", (100, 60), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 10), (255, 0, 0, 255)), (5, 40))
    out = prepare_sv3d_image(image, image_frame_ratio=0.5, size=80)
    rgb = ((out[0] + 1) / 2).permute(1, 2, 0)
    # 20x10 box on a 40x40 square scaled by 2: red covers x 20..60, y 30..50.
    assert torch.allclose(rgb[40, 25], torch.tensor([1.0, 0, 0]), atol=0.02)
    assert torch.allclose(rgb[40, 55], torch.tensor([1.0, 0, 0]), atol=0.02)
    for y, x in [(40, 10), (40, 70), (20, 40), (60, 40), (0, 0)]:
        assert torch.allclose(rgb[y, x], torch.ones(3), atol=0.02), (y, x)


def test_sv3d_non_square_and_plain_rgb(caplog):
    from PIL import Image

    tall = Image.new("RGBA", (30, 90), (0, 0, 255, 255))
    out = prepare_sv3d_image(tall, size=90)
    rgb = ((out[0] + 1) / 2).permute(1, 2, 0)
    assert torch.allclose(rgb[45, 45], torch.tensor([0, 0, 1.0]), atol=0.02)
    assert torch.allclose(rgb[45, 5], torch.ones(3), atol=0.02)
    with caplog.at_level(logging.WARNING):
        plain = prepare_sv3d_image(Image.new("RGB", (50, 50), (0, 255, 0)), size=64)
    assert "not RGBA" in caplog.text
    assert torch.allclose(
        plain, torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    )


def test_sv3d_p_orbit_closed_form():
    polars, azimuths = sv3d_orbit(21, 10.0)
    assert polars == pytest.approx([4 * math.pi / 9] * 21)
    assert azimuths == pytest.approx([2 * math.pi * ((i + 1) % 21) / 21 for i in range(21)])
    elev = [float(i) for i in range(21)]
    az = [(37.0 + 10 * i) % 360 for i in range(21)]
    polars, azimuths = sv3d_orbit(21, elev, az)
    assert polars == pytest.approx([math.radians(90 - e) for e in elev])
    assert azimuths == pytest.approx([math.radians((a - az[-1]) % 360) for a in az])
    assert azimuths[-1] == 0.0


def test_save_video_refuses_overwrite_and_odd_sizes(tmp_path):
    frames = torch.rand(2, 3, 32, 48)
    path = save_video(frames, tmp_path / "a.mp4", fps=6)
    _, back = _read_mp4(path)
    assert back.shape == (2, 32, 48, 3)
    assert np.abs(back.astype(float) / 255 - frames.permute(0, 2, 3, 1).numpy()).mean() < 0.2
    with pytest.raises(FileExistsError):
        save_video(frames, path, fps=6)
    with pytest.raises(ValueError, match="even"):
        save_video(torch.rand(2, 3, 31, 48), tmp_path / "b.mp4", fps=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def _tiny_sv3d_p_config(tmp_path: Path) -> Path:
    """The toy SVD config turned into the SV3D_p layout: cond_aug + polar + azimuth
    vector (256 + 512 + 512), decode-only first stage, triangle guider."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(TINY_CONFIG)
    params = config.model.params
    params.network_config.params.adm_in_channels = 1280
    emb = params.conditioner_config.params.emb_models
    by_key = {e.input_key: e for e in emb}
    cte = {
        "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
        "is_trainable": False,
        "params": {"outdim": 512},
    }
    params.conditioner_config.params.emb_models = [
        by_key["cond_frames_without_noise"],
        by_key["cond_frames"],
        by_key["cond_aug"],
        {"input_key": "polars_rad", **cte},
        {"input_key": "azimuths_rad", **cte},
    ]
    first = params.first_stage_config.params
    first.encoder_config = {"target": "torch.nn.Identity"}
    first.decoder_config.target = "sgm.modules.diffusionmodules.model.Decoder"
    del first.decoder_config.params["video_kernel_size"]
    params.sampler_config.params.guider_config = {
        "target": "sgm.modules.diffusionmodules.guiders.TrianglePredictionGuider",
        "params": {"max_scale": 2.5},
    }
    path = tmp_path / "tiny_sv3d_p.yaml"
    OmegaConf.save(config, path)
    return path


def test_sv3d_p_toy_engine_routes_camera_values_and_keeps_input_view(arch_dir, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    frames_n = 4
    model = load_video_model(_tiny_sv3d_p_config(tmp_path), None, "cpu", frames_n, 2)
    assert model.sampler.guider.num_frames == frames_n
    image = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 20), (30, 200, 90, 255)), (10, 10))
    cond = prepare_sv3d_image(image, size=64)
    polars, azimuths = sv3d_orbit(frames_n, [5.0, 10.0, 15.0, 20.0])
    generator = torch.Generator().manual_seed(3)
    values = build_value_dict(
        cond, 1e-5, generator=generator, polars_rad=polars, azimuths_rad=azimuths
    )
    batch = build_video_batch(_embedder_keys(model.conditioner), values, frames_n, "cpu")
    vector = model.conditioner(batch)["vector"]
    assert vector.shape == (frames_n, 1280)
    # Polar embedding of frame i: [cos(p f_k), sin(p f_k)], f_k = 10000^(-k/256).
    freqs = torch.exp(-math.log(10000) * torch.arange(256, dtype=torch.float64) / 256)
    args = torch.tensor(polars, dtype=torch.float64)[:, None] * freqs
    expected = torch.cat([args.cos(), args.sin()], dim=1).float()
    assert torch.allclose(vector[:, 256:768], expected, atol=1e-6)
    video = sample_video(
        model, values, frames_n, generator=generator, decoding_t=2, replace_last_with_input=True
    )
    assert video.shape == (frames_n, 3, 64, 64)
    assert torch.allclose(video[-1], ((cond[0] + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize("version,frames,steps", [("svd_xt_1_1", 25, 30), ("sv3d_p", 21, 50)])
def test_released_configs_build_and_get_every_conditioning_key(version, frames, steps):
    config = REPO / "scripts" / "sampling" / "configs" / f"{version}.yaml"
    model = load_video_model(config, None, "meta", frames, steps)
    assert model.sampler.num_steps == steps and model.sampler.guider.num_frames == frames
    provided = set(
        build_value_dict(torch.zeros(1, 3, 8, 8), 0.02, polars_rad=[0.0], azimuths_rad=[0.0])
    )
    assert set(_embedder_keys(model.conditioner)) <= provided


def test_load_video_model_lora_adds_up_and_freezes(arch_dir, tmp_path):
    """``lora=`` applies each ``(path, scale)`` adapter: scale 0 is the base model, two
    halves are the whole adapter (the update is linear in the scale), nothing trains."""
    ckpt, lora = _engine_and_lora(tmp_path)
    image = prepare_svd_image(_png_image(64, 64))

    def frames(**kwargs):
        model = load_video_model(TINY_CONFIG, ckpt, "cpu", num_frames=3, num_steps=2, **kwargs)
        assert not any(p.requires_grad for p in model.parameters())
        generator = torch.Generator().manual_seed(3)
        values = build_value_dict(image, 0.02, generator=generator)
        return sample_video(model, values, 3, generator=generator, decoding_t=3)

    plain = frames()
    assert torch.equal(frames(lora=[(lora, 0.0)]), plain)
    whole = frames(lora=[(lora, 1.0)])
    assert (whole - plain).abs().max() > 1e-2
    torch.testing.assert_close(frames(lora=[(lora, 0.5), (lora, 0.5)]), whole, atol=1e-4, rtol=0)
