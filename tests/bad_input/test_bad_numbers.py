"""Numbers: NaN and +-inf are refused by every numeric flag and Python API value, and so
are values the backend cannot take (seeds beyond 0 .. 2**32 - 1, which NumPy and
Lightning's ``seed_everything`` refuse; ports beyond 65535; time budgets that overflow).
Each is named (the flag, the field) before any model is built."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from cli_contract_support import (
    GRADIO,
    GRADIO_4D,
    IMAGE,
    MAIN,
    PACK,
    SV4D,
    SV4D2,
    TINY_MODEL,
    TOY,
    VIDEO,
    check_row,
    row_id,
)

from sgm import cli
from sgm.errors import ConfigError, InputError

NAN, INF = float("nan"), float("inf")
TOO_BIG = str(2**32)  # one past the last seed NumPy and seed_everything take
LAST = 2**32 - 1  # the last seed
CONFIG = ["--base", "{config}", "--logdir", "logs"]


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("numbers")
    prompts = folder / "prompts.jsonl"
    prompts.write_text('{"prompt": "a fox", "seed": 4294967296}\n')
    three = folder / "three.txt"
    three.write_text("a fox\nan owl\na hare\n")
    last_seed = folder / "last_seed.jsonl"
    last_seed.write_text(f'{{"prompt": "a fox", "seed": {LAST}}}\n')
    weights = folder / "weights.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(weights))
    return {
        "big_seed_prompts": str(prompts),
        "three_prompts": str(three),
        "last_seed_prompts": str(last_seed),
        "weights": str(weights),
    }


ROWS: list[tuple[str, str, list[str], str]] = [
    # ---------------------------------------------------------------- not finite
    (MAIN, "not finite", [*CONFIG, "model.base_learning_rate=.nan"], "model.base_learning_rate"),
    (MAIN, "not finite", ["--base", "{config}", "--gradient_clip_val=.inf"], "--gradient_clip_val"),
    (VIDEO, "not finite", ["--input_path={image}", "--elevations_deg=nan"], "--elevations_deg"),
    (VIDEO, "not finite", ["--input_path={image}", "--azimuths_deg=0,inf,2"], "--azimuths_deg"),
    (SV4D, "not finite", ["--input_path={frames}", "--elevations_deg=-inf"], "--elevations_deg"),
    (SV4D2, "not finite", ["--input_path={frames}", "--azimuths_deg=[nan, 1]"], "--azimuths_deg"),
    (SV4D, "not finite", ["--input_path={frames}", "--cond_aug=nan"], "--cond_aug"),
    (VIDEO, "not finite", ["--input_path={image}", "--cond_aug=inf"], "--cond_aug"),
    (IMAGE, "not finite", ["--cfg_scale=nan"], "--cfg_scale"),
    (IMAGE, "not finite", ["--cfg_scale=1e400"], "--cfg_scale"),
    (IMAGE, "not finite", ["--init_image={image}", "--strength=nan"], "--strength"),
    (IMAGE, "not finite", ["--tome=nan"], "--tome"),
    (PACK, "not finite", ["{frames}", "shards", "--max_shard_mb=inf"], "--max_shard_mb"),
    (TOY, "not finite", ["--minutes", "nan"], "--minutes"),
    (TOY, "not finite", ["--cfg-scale", "-inf"], "--cfg-scale"),
    # ---------------------------------------------------------------- beyond backend
    (IMAGE, "beyond backend", [f"--seed={TOO_BIG}"], "--seed"),
    (IMAGE, "beyond backend", ["--prompts_file={big_seed_prompts}"], "'seed' 4294967296"),
    # a valid start seed whose later items' seeds (seed + k) pass the last seed
    (
        IMAGE,
        "beyond backend",
        [f"--seed={LAST}", "--num_samples=2"],
        f"--seed {LAST}: this run's 2 image(s) need seeds up to {LAST + 1}",
    ),
    (
        IMAGE,
        "beyond backend",
        ["--prompts_file={three_prompts}", f"--seed={LAST - 1}"],
        f"--seed {LAST - 1}: this run's 3 image(s) need seeds up to {LAST + 1}",
    ),
    (
        IMAGE,
        "beyond backend",
        ["--prompts_file={last_seed_prompts}", "--num_samples=3"],
        f"prompt 1 ('a fox'): its 'seed' {LAST} over --num_samples 3 needs seeds up to {LAST + 2}",
    ),
    (  # Turbo draws one more seed a step
        IMAGE,
        "beyond backend",
        ["--version=sd_turbo", f"--seed={LAST}"],
        f"--seed {LAST}: this run's 1 image(s) need seeds up to {LAST + 1}",
    ),
    (VIDEO, "beyond backend", ["--input_path={image}", f"--seed={TOO_BIG}"], "--seed"),
    (
        VIDEO,
        "beyond backend",
        ["--input_path={frames}/*.png", "--ckpt={weights}", f"--seed={LAST - 1}"],
        f"--seed {LAST - 1}: this run's 3 video(s) need seeds up to {LAST + 1}",
    ),
    (SV4D, "beyond backend", ["--input_path={frames}", f"--seed={TOO_BIG}"], "--seed"),
    (SV4D2, "beyond backend", ["--input_path={frames}", f"--seed={TOO_BIG}"], "--seed"),
    (TOY, "beyond backend", ["--seed", TOO_BIG], "--seed"),
    (TOY, "beyond backend", ["--minutes", "1e308"], "--minutes"),
    (
        TINY_MODEL,
        "beyond backend",
        ["--release", "sd2.1", "--out", "o", "--seed", TOO_BIG],
        "--seed",
    ),
    (GRADIO, "beyond backend", ["--port=70000"], "--port"),
    (GRADIO_4D, "beyond backend", ["--port=65536"], "--port"),
]


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_numbers_are_one_line_exit_2(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


# ------------------------------------------------------------------ argument types


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1,nan", "[0, inf]", "1e400"])
def test_float_list_refuses_non_finite(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        cli.float_list(text)


def test_seed_and_port_ranges():
    assert cli.seed("0") == 0 and cli.seed(str(2**32 - 1)) == 2**32 - 1
    for text in (str(2**32), "-1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.seed(text)
    assert cli.port("65535") == 65535
    for text in ("0", "65536"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.port(text)


# ------------------------------------------------------------------ the Python API


def test_sampling_params_refuse_what_token_merging_cannot_take():
    from sgm.inference.sampling_params import SamplingParams

    with pytest.raises(InputError, match="SamplingParams.tome=1.5"):
        SamplingParams(tome=1.5)
    with pytest.raises(InputError, match="SamplingParams.tome_max_downsample=3"):
        SamplingParams(tome_max_downsample=3)


@pytest.mark.parametrize(
    "field, value",
    [("seed", NAN), ("seed", INF), ("seed", 2**32), ("num_samples", NAN), ("steps", INF)],
)
def test_image_request_names_the_bad_field(field, value):
    from sgm.demo.image import ImageRequest, check_request

    named = {"num_samples": "number of samples"}.get(field, field)
    with pytest.raises(InputError, match=named):
        check_request(ImageRequest(**{field: value}))


@pytest.mark.parametrize(
    "field, value",
    [("seed", NAN), ("seed", 2**32), ("decoding_t", INF), ("elevation_deg", NAN)],
)
def test_video_request_names_the_bad_field(field, value):
    from sgm.demo.video import VideoRequest, check_video_request

    with pytest.raises(InputError, match=field):
        check_video_request(VideoRequest(**{field: value}))


def test_video_request_refuses_non_finite_camera_angles():
    from sgm.demo.video import VideoRequest, check_video_request

    angles = [0.1] * 20 + [NAN]
    request = VideoRequest(version="sv3d_p", width=576, height=576, frames=21)
    request.azimuths_rad = angles
    with pytest.raises(InputError, match=r"azimuths_rad\[20\]"):
        check_video_request(request)


def test_orbit_names_the_bad_value():
    from sgm.demo.orbit import dynamic_elevations, orbit

    with pytest.raises(InputError, match="elevation_deg"):
        orbit(21, INF)
    with pytest.raises(InputError, match="seed"):
        orbit(21, 10.0, dynamic=True, seed=NAN)
    with pytest.raises(InputError, match="seed"):
        dynamic_elevations(21, 10.0, seed=2**32)
    with pytest.raises(InputError, match="amplitude_deg"):
        dynamic_elevations(21, 10.0, seed=1, amplitude_deg=NAN)


def test_gradio_sv4d_sample_names_a_bad_seed(tmp_path):
    from sgm.demo.gradio_sv4d import Sv4dApp
    from sgm.demo.options import DemoOptions

    app = Sv4dApp(DemoOptions(checkpoints=tmp_path))
    with pytest.raises(InputError, match="seed"):
        app.sample(str(tmp_path / "in.mp4"), seed=NAN)


def test_sample_video_api_names_non_finite_values(tmp_path):
    from sgm.commands.sample_video import resolve, sample

    args = dict(version="svd", num_frames=None, num_steps=None, decoding_t=14, fps_id=6)
    common = dict(config=None, ckpt=None, output_folder=str(tmp_path / "out"))
    with pytest.raises(InputError, match="cond_aug"):
        resolve(**args, motion_bucket_id=127, cond_aug=NAN, **common, elevations_deg=10.0,
                azimuths_deg=None)  # fmt: skip
    with pytest.raises(InputError, match=r"azimuths_deg\[1\]"):
        resolve(**args, motion_bucket_id=127, cond_aug=0.02, **common, elevations_deg=10.0,
                azimuths_deg=[0.0, INF])  # fmt: skip
    with pytest.raises(InputError, match="seed"):
        sample(seed=2**32, output_folder=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_learning_rates_are_checked_before_any_model_is_built():
    from omegaconf import OmegaConf

    from sgm.values import check_learning_rate

    check_learning_rate(OmegaConf.create({"model": {"base_learning_rate": 1.0e-4}}))
    for bad in (NAN, INF, -1.0, 0.0):
        config = OmegaConf.create({"model": {"base_learning_rate": bad}})
        with pytest.raises(ConfigError, match="model.base_learning_rate"):
            check_learning_rate(config)
    config = OmegaConf.create({"model": {"params": {"learning_rate": INF}}})
    with pytest.raises(ConfigError, match="model.params.learning_rate"):
        check_learning_rate(config)


def test_trainer_gradient_clip_refuses_inf():
    from sgm.config_trainer import check_value

    assert check_value("gradient_clip_val", 1.0) == 1.0
    with pytest.raises(ValueError, match="finite"):
        check_value("gradient_clip_val", math.inf)


def test_seeds_over_a_run_are_checked_up_to_the_last_one():
    from sgm.commands.at_scale import check_seeds
    from sgm.inference.work_items import input_items, prompt_items

    last = cli.MAX_SEED
    check_seeds(input_items(["a.png", "b.png"], seed=last - 1), last - 1, "video")
    check_seeds(prompt_items([], seed=last), last, "image")  # no item takes --seed
    with pytest.raises(InputError, match=f"--seed {last - 1}: .* up to {last + 1},") as error:
        check_seeds(input_items(["a.png", "b.png", "c.png"], seed=last - 1), last - 1, "video")
    assert f"lower --seed to at most {last - 2}" in str(error.value)
    with pytest.raises(InputError, match=f"up to {last + 4},"):  # 4 Turbo steps after it
        check_seeds(input_items(["a.png"], seed=last), last, "image", extra=4)
