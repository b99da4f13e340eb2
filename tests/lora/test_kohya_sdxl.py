"""kohya-layout SDXL adapters (network + both text encoders) against diffusers.

Oracle: diffusers' ``load_lora_weights`` converts kohya SDXL files itself; loaded into the
pipeline that ``sgm.convert`` exports from the same tiny engine, it must give the same
network output and text embeddings as the file loaded here.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from sdxl_tiny import engine, kohya_lora, sdxl_files

from sgm.lora import fuse_lora, load_lora, lora_names, remove_lora, set_lora_scale
from sgm.lora._kohya_names import kohya_targets

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore")

from _parity import encoder_outputs, unet_outputs  # noqa: E402  (tests/convert, via sdxl_tiny)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from sgm.convert import to_diffusers

    folder = tmp_path_factory.mktemp("kohya_sdxl")
    config, ckpt = sdxl_files(folder)
    pipe_dir = to_diffusers(ckpt, config, folder / "pipe")
    targets = kohya_targets(engine(config, ckpt))
    files = {}
    for name, seed in (("a", 0), ("b", 1)):
        files[name] = folder / f"{name}.safetensors"
        save_file(kohya_lora(targets, seed=seed), files[name])
    return config, ckpt, pipe_dir, files


def _pipe(pipe_dir):
    from diffusers import StableDiffusionXLPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StableDiffusionXLPipeline.from_pretrained(pipe_dir, local_files_only=True)


def _outputs(ours, pipe):
    with torch.no_grad():
        return [unet_outputs("sdxl_base", ours, pipe)] + encoder_outputs("sdxl_base", ours, pipe)


def _close(pairs, rel=1e-4):
    for ours, theirs in pairs:
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours, theirs, atol=rel * scale, rtol=0)


def test_kohya_sdxl_file_matches_diffusers_load_lora_weights(sdxl):
    config, ckpt, pipe_dir, files = sdxl
    ours, pipe = engine(config, ckpt), _pipe(pipe_dir)
    before = _outputs(ours, pipe)
    load_lora(ours, files["a"])
    pipe.load_lora_weights(str(files["a"].parent), weight_name=files["a"].name)
    after = _outputs(ours, pipe)
    _close(after)
    for (old, _), (new, _) in zip(before, after):  # the adapter changes every output
        assert (new - old).abs().max() > 1e-2 * old.abs().max()


def test_two_files_at_their_scales_match_diffusers_set_adapters(sdxl):
    config, ckpt, pipe_dir, files = sdxl
    ours, pipe = engine(config, ckpt), _pipe(pipe_dir)
    original = {k: v.clone() for k, v in ours.state_dict().items()}
    load_lora(ours, files["a"], scale=1.0, name="a")
    load_lora(ours, files["b"], scale=0.3, name="b")
    set_lora_scale(ours, 0.6, "a")
    assert lora_names(ours) == ["a", "b"]
    for name, path in files.items():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.6, 0.3])
    _close(_outputs(ours, pipe))
    remove_lora(ours, "a")
    remove_lora(ours, "b")
    for key, value in ours.state_dict().items():  # every weight back, bit for bit
        assert torch.equal(value, original[key]), key


def test_fused_adapter_keeps_released_keys_and_outputs(sdxl):
    config, ckpt, pipe_dir, files = sdxl
    ours, pipe = engine(config, ckpt), _pipe(pipe_dir)
    keys = list(ours.state_dict())
    load_lora(ours, files["b"], scale=0.8)
    fuse_lora(ours)
    assert list(ours.state_dict()) == keys and lora_names(ours) == []
    pipe.load_lora_weights(str(files["b"].parent), weight_name=files["b"].name, adapter_name="b")
    pipe.set_adapters(["b"], adapter_weights=[0.8])
    _close(_outputs(ours, pipe))


def test_sd15_file_on_sdxl_names_the_model_it_was_made_for(sdxl, tmp_path):
    from sgm.errors import CheckpointError

    config, ckpt, _, _ = sdxl
    ours = engine(config, ckpt)
    layers = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (640, 768),
    }
    tensors = {}
    for layer, (rows, cols) in layers.items():
        tensors[f"{layer}.lora_down.weight"] = torch.zeros(4, cols)
        tensors[f"{layer}.lora_up.weight"] = torch.zeros(rows, 4)
    path = tmp_path / "sd15_style.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="sd15_style.safetensors: 1 adapter layer") as err:
        load_lora(ours, path)
    message = str(err.value)
    assert "made for SD 1.x, cross-attention width 768" in message
    assert "closest here: lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in message
    assert "+ 2 text encoders" in message


def test_bake_command_writes_the_released_keys_with_the_adapters_in(sdxl, tmp_path):
    """``lora.py bake``: same keys and dtypes as the base file; the engine loading it
    gives diffusers' outputs with both adapters at their scales."""
    from safetensors.torch import load_file

    from sgm.commands.lora import main

    config, ckpt, pipe_dir, files = sdxl
    out = tmp_path / "baked.safetensors"
    argv = ["bake", "--config", str(config), "--ckpt", str(ckpt), str(out)]
    argv += ["--lora", f"{files['a']}:0.6", "--lora", f"{files['b']}:0.3"]
    assert main(argv) == 0
    base, baked = load_file(ckpt), load_file(out)
    assert list(baked) == list(base)
    assert all(baked[k].dtype == base[k].dtype for k in base)
    pipe = _pipe(pipe_dir)
    for name, path in files.items():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.6, 0.3])
    _close(_outputs(engine(config, out), pipe))
    with pytest.raises(SystemExit) as exit_:  # the output exists: nothing is overwritten
        main(argv)
    assert exit_.value.code == 2
