"""The attention-backend switch and the attention layers, against closed forms and peers."""

import logging
import subprocess
import sys

import pytest
import torch

from sgm.modules import _attention_backend as backend_module
from sgm.modules.attention import (
    CrossAttention,
    LinearAttention,
    MemoryEfficientCrossAttention,
    SelfAttention,
    SpatialSelfAttention,
    attention_backend,
    get_attention_backend,
    resolve_backend,
    scaled_dot_product,
    set_attention_backend,
)


def naive_attention(q, k, v, mask=None, scale=None):
    """softmax(q k^T / sqrt(d) + mask) v, written out."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if mask is not None:
        logits = logits + mask
    return torch.einsum("bhij,bhjd->bhid", logits.softmax(-1), v)


@pytest.fixture
def qkv():
    return torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)


@pytest.mark.parametrize("name", ["sdpa", "math", "xformers", "auto"])
def test_backends_agree_with_closed_form(name, qkv):
    q, k, v = qkv
    bool_mask = torch.rand(2, 1, 5, 7) > 0.3
    bool_mask[..., 0] = True
    additive = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, float("-inf"))
    with attention_backend(name):
        plain = scaled_dot_product(q, k, v)
        masked = scaled_dot_product(q, k, v, bool_mask)
        float_masked = scaled_dot_product(q, k, v, additive)
        scaled = scaled_dot_product(q, k, v, scale=0.3)
    torch.testing.assert_close(plain, naive_attention(q, k, v), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked, naive_attention(q, k, v, additive), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(float_masked, masked, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scaled, naive_attention(q, k, v, scale=0.3), atol=1e-6, rtol=1e-5)


def test_setting_precedence_and_env(monkeypatch):
    monkeypatch.delenv(backend_module.ENV_VAR, raising=False)
    assert get_attention_backend() == "auto"
    assert resolve_backend("math") == "math"  # auto honours the layer's request
    monkeypatch.setenv(backend_module.ENV_VAR, "math")
    assert resolve_backend("sdpa") == "math"  # an explicit choice overrides it
    with attention_backend("sdpa"):
        assert resolve_backend("math") == "sdpa"
    assert get_attention_backend() == "math"
    monkeypatch.setenv(backend_module.ENV_VAR, "flash")
    with pytest.raises(ValueError, match="flash"):
        get_attention_backend()
    with pytest.raises(ValueError, match="nope"):
        set_attention_backend("nope")


def test_missing_xformers_warns_once_and_uses_sdpa(monkeypatch, caplog):
    monkeypatch.setattr(backend_module, "xformers_available", lambda: False)
    backend_module._warn_missing_xformers.cache_clear()
    layer = MemoryEfficientCrossAttention(16, heads=2, dim_head=8).eval()
    x = torch.randn(1, 4, 16)
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        assert resolve_backend("xformers") == "sdpa"
        layer(x)
        layer(x)
    assert len([r for r in caplog.records if "xformers" in r.getMessage()]) == 1


def test_importing_network_modules_probes_nothing():
    code = (
        "import sys, sgm.modules.attention as a, sgm.modules.diffusionmodules.openaimodel;"
        "print(a.xformers_available.cache_info().currsize,"
        " [m for m in ('xformers', 'diffusers', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "[]"]


def _diffusers_attention(ours: CrossAttention, query_dim, context_dim, heads, dim_head):
    import torchvision  # noqa: F401  (before diffusers)
    from diffusers.models.attention_processor import Attention

    theirs = Attention(query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim_head)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs.eval()


def test_cross_attention_matches_diffusers_attention():
    ours = CrossAttention(32, context_dim=24, heads=4, dim_head=8).eval()
    theirs = _diffusers_attention(ours, 32, 24, 4, 8)
    x, context = torch.randn(2, 9, 32), torch.randn(2, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, context), theirs(x, context), atol=1e-6, rtol=1e-5)


def test_cross_attention_extras_match_their_definitions():
    ours = CrossAttention(16, heads=2, dim_head=8).eval()
    theirs = _diffusers_attention(ours, 16, None, 2, 8)
    x, extra = torch.randn(4, 6, 16), torch.randn(4, 3, 16)
    with torch.no_grad():
        # Extra tokens join keys and queries, and are dropped from the output.
        out = ours(x, additional_tokens=extra)
        ref = theirs(torch.cat([extra, x], 1))[:, 3:]
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
        # Cross-frame: each group of 2 frames attends to its first frame's tokens.
        out = ours(x, n_times_crossframe_attn_in_self=2)
        ref = theirs(x, encoder_hidden_states=x[[0, 0, 2, 2]])
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
        # A boolean mask removes keys.
        mask = torch.tensor([True] * 4 + [False] * 2).expand(1, 1, 6, 6)
        out = ours(x, mask=mask)
        ref = theirs(x, encoder_hidden_states=x[:, :4])
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_self_attention_matches_torch_multihead_attention():
    ours = SelfAttention(32, num_heads=4, attn_mode="torch").eval()
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(2, 10, 32)
        ref = mha(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(ours(x), ref, atol=1e-6, rtol=1e-5)


def test_spatial_self_attention_closed_form():
    layer = SpatialSelfAttention(32).eval()
    x = torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        h = layer.norm(x)
        q, k, v = (conv(h).flatten(2) for conv in (layer.q, layer.k, layer.v))
        w = torch.einsum("bci,bcj->bij", q, k).mul(32**-0.5).softmax(-1)
        ref = x + layer.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(x.shape))
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_linear_attention_closed_form():
    layer = LinearAttention(16, heads=2, dim_head=8).eval()
    x = torch.randn(2, 16, 3, 4)
    with torch.no_grad():
        q, k, v = layer.to_qkv(x).flatten(2).reshape(2, 3, 2, 8, 12).unbind(1)
        context = k.softmax(-1) @ v.transpose(-1, -2)  # (b, h, d, e)
        out = (context.transpose(-1, -2) @ q).reshape(2, 16, 3, 4)
        torch.testing.assert_close(layer(x), layer.to_out(out), atol=1e-5, rtol=1e-5)


def test_pinned_sdpa_kernel_and_math_backend_match_default():
    from torch.nn.attention import SDPBackend

    pinned = CrossAttention(16, context_dim=8, heads=2, dim_head=8, backend=SDPBackend.MATH)
    default = CrossAttention(16, context_dim=8, heads=2, dim_head=8)
    default.load_state_dict(pinned.state_dict())
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        ref = default(x, context)
        torch.testing.assert_close(pinned(x, context), ref, atol=1e-6, rtol=1e-5)
        with attention_backend("math"):
            torch.testing.assert_close(default(x, context), ref, atol=1e-6, rtol=1e-5)
