"""Token merging against the ``tomesd`` package on diffusers' UNet2DConditionModel holding
the same weights (diffusers' own converter); the merge itself against a direct
computation; off is bit-identical; bad settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "diffusionmodules"))
from test_unet_parity import SD21_TINY, SDXL_TINY, assert_close, build  # noqa: E402
from unet_oracle import to_diffusers  # noqa: E402

from sgm.errors import InputError  # noqa: E402
from sgm.modules import token_merging  # noqa: E402
from sgm.modules.token_merging import TokenMerging, bipartite_merge  # noqa: E402

pytestmark = pytest.mark.parity


def _inputs(batch, size=16, ctx=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.full((batch,), 500.0)
    return x, t, torch.randn(batch, 7, ctx, generator=g)


@pytest.mark.parametrize(
    "options,batch,size",
    [
        (dict(ratio=0.5, use_rand=False), 2, 16),
        (dict(ratio=0.3, use_rand=True), 2, 16),  # random destinations, same stream
        (dict(ratio=0.5, use_rand=True), 1, 16),  # odd batch: top-left destinations
        (dict(ratio=0.6, use_rand=False, max_downsample=2, merge_crossattn=True), 2, 16),
        (dict(ratio=0.5, use_rand=False, merge_mlp=True, sx=3, sy=3), 2, 16),  # cells do not tile
    ],
)
def test_matches_tomesd(options, batch, size):
    import tomesd

    ours = build(SD21_TINY)
    theirs = to_diffusers(ours, SD21_TINY)
    x, t, ctx = _inputs(batch, size)
    with torch.no_grad():
        plain = theirs(x, t, encoder_hidden_states=ctx).sample
        tomesd.apply_patch(theirs, **options)
        try:
            torch.manual_seed(7)  # the generator both fork at the first merge
            want = [theirs(x * s, t, encoder_hidden_states=ctx).sample for s in (1.0, 0.9)]
        finally:
            tomesd.remove_patch(theirs)
        torch.manual_seed(7)
        with token_merging.enabled(TokenMerging(**options)):
            got = [ours(x * s, t, context=ctx) for s in (1.0, 0.9)]
    assert (want[0] - plain).abs().max() > 1e-3, "tomesd merged nothing: a vacuous comparison"
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-4)


def test_off_is_bit_identical_and_ratio_zero_is_off():
    ours = build(SD21_TINY)
    x, t, ctx = _inputs(2)
    with torch.no_grad():
        plain = ours(x, t, context=ctx)
        with token_merging.enabled(None):
            assert torch.equal(ours(x, t, context=ctx), plain)
        with token_merging.enabled(TokenMerging(0.0)):
            assert torch.equal(ours(x, t, context=ctx), plain)


def test_merge_and_unmerge_by_hand():
    """4x4 tokens, 2x2 cells: destinations are the cells' top-left tokens; each merged
    source averages into its most similar destination, and unmerging copies it back."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 5, generator=g)
    merge, unmerge = bipartite_merge(x, 4, 4, 2, 2, r=4)
    dst = [0, 2, 8, 10]
    src = [i for i in range(16) if i not in dst]
    unit = x[0] / x[0].norm(dim=-1, keepdim=True)
    sims = unit[src] @ unit[dst].T
    best, target = sims.max(-1)
    merged = [src[i] for i in best.argsort(descending=True)[:4].tolist()]
    into = {s: dst[target[src.index(s)]] for s in merged}
    merged_x = merge(x)
    assert merged_x.shape == (1, 12, 5)
    expected_dst = torch.stack(
        [torch.stack([x[0, d]] + [x[0, s] for s in merged if into[s] == d]).mean(0) for d in dst]
    )
    torch.testing.assert_close(merged_x[0, -4:], expected_dst)
    back = unmerge(merged_x)
    for i in range(16):
        want = expected_dst[dst.index(i)] if i in dst else None
        if i in into:
            want = expected_dst[dst.index(into[i])]
        if want is None:
            want = x[0, i]  # an unmerged source comes back unchanged
        torch.testing.assert_close(back[0, i], want)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"ratio": float("nan")}, r"ratio must be in \[0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\)"),
        ({"ratio": 0.5, "max_downsample": 3}, "max_downsample must be 1, 2, 4 or 8"),
        ({"ratio": 0.5, "sx": 0}, "sx must be a positive integer"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        TokenMerging(**kwargs)


def test_a_network_without_attention_at_that_level_is_refused():
    sdxl = build(SDXL_TINY, from_omegaconf=True)  # attention at downsampling 2 and 4 only
    with pytest.raises(
        InputError, match="max_downsample 1 finds no transformer block in UNetModel"
    ):
        TokenMerging(0.5).check_network(sdxl)
    TokenMerging(0.5, max_downsample=2).check_network(sdxl)
