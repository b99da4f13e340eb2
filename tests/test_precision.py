"""Precision policy on CPU: CPU autocast (bfloat16) stands in for mixed precision on GPU.

Parts configured to run in float32 (first stage with ``disable_first_stage_autocast``,
video encoder with ``disable_encoder_autocast``) must give, under a caller's autocast,
exactly the float32 result computed without any autocast; with the flag off the same
call is visibly affected by the autocast (so the comparison can fail).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm import precision
from sgm.errors import InputError
from sgm.util import autocast, instantiate_from_config

CONFIGS = Path(__file__).resolve().parent / "configs"
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _engine(name: str, **params) -> torch.nn.Module:
    """A tiny engine from tests/configs without conditioner and sampler."""
    config = OmegaConf.load(CONFIGS / name).model
    config.params.update(params)
    for key in ("conditioner_config", "sampler_config"):
        config.params.pop(key, None)
    config.params.ckpt_path = None
    torch.manual_seed(0)
    return instantiate_from_config(config).eval()


@pytest.mark.parametrize("name", ["image_tiny_sdxl_base.yaml", "video_tiny_svd.yaml"])
def test_first_stage_is_float32_under_the_callers_autocast(name):
    engine = _engine(name)
    assert engine.disable_first_stage_autocast
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)  # the KL encoder samples its posterior
    z_ref = engine.encode_first_stage(x)
    x_ref = engine.decode_first_stage(z_ref)
    with torch.autocast(**BF16):
        torch.manual_seed(2)
        z = engine.encode_first_stage(x)
        x_rec = engine.decode_first_stage(z_ref)
    assert z.dtype == x_rec.dtype == torch.float32
    assert torch.equal(z, z_ref)
    assert torch.equal(x_rec, x_ref)
    engine.disable_first_stage_autocast = False  # the caller's autocast reaches it now
    with torch.autocast(**BF16):
        x_mixed = engine.decode_first_stage(z_ref)
    assert not torch.equal(x_mixed.float(), x_ref)


def _video_embedder(disable: bool) -> torch.nn.Module:
    config = OmegaConf.load(CONFIGS / "video_tiny_svd.yaml")
    (emb,) = [
        e
        for e in config.model.params.conditioner_config.params.emb_models
        if e.input_key == "cond_frames"
    ]
    emb.params.disable_encoder_autocast = disable
    torch.manual_seed(3)
    return instantiate_from_config(emb).eval()


def test_video_embedder_honours_disable_encoder_autocast():
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    for disable in (True, False):
        embedder = _video_embedder(disable)
        with torch.no_grad():
            ref = embedder(frames)
            with torch.autocast(**BF16):
                mixed = embedder(frames)
        if disable:
            assert mixed.dtype == torch.float32 and torch.equal(mixed, ref)
        else:
            assert not torch.equal(mixed.float(), ref)


def test_video_unet_casts_y_to_the_embedding_dtype():
    """Like UNetModel: half weights take a float32 ``y`` (no autocast open)."""
    config = OmegaConf.load(CONFIGS / "video_tiny_svd.yaml").model.params.network_config
    torch.manual_seed(5)
    net = instantiate_from_config(config).to(torch.bfloat16).eval()
    frames = 2
    g = torch.Generator().manual_seed(6)
    x = torch.randn(frames, 8, 8, 8, generator=g).bfloat16()
    t = torch.tensor([3.0, 3.0])
    context = torch.randn(frames, 1, 32, generator=g).bfloat16()
    y = torch.randn(frames, 768, generator=g)
    kw = {"num_video_frames": frames, "image_only_indicator": torch.zeros(1, frames)}
    with torch.no_grad():
        out = net(x, t, context=context, y=y, **kw)
        expected = net(x, t, context=context, y=y.bfloat16(), **kw)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_parse_dtype_names_auto_and_errors(monkeypatch):
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)
    monkeypatch.setattr("sgm.util.accelerator_type", lambda: "cuda")
    assert precision.parse_dtype("fp32") is torch.float32
    assert precision.parse_dtype("FP16") is torch.float16
    assert precision.parse_dtype("bf16", "cpu") is torch.bfloat16
    assert precision.parse_dtype(torch.bfloat16) is torch.bfloat16
    assert precision.parse_dtype("auto", "cpu") is torch.float32
    assert precision.parse_dtype("auto", "cuda:1") is torch.float16
    assert precision.parse_dtype(None, "mps") is torch.float32
    assert precision.parse_dtype(None) is torch.float16  # the machine's accelerator
    monkeypatch.setattr("sgm.util.accelerator_type", lambda: None)
    assert precision.parse_dtype(None) is torch.float32
    assert precision.parse_dtype("auto", torch.zeros(1)) is torch.float32
    with pytest.raises(InputError, match="'half'.*auto, fp32, fp16, bf16"):
        precision.parse_dtype("half")
    with pytest.raises(InputError, match="float64"):
        precision.parse_dtype(torch.float64)


@pytest.mark.parametrize(
    "flags,native",
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 amx_tile", True),  # Sapphire Rapids, Zen 4
        ("fpu sse2 avx2 amx_bf16 amx_tile", True),
        ("fpu asimd bf16 i8mm", True),  # Arm (Features line)
        ("fpu sse2 avx2 avx512f avx512_vnni", False),  # AVX-512 without BF16
        ("", False),  # flags unreadable
    ],
)
def test_auto_picks_bf16_exactly_on_cpus_that_compute_it(monkeypatch, flags, native):
    """``auto`` on a CPU is bf16 exactly when the CPU reports native bf16 arithmetic; an
    explicit fp32 and the accelerators' choices are unchanged."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags.split()))
    precision.cpu_computes_bf16.cache_clear()
    try:
        assert precision.cpu_computes_bf16() is native
        expected = torch.bfloat16 if native else torch.float32
        assert precision.parse_dtype("auto", "cpu") is expected
        monkeypatch.setattr("sgm.util.accelerator_type", lambda: None)
        assert precision.parse_dtype(None) is expected
        assert precision.parse_dtype("fp32", "cpu") is torch.float32
        assert precision.parse_dtype("auto", "mps") is torch.float32
        monkeypatch.setattr("sgm.util.accelerator_type", lambda: "cuda")
        assert precision.parse_dtype("auto", "cuda") is torch.float16
    finally:
        precision.cpu_computes_bf16.cache_clear()


