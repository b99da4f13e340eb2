"""Adapters between the denoiser's ``network(x, c_noise, cond)`` call and the UNets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

OPENAIUNETWRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"


def compile_network(network: nn.Module, *, freeze: bool = False) -> nn.Module:
    """``torch.compile`` the network's ``forward`` in place and return the network.

    The module itself stays in the tree, so its state-dict keys do not change (wrapping
    it in ``torch.compile(network)`` would add ``_orig_mod.``). ``nn.Module.compile``
    is not used: it compiles ``Module._call_impl``, a frame TorchDynamo skips, so with
    current torch nothing would be compiled. Compilation happens at the first call.

    ``freeze`` (for inference): calls without autograd compile with Inductor's
    ``freezing``, which folds the weights into the graph as constants and lays them out
    once for the backend's kernels (oneDNN's packed layouts on a CPU); calls with
    autograd compile as usual. The weights are checked before every call: when one was
    replaced or changed in place (``load_state_dict``, merging an adapter), compiled
    graphs are dropped and the next call compiles again, so stale weights never run.
    """
    if not freeze:
        network.forward = torch.compile(network.forward)
        return network
    network.forward = _FrozenForward(network)
    return network


class _FrozenForward:
    """``network.forward`` compiled with Inductor's freezing and guarded against weight
    changes (see :func:`compile_network`)."""

    def __init__(self, network: nn.Module) -> None:
        self._network = network
        # Inductor reads ``freezing`` from its config while it compiles, which happens
        # inside a call (``torch.compile(options=...)`` does not reach that point).
        self._compiled = torch.compile(network.forward)
        self._weights = None

    def _fingerprint(self) -> tuple:
        tensors = [*self._network.parameters(), *self._network.buffers()]
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return self._compiled(*args, **kwargs)
        import torch._dynamo as dynamo
        from torch._inductor import config as inductor_config

        weights = self._fingerprint()
        if self._weights is not None and weights != self._weights:
            dynamo.reset()  # frozen graphs hold the old values: compile again
        self._weights = weights
        with inductor_config.patch(freezing=True):
            return self._compiled(*args, **kwargs)


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
