"""``sgm.modules.layers.Conv3d``: torch's ``nn.Conv3d`` with the same weights is the oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgm.modules.layers import Conv3d, conv_nd


@pytest.mark.parametrize(
    "kernel,padding,bias,shape",
    [
        ((3, 1, 1), (1, 0, 0), True, (2, 6, 5, 4, 3)),  # time-only: the 2-D path
        ((5, 1, 1), (2, 0, 0), False, (1, 4, 7, 2, 5)),
        ((3, 1, 1), (0, 0, 0), True, (1, 4, 6, 3, 3)),  # no time padding: fewer frames out
        ((3, 3, 3), (1, 1, 1), True, (1, 4, 5, 6, 6)),  # spatial kernel: torch's own path
        (3, 1, True, (1, 4, 5, 6, 6)),
        ((3, 1, 1), "same", True, (1, 4, 5, 3, 3)),
    ],
)
def test_same_output_and_keys_as_torch(kernel, padding, bias, shape):
    torch.manual_seed(0)
    ours = Conv3d(shape[1], 8, kernel, padding=padding, bias=bias)
    theirs = nn.Conv3d(shape[1], 8, kernel, padding=padding, bias=bias)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(shape)
    expected = theirs(x)
    out = ours(x)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # gradients flow to the same parameters
    expected.sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)


def test_conv_nd_builds_it_and_it_is_still_a_conv3d():
    conv = conv_nd(3, 4, 4, (3, 1, 1), padding=(1, 0, 0))
    assert type(conv) is Conv3d and isinstance(conv, nn.Conv3d)
    assert conv._time_only
    assert not conv_nd(3, 4, 4, (3, 1, 1), padding=(1, 0, 0), stride=(2, 1, 1))._time_only