def test_cpu_flags_are_read_from_the_flags_line(tmp_path, monkeypatch):
    import builtins

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 sse2\n\nprocessor\t: 1\n")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k),
    )
    assert precision._cpu_flags() == {"fpu", "avx512_bf16", "sse2"}


def test_a_cpu_run_keeps_the_first_stage_in_float32_under_bf16():
    from sgm.models.engine_run import EngineRun

    seen = []

    class Engine(torch.nn.Module):
        compute_dtype = torch.bfloat16

        def decode_first_stage(self, z):
            seen.append(torch.is_autocast_enabled("cpu"))
            return (z @ z).float()

        encode_first_stage = decode_first_stage

    with EngineRun(Engine(), "cpu", ema=False) as run:
        seen.append(torch.is_autocast_enabled("cpu"))
        run.decode(torch.ones(2, 2))
        run.encode(torch.ones(2, 2))
    assert seen == [True, False, False]


def test_autocast_context_follows_the_dtype():
    x = torch.ones(2, 2)
    with precision.autocast(x, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (x @ x).dtype == torch.bfloat16
    with torch.autocast(**BF16), precision.autocast("cpu", "fp32"):
        assert (x @ x).dtype == torch.float32
    with torch.autocast(**BF16), precision.float32(x):
        assert (x @ x).dtype == torch.float32


def test_util_autocast_follows_the_tensors_device(monkeypatch):
    """A CPU tensor is not sent to the machine's accelerator autocast (the decorator
    used to ask for the machine's first accelerator)."""
    monkeypatch.setattr("sgm.util.accelerator_type", lambda: "cuda")
    seen = []

    x = torch.ones(2, 2)

    @autocast
    def encode(x):
        seen.append((torch.is_autocast_enabled("cpu"), (x @ x).dtype))
        return x

    class TextEncoder(torch.nn.Linear):
        @autocast
        def forward(self, text: list[str]):  # no tensor argument: the module's device
            seen.append((torch.is_autocast_enabled("cpu"), (x @ x).dtype))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when asked for CUDA autocast here
        encode(x)
        with torch.autocast(**BF16):
            encode(x)
        TextEncoder(2, 2)(["a photo"])
    assert seen == [(False, torch.float32), (True, torch.bfloat16), (False, torch.float32)]


def test_cast_network_keeps_ema_and_first_stage_float32():
    engine = _engine("video_tiny_svd.yaml", use_ema=True)
    precision.cast_network(engine, "bf16")
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in engine.model_ema.buffers() if b.is_floating_point()} == {torch.float32}
    assert {p.dtype for p in engine.first_stage_model.parameters()} == {torch.float32}
    shadow = dict(engine.model_ema.named_buffers())
    name, shadow_name = next(iter(engine.model_ema.m_name2s_name.items()))
    before = dict(engine.model.named_parameters())[name].clone()
    with engine.ema_scope():
        inside = dict(engine.model.named_parameters())[name]
        assert torch.equal(inside, shadow[shadow_name].bfloat16())
    assert torch.equal(dict(engine.model.named_parameters())[name], before)
