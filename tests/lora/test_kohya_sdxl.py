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


def _text_adapter_engine(config, ckpt):
    """The engine with a trained-looking adapter on the network and both text encoders."""
    from sgm.lora import lora_parameters
    from sgm.lora.training import attach_lora

    ours = engine(config, ckpt)
    attach_lora(ours, {"rank": 4, "alpha": 2, "text_encoders": True})
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in lora_parameters(ours):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return ours.eval()


def test_text_encoder_adapters_train_and_only_they_change(sdxl):
    from sgm.lora import lora_parameters

    config, ckpt, _, _ = sdxl
    ours = engine(config, ckpt)
    from sgm.lora.training import attach_lora

    attach_lora(ours, {"rank": 4, "text_encoders": True})
    adapter = {id(p) for p in lora_parameters(ours)}
    trainable = [p for p in ours.parameters() if p.requires_grad]
    assert trainable and {id(p) for p in trainable} == adapter
    names = [n for n, p in ours.named_parameters() if p.requires_grad]
    for part in (
        "embedders.0.",
        "in_proj_weight.0.lora_A",
        "out_proj.parametrizations",
        "c_fc.lora_A",
    ):
        assert any(part in n for n in names), part
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.1)
    batch = {
        "txt": ["a red cube", "a dog"],
        "original_size_as_tuple": torch.tensor([[64, 64], [64, 64]]),
        "crop_coords_top_left": torch.zeros(2, 2),
        "target_size_as_tuple": torch.tensor([[64, 64], [64, 64]]),
    }
    ours.train()
    for _ in range(2):
        cond = ours.conditioner(batch)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = ours.model.diffusion_model(
            x, torch.tensor([10, 500]), cond["crossattn"], cond["vector"]
        )
        opt.zero_grad()
        (out - x).pow(2).mean().backward()
        opt.step()
    changed = {k for k, v in ours.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any("embedders.0." in k for k in changed) and any("embedders.1." in k for k in changed)


@pytest.mark.parametrize("format", ["kohya", "diffusers"])
def test_text_encoder_adapters_export_for_diffusers(sdxl, tmp_path, format):
    """Exports hold the text-encoder adapters: diffusers' load_lora_weights of the file
    gives our adapted engine's outputs."""
    from safetensors import safe_open

    from sgm.lora import save_lora

    config, ckpt, pipe_dir, _ = sdxl
    ours = _text_adapter_engine(config, ckpt)
    path = save_lora(ours, tmp_path / f"te.{format}.safetensors", format=format)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    if format == "kohya":
        assert any(k.startswith("lora_te1_") for k in keys)
        assert any(k.startswith("lora_te2_") and "_v_proj." in k for k in keys)
    else:
        assert any(k.startswith("text_encoder_2.") and ".v_proj." in k for k in keys)
    pipe = _pipe(pipe_dir)
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    _close(_outputs(ours, pipe))


@pytest.mark.parametrize("format", ["kohya", "diffusers"])
def test_text_encoder_adapters_load_back_here(sdxl, tmp_path, format):
    """Both exports, text encoders included, loaded on a fresh engine give the outputs of
    the engine that holds the adapter."""
    from sgm.lora import save_lora

    config, ckpt, pipe_dir, _ = sdxl
    ours = _text_adapter_engine(config, ckpt)
    path = save_lora(ours, tmp_path / f"te.{format}.safetensors", format=format)
    fresh = engine(config, ckpt)
    load_lora(fresh, path)
    pipe = _pipe(pipe_dir)  # only supplies the tokenizers' inputs: compare ours to ours
    _close(list(zip((a for a, _ in _outputs(fresh, pipe)), (a for a, _ in _outputs(ours, pipe)))))
