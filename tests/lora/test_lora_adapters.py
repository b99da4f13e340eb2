"""LoRA adapters on the UNet: scale, merge, files, and diffusers reading our files."""

import json

import pytest
import torch
from lora_tiny import OTHER_UNET, UNET, to_diffusers, unet, unet_inputs
from safetensors import safe_open
from safetensors.torch import save_file

from sgm.errors import CheckpointError, ConfigError
from sgm.lora import (
    add_lora,
    apply_lora_specs,
    load_lora,
    lora_parameters,
    merge,
    save_lora,
    set_lora_scale,
    unmerge,
)


def train_adapter(net, steps=8, seed=3, context_dim=24, **config):
    """A few Adam steps pulling the output towards a fixed random target."""
    add_lora(net, {"rank": 4, "alpha": 8, **config})
    params = lora_parameters(net)
    assert params and all(p.requires_grad for p in params)
    opt = torch.optim.Adam(params, lr=3e-2)
    x, t, context = unet_inputs(context_dim=context_dim)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x, t, context=context) - target).pow(2).mean()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return net.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    net = train_adapter(unet())
    path = save_lora(net, tmp_path_factory.mktemp("lora") / "tiny.lora.safetensors")
    return net, path


def out(net):
    x, t, context = unet_inputs()
    with torch.no_grad():
        return net(x, t, context=context)


def assert_differs(a, b, at_least):
    diff = (a - b).abs().max().item()
    assert diff > at_least, f"outputs differ by only {diff:.3g}"


