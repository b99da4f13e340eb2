"""Tiny random-weight stand-ins for the released models, to try every command line and
demo page without the released weights::

    from sgm.inference.tiny_models import write_tiny_release

    config, ckpt = write_tiny_release("sdxl_base_1.0", "tiny")
    # tiny/sdxl_base_1.0.yaml, tiny/sd_xl_base_1.0.safetensors, tiny/clip_text/,
    # tiny/open_clip.json, and tiny/configs/sd_xl_base.yaml for the demo pages:
    #   streamlit run scripts/demo/sampling.py -- --checkpoints tiny --configs tiny/configs

The config is the release's own config with every width shrunk (same targets, denoiser,
conditioner keys, sampler and guider; networks 32 channels and two levels deep,
autoencoders 32 channels with the release's downsampling factor). Its text encoders are
read from local files written beside it: a CLIP text model folder (Hugging Face layout,
architecture only; CLIP's tokenizer is built offline) and an open_clip model config file
that the open_clip embedders take as ``arch``. The checkpoint holds the whole engine
(random weights, its zero-initialised output layers redrawn so samples are not constant)
under the release's file name, so ``--checkpoints tiny/`` finds it too. Paths inside the
config are absolute: keep the folder where it was written.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from .releases import Release, config_path, get_release

WIDTH = 32  # channels of the tiny networks, autoencoders and text encoders
CLIP_FOLDER = "clip_text"
OPEN_CLIP_FILE = "open_clip.json"
# ConcatTimestepEmbedderND widths shrink by this factor (256 -> 8, 512 -> 16).
_VECTOR_SHRINK = 32
_ENCODERS = "sgm.modules.encoders."
_TEXT = _ENCODERS + "modules."
_CLIP = _TEXT + "FrozenCLIPEmbedder"
_OPEN_CLIP_TEXT = (_TEXT + "FrozenOpenCLIPEmbedder", _TEXT + "FrozenOpenCLIPEmbedder2")
_OPEN_CLIP_IMAGE = _TEXT + "FrozenOpenCLIPImageEmbedder"
_CROSSATTN = (_CLIP, *_OPEN_CLIP_TEXT, _TEXT + "FrozenOpenCLIPImagePredictionEmbedder")
_NETWORKS = {
    "sgm.modules.diffusionmodules.openaimodel.UNetModel",
    "sgm.modules.diffusionmodules.video_model.VideoUNet",
    "sgm.modules.diffusionmodules.video_model.SpatialUNetModelWithTime",
}

# open_clip architecture of the tiny towers (text: 2 blocks, so "penultimate" exists).
OPEN_CLIP_ARCH = {
    "embed_dim": WIDTH,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": WIDTH,
        "heads": 2,
        "layers": 2,
    },
}


def clip_text_config() -> Any:
    """transformers' ``CLIPTextConfig`` of the tiny CLIP text model: CLIP's vocabulary and
    token ids, ``WIDTH`` wide and 12 blocks deep (CLIP-L's depth, so the released
    configs' ``layer_idx`` holds)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=12,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=WIDTH,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def tiny_config(release: str | Release, folder: str | os.PathLike) -> Any:
    """The release's config shrunk (an ``OmegaConf`` config, interpolations kept), its
    text encoders read from ``folder`` (absolute paths)."""
    from omegaconf import OmegaConf

    release = get_release(release)
    folder = Path(folder).resolve()
    tree = OmegaConf.to_container(OmegaConf.load(config_path(release)), resolve=False)
    model = tree["model"]
    params = model.setdefault("params", {})
    if "ckpt_path" in params:
        params["ckpt_path"] = None
    embedders = params.get("conditioner_config", {}).get("params", {}).get("emb_models", [])
    pooled = _pooled_widths(embedders)
    crossattn = sum(1 for e in embedders if e.get("target") in _CROSSATTN)
    vectors: list[dict] = []
    _shrink(tree, folder, vectors)
    released_widths = [v["outdim"] for v in vectors]
    for vector in vectors:
        vector["outdim"] = max(vector["outdim"] // _VECTOR_SHRINK, 2)
    network = params["network_config"]["params"]
    if network.get("adm_in_channels") is not None:
        old, new = pooled
        if network.get("use_camera_emb"):  # the vector is the view embedding: 4 x channels
            for vector, width in zip(vectors, released_widths):
                vector["outdim"] = width
            _share_out(vectors, network["adm_in_channels"] - old, 4 * WIDTH - new)
            network["adm_in_channels"] = 4 * WIDTH
        else:
            network["adm_in_channels"] = (network["adm_in_channels"] - old) // _VECTOR_SHRINK + new
    if network.get("context_dim") is not None:
        network["context_dim"] = WIDTH * max(crossattn, 1)
    return OmegaConf.create(tree)


def _pooled_widths(embedders: list) -> tuple[int, int]:
    """(released, tiny) widths of the pooled text vectors in the network's vector input."""
    for embedder in embedders:
        p = embedder.get("params") or {}
        if embedder.get("target") in _OPEN_CLIP_TEXT and p.get("always_return_pooled"):
            from open_clip.factory import get_model_config

            return get_model_config(p.get("arch", "ViT-H-14"))["embed_dim"], WIDTH
    return 0, 0


def _share_out(vectors: list[dict], released: int, tiny: int) -> None:
    """Give the vector embedders even widths in proportion to their released ones, summing
    to ``tiny`` (their released widths sum to ``released``)."""
    widths = [v["outdim"] for v in vectors]
    if sum(widths) != released:
        raise ConfigError(f"vector embedders of {sum(widths)} channels, expected {released}")
    for vector, width in zip(vectors[:-1], widths[:-1]):
        vector["outdim"] = 2 * round(width * tiny / released / 2)
        tiny -= vector["outdim"]
    vectors[-1]["outdim"] = tiny


def _shrink(node: Any, folder: Path, vectors: list[dict]) -> None:
    if isinstance(node, list):
        for item in node:
            _shrink(item, folder, vectors)
        return
    if not isinstance(node, dict):
        return
    target, params = node.get("target"), node.get("params")
    if isinstance(params, dict):
        if target in _NETWORKS:
            _shrink_network(params)
        elif target == _CLIP:
            params["version"] = str(folder / CLIP_FOLDER)
        elif target in (*_OPEN_CLIP_TEXT, _OPEN_CLIP_IMAGE):
            params["arch"] = str(folder / OPEN_CLIP_FILE)
            params["version"] = None
        elif target == _TEXT + "ConcatTimestepEmbedderND":
            vectors.append(params)
    if "ch_mult" in node and "ch" in node:  # an autoencoder's encoder or decoder
        node.update(ch=WIDTH, num_res_blocks=1, ch_mult=[1] * len(node["ch_mult"]))
    for value in node.values():
        _shrink(value, folder, vectors)


def _shrink_network(params: dict) -> None:
    attention = [r for r in params.get("attention_resolutions", []) if r <= 2] or [2]
    params.update(
        model_channels=WIDTH,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=attention,
        num_head_channels=WIDTH // 2,
        transformer_depth=1,
    )
    for key in ("transformer_depth_middle", "num_heads"):
        params.pop(key, None)


def write_text_encoders(folder: str | os.PathLike) -> None:
    """The tiny CLIP text model folder and open_clip architecture file in ``folder``."""
    folder = Path(folder)
    clip_text_config().save_pretrained(folder / CLIP_FOLDER)
    (folder / OPEN_CLIP_FILE).write_text(json.dumps(OPEN_CLIP_ARCH, indent=2) + "\n")


def tiny_paths(release: str | Release, folder: str | os.PathLike) -> tuple[Path, Path]:
    """(config, checkpoint) paths the tiny model of ``release`` has in ``folder``."""
    release = get_release(release)
    return Path(folder) / f"{release.name}.yaml", Path(folder) / release.ckpt


def write_tiny_release(
    release: str | Release, folder: str | os.PathLike, seed: int = 0, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write the tiny model of ``release`` into ``folder``: ``<release name>.yaml``, the
    checkpoint under the release's file name, and the text encoders' files; returns
    (config path, checkpoint path). Weights are drawn from ``seed``. An existing config
    or checkpoint is an ``InputError`` unless ``overwrite``."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from ..output_files import write_new_file
    from ..util import instantiate_from_config

    release = get_release(release)
    folder = Path(folder)
    config_file, ckpt_file = tiny_paths(release, folder)
    if not overwrite:
        for path in (config_file, ckpt_file):
            if path.exists() or path.is_symlink():
                raise InputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_encoders(folder)
    config = tiny_config(release, folder)
    model_config = copy.deepcopy(config.model)
    model_config.params.pop("sampler_config", None)  # not weights; its guider wants frames
    torch.manual_seed(seed)
    engine = instantiate_from_config(model_config)
    _wake_zero_weights(engine.model)
    state = {k: v.detach().contiguous() for k, v in engine.state_dict().items()}
    write_new_file(lambda tmp: save_file(state, tmp), [ckpt_file], overwrite=True)
    text = OmegaConf.to_yaml(config)
    header = (
        f"# A tiny random-weight {release.name} (sgm.inference.tiny_models): the release's\n"
        f"# config at toy widths; weights: {ckpt_file.name}\n"
    )
    for path in (config_file, demo_config_path(release, folder)):
        write_new_file(
            lambda tmp: Path(tmp).write_text(header + text, encoding="utf-8"),
            [path],
            overwrite=True,
        )
    return config_file, ckpt_file


def demo_config_path(release: str | Release, folder: str | os.PathLike) -> Path:
    """The copy of the tiny config under the released config's file name, in
    ``<folder>/configs``: the demo pages' ``--configs`` folder (releases that share a
    config share its tiny version too)."""
    return Path(folder) / "configs" / Path(get_release(release).config).name


def _wake_zero_weights(network: Any) -> None:
    """Redraw the network's zero-initialised matrices (its output layers) Kaiming-uniform,
    so a random model does not predict exactly zero."""
    import torch

    with torch.no_grad():
        for param in network.parameters():
            if param.dim() > 1 and not param.any():
                torch.nn.init.kaiming_uniform_(param, a=5**0.5)
