"""kohya-layout SD 2.x adapters: network layers under diffusers' module names and the
open_clip text encoder under ``lora_te_`` (q/k/v into the fused in_proj), against
diffusers' ``load_lora_weights`` on the pipeline ``sgm.convert`` exports."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from sdxl_tiny import engine, kohya_lora, sdxl_files

from sgm.lora import load_lora
from sgm.lora._names import diffusers_module_names, network_of

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore")

from _parity import encoder_outputs, unet_outputs  # noqa: E402  (tests/convert)


@pytest.mark.slow
def test_sd21_kohya_file_with_diffusers_names_matches_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    from sgm.convert import to_diffusers
    from sgm.lora._kohya_names import kohya_targets

    config, ckpt = sdxl_files(tmp_path, "sd21")
    pipe_dir = to_diffusers(ckpt, config, tmp_path / "pipe")
    ours = engine(config, ckpt)
    names = diffusers_module_names(network_of(ours))
    targets = {}
    for layer, target in kohya_targets(ours).items():
        if layer.startswith("lora_te1_"):  # an alias of lora_te_ with one text encoder
            continue
        if layer.startswith("lora_unet_"):  # kohya's SD 2.x files: diffusers' names
            module = target.name[len("model.diffusion_model.") :]
            layer = "lora_unet_" + names[module].replace(".", "_")
        targets[layer] = target
    assert any(k.startswith("lora_te_") and k.endswith("_v_proj") for k in targets)
    path = tmp_path / "sd2.safetensors"
    save_file(kohya_lora(targets, seed=0), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
    load_lora(ours, path)
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    with torch.no_grad():
        pairs = [unet_outputs("sd21", ours, pipe)] + encoder_outputs("sd21", ours, pipe)
    for got, expected in pairs:
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=0)
