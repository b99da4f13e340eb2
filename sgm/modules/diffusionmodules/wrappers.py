"""Adapters between the denoiser's ``network(x, c_noise, cond)`` call and the UNets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

OPENAIUNETWRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"


def compile_network(network: nn.Module) -> nn.Module:
    """``torch.compile`` the network's ``forward`` in place and return the network.

    The module itself stays in the tree, so its state-dict keys do not change (wrapping
    it in ``torch.compile(network)`` would add ``_orig_mod.``). ``nn.Module.compile``
    is not used: it compiles ``Module._call_impl``, a frame TorchDynamo skips, so with
    current torch nothing would be compiled. Compilation happens at the first call.
    """
    network.forward = torch.compile(network.forward)
    return network


class IdentityWrapper(nn.Module):
    """Calls ``diffusion_model`` unchanged; ``compile_model`` compiles its forward in
    place (:func:`compile_network`), keeping the ``diffusion_model.*`` state-dict keys.
    """

    def __init__(self, diffusion_model: nn.Module, compile_model: bool = False) -> None:
        super().__init__()
        if compile_model:
            compile_network(diffusion_model)
        self.diffusion_model = diffusion_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.diffusion_model(*args, **kwargs)


class OpenAIWrapper(IdentityWrapper):
    """Routes conditioning to a UNet.

    ``concat`` joins the input channels, ``crossattn`` becomes ``context``, ``vector``
    becomes ``y``; ``cond_view`` and ``cond_motion`` pass through by name.
    """

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: Mapping[str, Any], **kwargs: Any
    ) -> torch.Tensor:
        if "concat" in c:
            x = torch.cat((x, c["concat"]), dim=1)
        if "cond_view" in c:
            kwargs["cond_view"] = c.get("cond_view")
            kwargs["cond_motion"] = c.get("cond_motion")
        return self.diffusion_model(
            x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs
        )
