"""LPIPS perceptual distance (Zhang et al., 2018) with a VGG16 backbone.

Nothing is downloaded. Pretrained weights come from local files:

* the linear heads ``vgg.pth`` (md5 ``d507d7349b931f0638a25a48a722f98a``, keys
  ``lin{0..4}.model.1.weight``): ``weights_path=`` or ``$SGM_LPIPS_WEIGHTS``; if
  neither is set, the copy shipped inside the ``lpips`` pip package is used when
  that package is installed. A file holding a full LPIPS state dict (``net.*`` and
  ``lin*``) also works and then needs nothing else.
* the VGG16 ImageNet backbone, torchvision's ``vgg16-397923af.pth`` (keys
  ``features.N.*``): ``vgg_weights_path=`` or ``$SGM_LPIPS_VGG16_WEIGHTS``, else
  ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` if it exists.

``pretrained=False`` builds random weights (for tests).
"""

from __future__ import annotations

import importlib.util
import os
from collections import namedtuple
from pathlib import Path

import torch
from torch import nn

from .....checkpoint import load_state_dict
from .....errors import CheckpointError

WEIGHTS_ENV = "SGM_LPIPS_WEIGHTS"
VGG_WEIGHTS_ENV = "SGM_LPIPS_VGG16_WEIGHTS"
VGG16_FILE = "vgg16-397923af.pth"
LIN_FILE = "vgg.pth"

# VGG16 feature indices ending each of the five LPIPS slices (relu1_2 ... relu5_3).
_SLICE_ENDS = (4, 9, 16, 23, 30)

VggOutputs = namedtuple("VggOutputs", ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"])


class vgg16(nn.Module):
    """VGG16 feature extractor cut into the five LPIPS slices (architecture only)."""

    def __init__(self, requires_grad: bool = False, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError(
                "vgg16(pretrained=True) would download weights; build it with "
                "pretrained=False and load a local file (see LPIPS)"
            )
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"], batch_norm=False)
        self.N_slices = 5
        start = 0
        for i, end in enumerate(_SLICE_ENDS, 1):
            block = nn.Sequential()
            for x in range(start, end):
                block.add_module(str(x), features[x])
            setattr(self, f"slice{i}", block)
            start = end
        if not requires_grad:
            for param in self.parameters():
                param.requires_grad = False

    def forward(self, X: torch.Tensor) -> VggOutputs:
        outs = []
        h = X
        for i in range(1, self.N_slices + 1):
            h = getattr(self, f"slice{i}")(h)
            outs.append(h)
        return VggOutputs(*outs)


class ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the normalisation the LPIPS VGG heads were trained with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return (inp - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """A 1x1 convolution (optionally after dropout) weighting feature differences."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False):
        super().__init__()
        layers = [nn.Dropout()] if use_dropout else []
        layers += [nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False)]
        self.model = nn.Sequential(*layers)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise along channels."""
    norm_factor = torch.sqrt(torch.sum(x**2, dim=1, keepdim=True))
    return x / (norm_factor + eps)


def spatial_average(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """Mean over height and width."""
    return x.mean([2, 3], keepdim=keepdim)


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1]: (B,3,H,W)x2 -> (B,1,1,1)."""

    def __init__(
        self,
        use_dropout: bool = True,
        pretrained: bool = True,
        weights_path: str | os.PathLike | None = None,
        vgg_weights_path: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = [64, 128, 256, 512, 512]
        self.net = vgg16(pretrained=False, requires_grad=False)
        for i, chn in enumerate(self.chns):
            setattr(self, f"lin{i}", NetLinLayer(chn, use_dropout=use_dropout))
        if pretrained:
            self.load_from_pretrained(weights_path, vgg_weights_path)
        for param in self.parameters():
            param.requires_grad = False

    def load_from_pretrained(
        self,
        weights_path: str | os.PathLike | None = None,
        vgg_weights_path: str | os.PathLike | None = None,
    ) -> None:
        """Load heads and backbone from local files (see the module docstring)."""
        lin_file = _find_lin_weights(weights_path)
        state = {k: v for k, v in load_state_dict(lin_file).items() if k in self.state_dict()}
        if not any(k.startswith("net.") for k in state):
            vgg_file = _find_vgg_weights(vgg_weights_path, lin_file)
            state.update(vgg_features_to_lpips(load_state_dict(vgg_file)))
        state.update({f"scaling_layer.{k}": v for k, v in self.scaling_layer.state_dict().items()})
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise CheckpointError(
                f"LPIPS weights incomplete: {len(missing)} keys missing (e.g. {missing[0]!r}) "
                f"after reading {lin_file}"
            )
        self.load_state_dict(state, strict=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outs0 = self.net(self.scaling_layer(input))
        outs1 = self.net(self.scaling_layer(target))
        val = 0
        for kk in range(len(self.chns)):
            diff = (normalize_tensor(outs0[kk]) - normalize_tensor(outs1[kk])) ** 2
            val = val + spatial_average(getattr(self, f"lin{kk}").model(diff), keepdim=True)
        return val


def vgg_features_to_lpips(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG16 keys ``features.N.*`` -> LPIPS ``net.sliceK.N.*``."""
    out = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        slice_id = next(i for i, end in enumerate(_SLICE_ENDS, 1) if index < end)
        out[f"net.slice{slice_id}.{key[len('features.') :]}"] = value
    return out


def _missing(what: str, file: str, env: str, extra: str = "") -> CheckpointError:
    return CheckpointError(
        f"LPIPS needs {what} ({file}) and none was found locally: pass its path "
        f"or set ${env}{extra}. Nothing is downloaded; for random weights (tests) "
        "build LPIPS(pretrained=False)."
    )


def _find_lin_weights(path) -> Path:
    path = path or os.environ.get(WEIGHTS_ENV)
    if path:
        return Path(path)
    if importlib.util.find_spec("lpips") is not None:
        shipped = Path(importlib.util.find_spec("lpips").origin).parent / "weights/v0.1/vgg.pth"
        if shipped.is_file():
            return shipped
    raise _missing(
        "its linear-head weights",
        f"{LIN_FILE}, md5 d507d7349b931f0638a25a48a722f98a",
        WEIGHTS_ENV,
        " (the `lpips` pip package ships this file)",
    )


def _find_vgg_weights(path, lin_file: Path) -> Path:
    path = path or os.environ.get(VGG_WEIGHTS_ENV)
    if path:
        return Path(path)
    torch_home = os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch"))
    cached = Path(torch_home) / "hub" / "checkpoints" / VGG16_FILE
    if cached.is_file():
        return cached
    raise _missing(
        f"the VGG16 ImageNet backbone ({lin_file} holds only the linear heads)",
        f"torchvision's {VGG16_FILE}",
        VGG_WEIGHTS_ENV,
    )