def test_saved_adapter_is_small_and_only_adapter_keys(trained):
    net, path = trained
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        header = f.metadata()
    assert keys and all(
        k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    )
    # 7 transformers (2 down, 1 middle, 4 up) x 2 attentions x 4 projections, A and B each
    assert len(keys) == 7 * 2 * 4 * 2
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    base_bytes = sum(p.numel() * 4 for n, p in unet().named_parameters())
    assert path.stat().st_size < 0.1 * base_bytes
    meta = json.loads(header["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 4  # alpha/rank folded into B
    assert json.loads(header["sgm_lora"])["trained_alpha"] == 8


def test_loads_back_into_a_fresh_network(trained):
    net, path = trained
    fresh = unet()
    name = load_lora(fresh, path)
    assert name == "lora0"
    assert torch.equal(out(fresh), out(net))


def test_scale_zero_is_the_base_model_and_scale_one_differs(trained):
    _, path = trained
    base = out(unet())
    net = unet()
    load_lora(net, path, scale=0.0)
    assert torch.equal(out(net), base)
    set_lora_scale(net, 1.0)
    assert_differs(out(net), base, 1e-2)
    half = unet()
    load_lora(half, path, scale=0.5)
    # the adapter's contribution is linear in its scale only for a single layer, so check
    # the ordering: half-way output lies strictly between base and full strength
    assert 0 < (out(half) - base).abs().max() < (out(net) - base).abs().max()


def test_merged_equals_unmerged(trained):
    net, path = trained
    unmerged = out(net)
    merge(net)
    merged = out(net)
    unmerge(net)
    assert (merged - unmerged).abs().max().item() <= 1e-5 * max(unmerged.abs().max().item(), 1)
    assert torch.allclose(out(net), unmerged, atol=1e-6)


def test_diffusers_reads_our_file_and_gives_our_output(trained):
    net, path = trained
    theirs = to_diffusers(unet(), UNET)
    theirs.load_lora_adapter(str(path), prefix="unet", adapter_name="ours")
    x, t, context = unet_inputs()
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context).sample
        base = to_diffusers(unet(), UNET)(x, t, encoder_hidden_states=context).sample
    ours = out(net)
    assert_differs(ours, base, 1e-2)  # the adapter matters, so the comparison is not vacuous
    assert (ours - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("pipeline", ["StableDiffusionPipeline", "StableDiffusionXLPipeline"])
def test_diffusers_load_lora_weights_path_reads_our_file(trained, pipeline):
    """What ``pipe.load_lora_weights(path)`` runs: ``lora_state_dict`` + ``load_lora_into_unet``."""
    import diffusers

    net, path = trained
    cls = getattr(diffusers, pipeline)
    state_dict, alphas = cls.lora_state_dict(str(path))
    theirs = to_diffusers(unet(), UNET)
    cls.load_lora_into_unet(state_dict, alphas, unet=theirs)
    x, t, context = unet_inputs()
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context).sample
    assert (out(net) - expected).abs().max().item() <= 1e-4


def test_two_adapters_add_up_and_all_files_are_checked_first(trained, tmp_path):
    net, path = trained
    base = out(unet())
    two = unet()
    assert apply_lora_specs(two, [(path, 0.5), (path, 0.5)]) == ["lora0", "lora1"]
    assert torch.allclose(out(two), out(net), atol=1e-5)
    one_by_one = unet()
    assert [load_lora(one_by_one, path, 0.25) for _ in range(4)] == [f"lora{i}" for i in range(4)]
    assert torch.allclose(out(one_by_one), out(net), atol=1e-5)
    bad = tmp_path / "other.lora.safetensors"
    save_lora(train_adapter(unet(OTHER_UNET), steps=1, context_dim=40), bad)
    target = unet()
    with pytest.raises(CheckpointError):
        apply_lora_specs(target, [(path, 1.0), (bad, 1.0)])
    assert torch.equal(out(target), base)  # nothing was applied


def test_file_for_another_network_names_key_and_network(trained, tmp_path):
    _, path = trained
    with pytest.raises(CheckpointError, match=r"attn2\.to_k.*context_dim=24") as err:
        load_lora(unet(OTHER_UNET), path)
    assert "context_dim=40" in str(err.value)
    foreign = tmp_path / "foreign.lora.safetensors"
    save_file(
        {
            "unet.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
            "unet.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4),
        },
        str(foreign),
    )
    with pytest.raises(
        CheckpointError,
        match=r"'unet\.transformer_blocks\.0\.attn\.to_q\.lora_A"
        r"\.weight' matches no layer of this UNetModel",
    ):
        load_lora(unet(), foreign)
    full = tmp_path / "full.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(1)}, str(full))
    with pytest.raises(CheckpointError, match="is not a LoRA weight"):
        load_lora(unet(), full)


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(rank):
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        add_lora(unet(), {"rank": rank})


def test_patterns_matching_nothing_list_what_could_match():
    with pytest.raises(ConfigError, match="'to_query' matches no Linear/Conv layer") as err:
        add_lora(unet(), {"rank": 2, "target_modules": ["to_q", "to_query"]})
    for name in ("attn1.to_q", "to_out.0", "proj_in", "ff.net.2"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="unknown keys"):
        add_lora(unet(), {"rank": 2, "targets": ["to_q"]})


def test_patterns_are_suffixes_or_regexes():
    net = unet()
    names = add_lora(net, {"rank": 2, "target_modules": ["attn2.to_k", r".*\.proj_in"]})
    assert names[0] == "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    assert sum(n.endswith(".transformer_blocks.0.attn2.to_k") for n in names) == 7
    assert sum(n.endswith(".1.proj_in") for n in names) == 7 and len(names) == 14


SDXL_TINY = dict(  # sd_xl_base structure: no attention at the first level, deeper last level
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=[1, 1, 2],
    context_dim=2048,
    num_classes="sequential",
    adm_in_channels=64 + 6 * 256,
)


def test_sdxl_structured_adapter_reads_in_diffusers(tmp_path):
    from sgm.modules.diffusionmodules.util import timestep_embedding

    net = unet(SDXL_TINY)
    add_lora(
        net,
        {
            "rank": 2,
            "alpha": 1,
            "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "proj_in"],
        },
    )
    with torch.no_grad():
        for p in lora_parameters(net):
            p.normal_(0, 0.2)
    path = save_lora(net, tmp_path / "sdxl.lora.safetensors")
    theirs = to_diffusers(unet(SDXL_TINY), SDXL_TINY)
    theirs.load_lora_adapter(str(path), prefix="unet")
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([20.0, 600.0])
    context = torch.randn(2, 3, 2048, generator=g)
    text_embeds = torch.randn(2, 64, generator=g)
    time_ids = torch.tensor([[512.0, 512, 0, 0, 512, 512], [768, 1024, 8, 16, 512, 512]])
    y = torch.cat([text_embeds, timestep_embedding(time_ids.flatten(), 256).reshape(2, -1)], 1)
    with torch.no_grad():
        ours = net(x, t, context=context, y=y)
        expected = theirs(
            x,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
        ).sample
        base = unet(SDXL_TINY)(x, t, context=context, y=y)
    assert_differs(ours, base, 1e-2)
    assert (ours - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_bf16_network_takes_the_adapter_in_its_dtype(trained):
    """Half-precision inference (as on a GPU): adapters follow the base layers' dtype."""
    net, path = trained
    low = unet().to(torch.bfloat16)
    load_lora(low, path)
    assert {p.dtype for p in lora_parameters(low)} == {torch.bfloat16}
    x, t, context = unet_inputs()
    with torch.no_grad():
        got = low(x.bfloat16(), t, context=context.bfloat16()).float()
    expected = out(net)
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    assert_differs(got, out(unet()), 0.1)  # and the adapter does act
