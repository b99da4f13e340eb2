"""Checkpoint reading and strict loading."""

import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sgm.checkpoint import load_checkpoint_into, load_state_dict
from sgm.errors import CheckpointError
from sgm.util import load_model_from_config


class Engine(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))
        self.first_stage_model = nn.ModuleDict(
            {"decoder": nn.Sequential(nn.Conv2d(4, 3, 1), nn.Conv2d(3, 3, 1))}
        )


@pytest.fixture
def weights():
    torch.manual_seed(1)
    return Engine().state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_round_trip(tmp_path, weights):
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    model = Engine()
    assert load_checkpoint_into(model, path).ok
    assert _same(model.state_dict(), weights)


def test_ckpt_and_lightning_wrapped(tmp_path, weights):
    plain = tmp_path / "w.pt"
    torch.save(weights, plain)
    wrapped = tmp_path / "last.ckpt"
    torch.save({"state_dict": weights, "global_step": 7, "epoch": 1}, wrapped)
    for path in (plain, wrapped):
        assert _same(load_state_dict(path), weights)


def test_strict_mismatch_is_reported_by_prefix(tmp_path, weights):
    sd = {k: v for k, v in weights.items() if not k.startswith("first_stage_model.decoder")}
    sd["model.0.weight"] = torch.zeros(8, 5)
    sd["cond_stage_model.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    model = Engine()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_into(model, path)
    message = str(info.value)
    assert "first_stage_model.decoder.*: 4 missing" in message
    assert (
        "cond_stage_model.extra.*: 1 unexpected" in message
        or "cond_stage_model.extra.weight: 1 unexpected" in message
    )
    assert re.search(r"model\.0\.\*: 1 wrong shape", message)
    assert "model [8, 4], checkpoint [8, 5]" in message
    assert _same(model.state_dict(), before), "a failed strict load must change nothing"


def test_non_strict_loads_what_matches(tmp_path, weights):
    sd = {k: v for k, v in weights.items() if k.startswith("model.")}
    path = tmp_path / "part.safetensors"
    save_file(sd, str(path))
    model = Engine()
    report = load_checkpoint_into(model, path, strict=False)
    assert len(report.missing) == 4 and not report.unexpected
    assert torch.equal(model.model[0].weight, weights["model.0.weight"])


def test_legacy_prefix_is_remapped(tmp_path):
    class New(nn.Module):
        def __init__(self):
            super().__init__()
            self.conditioner = nn.Module()
            self.conditioner.embedders = nn.ModuleList([nn.Linear(2, 2)])

    old = {"cond_stage_model.weight": torch.ones(2, 2), "cond_stage_model.bias": torch.ones(2)}
    path = tmp_path / "old.safetensors"
    save_file(old, str(path))
    model = New()
    assert load_checkpoint_into(model, path).ok
    assert torch.equal(model.conditioner.embedders[0].weight, torch.ones(2, 2))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file(tmp_path, weights, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_state_dict(path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="would run arbitrary code when loaded; refused"):
        load_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    other = tmp_path / "w.npz"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_state_dict(other)


def test_load_model_from_config(tmp_path, weights):
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    config = {"model": {"target": f"{__name__}.Engine"}}
    model = load_model_from_config(config, path)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert _same(model.state_dict(), weights)


def test_constant_position_ids_may_be_absent(tmp_path):
    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(4, 2)
            self.embeddings.register_buffer("position_ids", torch.arange(4)[None])

    sd = {"embeddings.weight": torch.ones(4, 2)}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    model = Text()
    assert load_checkpoint_into(model, path).ok
    assert torch.equal(model.embeddings.position_ids, torch.arange(4)[None])


def test_ldm_schedule_buffers_are_dropped_only_when_the_model_lacks_them(tmp_path, weights):
    sd = dict(weights)
    sd["alphas_cumprod"] = torch.ones(1000)
    sd["betas"] = torch.ones(1000)
    path = tmp_path / "ldm.safetensors"
    save_file(sd, str(path))
    assert load_checkpoint_into(Engine(), path).ok

    class WithSchedule(Engine):
        def __init__(self):
            super().__init__()
            self.register_buffer("betas", torch.zeros(1000))

    model = WithSchedule()
    with pytest.raises(CheckpointError, match="alphas_cumprod: 1 unexpected"):
        load_checkpoint_into(model, path)


@pytest.mark.parametrize("prefix", [b"", b"\x80\x02", b"PK\x03\x04"])
def test_random_bytes_are_corrupt_not_code(tmp_path, prefix):
    import os

    path = tmp_path / "random.ckpt"
    path.write_bytes(prefix + os.urandom(4096))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "truncated or corrupt" in message and "arbitrary code" not in message
    assert "weights_only" not in message  # never torch's advice to unpickle anything


def _training_state(weights):
    return {
        "state_dict": weights,
        "optimizer_states": [{"state": {}}],
        "loops": {},
        "epoch": 2,
        "global_step": 7,
    }


def test_training_checkpoint_is_accepted_for_resume(tmp_path, weights):
    from sgm.checkpoint import check_training_checkpoint

    path = tmp_path / "last.ckpt"
    torch.save(_training_state(weights), path)
    assert check_training_checkpoint(path) == {"epoch": 2, "global_step": 7}


def test_weights_only_files_cannot_be_resumed(tmp_path, weights):
    from sgm.checkpoint import check_training_checkpoint

    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": weights}, bare)
    safetensors = tmp_path / "w.safetensors"
    save_file(weights, str(safetensors))
    for path in (bare, safetensors):
        with pytest.raises(CheckpointError, match="weights only.*model.params.ckpt_path="):
            check_training_checkpoint(path)


def test_resume_check_reports_corrupt_and_code_files(tmp_path, weights, capsys):
    from sgm.checkpoint import check_training_checkpoint

    truncated = tmp_path / "truncated.ckpt"
    torch.save(_training_state(weights), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        check_training_checkpoint(truncated)
    evil = tmp_path / "evil.ckpt"
    torch.save({**_training_state(weights), "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        check_training_checkpoint(evil)
    assert "this must never run" not in capsys.readouterr().out
    bad_header = tmp_path / "bad.safetensors"
    bad_header.write_bytes(b"\x10" + b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        check_training_checkpoint(bad_header)
