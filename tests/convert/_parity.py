"""Same inputs through an sgm engine and a diffusers pipeline: per component outputs.

Every comparison is ``(ours, theirs)``; a test asserts they agree within 1e-5 of the
output scale (``close``).
"""

from __future__ import annotations

import torch

from sgm.modules.diffusionmodules.util import timestep_embedding

PROMPTS = ["a red cube on a table", "x"]
# family -> (context width, pooled width, number of size/score ids, id embedding width)
UNET_INPUTS = {
    "sd21": (64, 0, 0, 0),
    "sdxl_base": (96, 48, 6, 8),
    "sdxl_refiner": (64, 48, 5, 8),
    "svd": (32, 0, 3, 256),
}


def close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(theirs.abs().max())
    assert scale > 1e-3, "a trivial output proves nothing"
    torch.testing.assert_close(ours, theirs, atol=rel * scale, rtol=0)


def _ids(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1024, (2, n), generator=gen).float()


def unet_outputs(family: str, engine, pipe, frames: int = 3):
    ctx_dim, pooled_dim, n_ids, id_dim = UNET_INPUTS[family]
    gen = torch.Generator().manual_seed(7)
    ours = engine.model.diffusion_model
    if family == "svd":
        x = torch.randn(2, frames, 8, 8, 8, generator=gen)
        t = torch.tensor([3.7, 811.0])
        ctx = torch.randn(2, 1, ctx_dim, generator=gen)
        ids = torch.tensor([[6.0, 127.0, 0.02], [24.0, 30.0, 0.5]])
        y = timestep_embedding(ids.flatten(), id_dim).reshape(2, -1)
        theirs = pipe.unet(x, t, ctx, ids).sample
        got = ours(
            x.flatten(0, 1),
            t.repeat_interleave(frames),
            context=ctx.repeat_interleave(frames, dim=0),
            y=y.repeat_interleave(frames, dim=0),
            num_video_frames=frames,
            image_only_indicator=torch.zeros(2, frames),
        )
        return got.reshape(theirs.shape), theirs
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10.0, 901.0])
    ctx = torch.randn(2, 77, ctx_dim, generator=gen)
    if not pooled_dim:
        return ours(x, timesteps=t, context=ctx), pipe.unet(x, t, ctx).sample
    pooled = torch.randn(2, pooled_dim, generator=gen)
    ids = _ids(n_ids, gen)
    y = torch.cat([pooled, timestep_embedding(ids.flatten(), id_dim).reshape(2, -1)], dim=1)
    added = {"text_embeds": pooled, "time_ids": ids}
    theirs = pipe.unet(x, t, ctx, added_cond_kwargs=added).sample
    return ours(x, timesteps=t, context=ctx, y=y), theirs


def vae_outputs(family: str, engine, pipe, frames: int = 3):
    """(ours, theirs) for the encoder's Gaussian moments and for decoding."""
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(2 * (frames if family == "svd" else 1), 3, 32, 32, generator=gen) * 2 - 1
    z = torch.randn(x.shape[0], 4, 8, 8, generator=gen)
    theirs_moments = pipe.vae.encode(x).latent_dist.parameters
    if family == "svd":
        encoder = engine.conditioner.embedders[3].encoder
        ours_moments = encoder.encode(x, unregularized=True)[0]
        decoded = (
            engine.first_stage_model.decode(z, timesteps=frames),
            pipe.vae.decode(z, num_frames=frames).sample,
        )
    else:
        ours_moments = engine.first_stage_model.encode(x, unregularized=True)[0]
        decoded = engine.first_stage_model.decode(z), pipe.vae.decode(z).sample
    return [(ours_moments, theirs_moments), decoded]


def _tokens(tokenizer) -> torch.Tensor:
    return tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


def encoder_outputs(family: str, engine, pipe):
    """(ours, theirs) pairs for the text encoders (hidden states the UNet reads, pooled
    outputs) or the image encoder's embedding."""
    embedders = engine.conditioner.embedders
    if family == "svd":
        gen = torch.Generator().manual_seed(9)
        pixels = torch.randn(2, 3, 224, 224, generator=gen)
        ours = embedders[0].open_clip.model.visual(pixels)
        return [(ours, pipe.image_encoder(pixel_values=pixels).image_embeds)]
    if family == "sd21":
        ids = _tokens(pipe.tokenizer)
        return [(embedders[0](PROMPTS), pipe.text_encoder(ids).last_hidden_state)]
    pairs = []
    if family == "sdxl_base":
        out = pipe.text_encoder(_tokens(pipe.tokenizer), output_hidden_states=True)
        pairs.append((embedders[0](PROMPTS), out.hidden_states[-2]))
    big = embedders[1] if family == "sdxl_base" else embedders[0]
    hidden, pooled = big(PROMPTS)
    out = pipe.text_encoder_2(_tokens(pipe.tokenizer_2), output_hidden_states=True)
    pairs += [(hidden, out.hidden_states[-2]), (pooled, out.text_embeds)]
    return pairs


def all_outputs(family: str, engine, pipe):
    with torch.no_grad():
        return {
            "unet": [unet_outputs(family, engine, pipe)],
            "vae": vae_outputs(family, engine, pipe),
            "encoders": encoder_outputs(family, engine, pipe),
        }
