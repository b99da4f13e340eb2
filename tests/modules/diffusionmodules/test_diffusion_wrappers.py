"""OpenAIWrapper routes conditioning to the UNet; compiling keeps state-dict keys."""

import torch
from torch import nn

from sgm.modules.diffusionmodules.wrappers import (
    OPENAIUNETWRAPPER,
    IdentityWrapper,
    OpenAIWrapper,
)
from sgm.util import get_obj_from_str


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        self.seen = dict(x=x, timesteps=timesteps, context=context, y=y, **kwargs)
        return x[:, :2]


def test_openai_wrapper_routes_conditioning():
    net = Recorder()
    wrapper = OpenAIWrapper(net)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([1.0, 2.0])
    c = {
        "concat": torch.ones(2, 3, 3, 3),
        "crossattn": torch.ones(2, 7, 8),
        "vector": torch.ones(2, 5),
    }
    out = wrapper(x, t, c, num_video_frames=14)
    assert net.seen["x"].shape == (2, 7, 3, 3)
    assert torch.equal(net.seen["x"][:, :4], x) and torch.all(net.seen["x"][:, 4:] == 1)
    assert net.seen["timesteps"] is t and net.seen["context"] is c["crossattn"]
    assert net.seen["y"] is c["vector"] and net.seen["num_video_frames"] == 14
    assert "cond_view" not in net.seen and torch.equal(out, x[:, :2])


def test_openai_wrapper_without_concat_and_with_views():
    net = Recorder()
    x = torch.randn(1, 4, 2, 2)
    OpenAIWrapper(net)(x, torch.ones(1), {"cond_view": torch.zeros(1, 4, 2, 2)})
    assert net.seen["x"] is x and net.seen["context"] is None and net.seen["y"] is None
    assert torch.equal(net.seen["cond_view"], torch.zeros(1, 4, 2, 2))
    assert net.seen["cond_motion"] is None


def test_identity_wrapper_and_compile_keep_keys():
    plain = IdentityWrapper(Recorder())
    compiled = IdentityWrapper(Recorder(), compile_model=True)
    assert list(plain.state_dict()) == [
        "diffusion_model.proj.weight",
        "diffusion_model.proj.bias",
    ]
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert get_obj_from_str(OPENAIUNETWRAPPER) is OpenAIWrapper
    x = torch.randn(3, 2)
    assert torch.equal(plain(x), x)
