"""The launcher's world (torchrun and SLURM variables), each rank's device and backend, and
the guidance-parallel checks and halves (the two halves a guider batches, split by row)."""

from __future__ import annotations

import pytest
import torch

from sgm.errors import InputError
from sgm.inference.cfg_parallel import SplitGuider, check_cfg_parallel
from sgm.inference.distributed import (
    World,
    backend_for,
    launcher_world,
    process_group,
    rank_device,
)
from sgm.modules.diffusionmodules.guiders import (
    IdentityGuider,
    LinearPredictionGuider,
    VanillaCFG,
)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, World()),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, World(3, 8, 1, "torchrun")),
        (
            {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"},
            World(5, 16, 1, "SLURM"),
        ),
        # torchrun inside a SLURM allocation: torchrun's own variables win
        (
            {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
            World(1, 2, 0, "torchrun"),
        ),
    ],
)
def test_launcher_world(env, expected):
    assert launcher_world(env) == expected


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 / world size 2"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "0"}, "world size 0"),
    ],
)
def test_bad_launcher_variables(env, message):
    with pytest.raises(InputError, match=message):
        launcher_world(env)


def test_world_of_one_needs_no_group_and_cpu_stays_cpu():
    import torch.distributed as dist

    world = launcher_world({})
    assert world.is_main and rank_device(world, "cpu") == torch.device("cpu")
    assert rank_device(World(1, 2, 1), "cpu") == torch.device("cpu")
    with process_group(world) as up:
        assert up is False and not dist.is_initialized()
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


def test_slurm_without_rendezvous_is_one_line(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(InputError, match="MASTER_ADDR and MASTER_PORT is not set"):
        with process_group(World(0, 2, 0, "SLURM")):
            pass


def test_cfg_parallel_refusals():
    with pytest.raises(InputError, match="world size 3 is odd"):
        check_cfg_parallel(World(0, 3), VanillaCFG(5.0))
    with pytest.raises(InputError, match=r"without guidance \(IdentityGuider\)"):
        check_cfg_parallel(World(0, 2), IdentityGuider())
    with pytest.raises(InputError, match="no guider"):
        check_cfg_parallel(World(0, 2), None)
    check_cfg_parallel(World(1, 4), LinearPredictionGuider(2.5, num_frames=3))


def _cond(rows: int, value: float) -> dict:
    return {
        "crossattn": torch.full((rows, 2, 4), value),
        "vector": torch.full((rows, 6), value),
        "concat": torch.full((rows, 1, 2, 2), value),
    }


@pytest.mark.parametrize(
    "guider", [VanillaCFG(4.0), LinearPredictionGuider(3.0, num_frames=2, min_scale=1.5)]
)
def test_split_guider_halves_are_the_guiders_halves(guider):
    """Each member gets its rows of the wrapped guider's batch: member 0 the unconditional,
    member 1 the conditional; a key the guider does not double is passed whole (the
    exchange itself: test_distributed_sampling)."""
    x, s = torch.randn(4, 1, 2, 2), torch.rand(4)
    c, uc = _cond(4, 1.0), _cond(4, -1.0)
    c["extra"] = uc["extra"] = torch.arange(4.0)
    x2, s2, full = guider.prepare_inputs(x, s, c, uc)
    halves = [SplitGuider(guider, None, m).prepare_inputs(x, s, c, uc) for m in (0, 1)]
    for member, (xh, sh, ch) in enumerate(halves):
        rows = slice(member * 4, member * 4 + 4)
        assert torch.equal(xh, x2[rows]) and torch.equal(sh, s2[rows])
        for key in ("crossattn", "vector", "concat"):
            assert torch.equal(ch[key], (uc, c)[member][key])
        assert ch["extra"] is c["extra"]
    assert SplitGuider(guider, None, 0).scale is guider.scale  # attributes pass through


def test_split_guider_refuses_unsplittable():
    with pytest.raises(InputError, match="does not batch two halves"):
        SplitGuider(IdentityGuider(), None, 0).prepare_inputs(
            torch.zeros(2, 1), torch.zeros(2), {}, {}
        )
    with pytest.raises(InputError, match="member must be 0 or 1"):
        SplitGuider(VanillaCFG(2.0), None, 2)
