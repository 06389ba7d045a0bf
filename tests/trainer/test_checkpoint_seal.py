"""Checkpoint files cannot run code, and the seal names every file's size and sha256, checked before any is read."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from finetune_trainer.checkpoint import Checkpointer
from finetune_trainer.checkpoint_seal import MARKER, DamagedCheckpoint, read_marker, verify
from finetune_trainer.distributed import Distributed
from finetune_trainer.sharded_checkpoint import check_metadata, load_sharded, save_sharded
from finetune_trainer.state import TrainState, capture_rng
from finetune_trainer.state_codec import load_state, save_state
from finetune_trainer.storage import open_location
from torch.distributed.checkpoint.api import CheckpointException

pytestmark = pytest.mark.trainer


class CreatesFile:
    """A pickle that creates ``path`` when it is loaded: what a hostile writer would put in a checkpoint."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def hostile_pickle(tmp_path: Path, marker: Path, size: int = 0) -> bytes:
    """The payload, padded to ``size`` bytes (unpickling stops at its STOP opcode); proven live: what it
    makes an unpickler call creates a file (so a test that uses it can fail)."""
    probe = tmp_path / "probe-created"
    call, arguments = CreatesFile(probe).__reduce__()
    call(*arguments).close()
    assert probe.exists()
    payload = pickle.dumps({"state": CreatesFile(marker)})
    return payload + b" " * max(0, size - len(payload))


@pytest.fixture
def dist(trainer_env):
    from accelerate import Accelerator

    return Distributed(Accelerator(cpu=True))


@pytest.fixture
def parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


@pytest.fixture
def checkpointer(trainer_env, dist):
    return Checkpointer(open_location(f"file://{trainer_env}/ckpt"), keep=3, dist=dist)


def save(checkpointer, parts, step):
    model, optimizer, scheduler = parts
    return checkpointer.save(TrainState(step=step), model, optimizer, scheduler, capture_rng(), None)


def fresh_parts():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# ---- the seal


def test_the_seal_lists_every_file_with_its_size_and_sha256(trainer_env, checkpointer, parts):
    save(checkpointer, parts, 5)
    directory = trainer_env / "ckpt" / "step-5"
    marker = json.loads((directory / MARKER).read_text())
    on_disk = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != MARKER}
    assert {entry["path"] for entry in marker["files"]} == set(on_disk)
    for entry in marker["files"]:
        content = on_disk[entry["path"]]
        assert entry["size"] == len(content)
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
    assert (marker["format"], marker["step"], marker["world_size"]) == (2, 5, 1)


def test_no_checkpoint_file_is_a_pickle(trainer_env, checkpointer, parts):
    save(checkpointer, parts, 5)
    for path in (trainer_env / "ckpt" / "step-5").iterdir():
        content = path.read_bytes()
        if path.suffix == ".json":
            json.loads(content)
        else:
            # safetensors: an 8-byte little-endian header length, then a JSON header.
            assert path.suffix == ".safetensors", path.name
            assert content[8:9] == b"{", path.name


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.unlink(), "file_missing"),
        (lambda path: path.write_bytes(path.read_bytes()[:-7]), "size_mismatch"),
        (lambda path: path.write_bytes(bytes(b ^ 1 for b in path.read_bytes())), "digest_mismatch"),
    ],
    ids=["missing", "truncated", "replaced"],
)
def test_a_file_that_does_not_match_the_seal_damages_the_checkpoint(trainer_env, checkpointer, parts, damage, reason):
    save(checkpointer, parts, 5)
    directory = trainer_env / "ckpt" / "step-5"
    damage(directory / "optimizer.safetensors")
    with pytest.raises(DamagedCheckpoint) as raised:
        verify(directory, read_marker(directory))
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        (b"{not json", "marker_unreadable"),
        (b'{"step": 5, "world_size": 1}', "unverifiable"),
        (
            b'{"format": 2, "files": [{"path": "../../etc/passwd", "size": 1, "sha256": "' + b"0" * 64 + b'"}]}',
            "marker_unreadable",
        ),
        (
            b'{"format": 2, "files": [{"path": "/etc/passwd", "size": 1, "sha256": "' + b"0" * 64 + b'"}]}',
            "marker_unreadable",
        ),
        (b'{"format": 2, "files": [{"path": "a", "size": -1, "sha256": "' + b"0" * 64 + b'"}]}', "marker_unreadable"),
        (b'{"format": 2, "files": [{"path": "a", "size": 1, "sha256": "xyz"}]}', "marker_unreadable"),
        (b'{"format": 3, "files": []}', "marker_unreadable"),
    ],
    ids=["not-json", "no-files", "dot-dot", "absolute", "negative-size", "bad-digest", "other-format"],
)
def test_a_marker_that_is_not_a_seal_of_this_format_is_refused(tmp_path, marker, reason):
    (tmp_path / MARKER).write_bytes(marker)
    with pytest.raises(DamagedCheckpoint) as raised:
        read_marker(tmp_path)
    assert raised.value.reason == reason


def test_restoring_a_damaged_checkpoint_applies_nothing(trainer_env, checkpointer, parts):
    save(checkpointer, parts, 5)
    (trainer_env / "ckpt" / "step-5" / "scheduler.safetensors").write_bytes(b"replaced")
    model, optimizer, scheduler = fresh_parts()
    before = model.weight.detach().clone()
    with pytest.raises(DamagedCheckpoint, match="scheduler"):
        checkpointer.restore(checkpointer.latest(), model, optimizer, scheduler, None)
    assert torch.equal(model.weight, before) and not optimizer.state


def test_files_the_seal_does_not_list_are_never_opened(trainer_env, checkpointer, parts):
    save(checkpointer, parts, 5)
    created = trainer_env / "code-ran"
    (trainer_env / "ckpt" / "step-5" / "optimizer.pt").write_bytes(hostile_pickle(trainer_env, created))
    state, _ = checkpointer.restore(checkpointer.latest(), *fresh_parts(), None)
    assert state.step == 5
    assert not created.exists()


def test_a_sealed_checkpoint_that_does_not_parse_is_unreadable_and_runs_nothing(trainer_env, checkpointer, parts):
    """A writer who can also rewrite the seal: the digests match, the file is a pickle, nothing runs."""
    save(checkpointer, parts, 5)
    directory = trainer_env / "ckpt" / "step-5"
    created = trainer_env / "code-ran"
    reseal(directory, "optimizer.safetensors", hostile_pickle(trainer_env, created))
    with pytest.raises(DamagedCheckpoint) as raised:
        checkpointer.restore(checkpointer.latest(), *fresh_parts(), None)
    assert raised.value.reason == "unreadable"
    assert not created.exists()


def reseal(directory: Path, name: str, content: bytes) -> None:
    """Replace ``name`` and rewrite its entry in the seal to match, as a writer of the whole prefix could."""
    (directory / name).write_bytes(content)
    marker = json.loads((directory / MARKER).read_text())
    for entry in marker["files"]:
        if entry["path"] == name:
            entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    (directory / MARKER).write_text(json.dumps(marker))


# ---- training state without pickles


def test_training_state_round_trips_exactly(tmp_path, parts):
    _, optimizer, scheduler = parts
    value = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "odd": {3: (1, [2.5, None, True], "x"), "nan": float("nan"), "big": 2**70, "empty": torch.empty(0)},
        "dtypes": [torch.arange(3, dtype=dtype) for dtype in (torch.bfloat16, torch.uint8, torch.int64)],
    }
    save_state(value, tmp_path / "state.safetensors")
    loaded = load_state(tmp_path / "state.safetensors")

    assert loaded["optimizer"]["param_groups"] == value["optimizer"]["param_groups"]
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    for index, moments in value["optimizer"]["state"].items():
        for name, tensor in moments.items():
            restored = loaded["optimizer"]["state"][index][name]
            assert restored.dtype == tensor.dtype and torch.equal(restored, tensor), (index, name)
    assert loaded["scheduler"] == value["scheduler"]
    assert loaded["rng"]["python"] == value["rng"]["python"] and loaded["rng"]["numpy"] == value["rng"]["numpy"]
    assert torch.equal(loaded["rng"]["torch"], value["rng"]["torch"])
    assert loaded["odd"][3] == (1, [2.5, None, True], "x") and loaded["odd"]["big"] == 2**70
    assert loaded["odd"]["nan"] != loaded["odd"]["nan"]
    assert [t.dtype for t in loaded["dtypes"]] == [torch.bfloat16, torch.uint8, torch.int64]


def test_a_value_of_another_type_is_refused_when_saved(tmp_path):
    with pytest.raises(TypeError, match="set"):
        save_state({"a": {1, 2}}, tmp_path / "state.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"garbage" * 10], ids=["empty", "pickle", "garbage"])
def test_a_file_that_is_not_a_training_state_file_is_refused(tmp_path, content):
    (tmp_path / "state.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match="not a training-state file"):
        load_state(tmp_path / "state.safetensors")


def test_a_pickle_in_place_of_a_training_state_file_runs_nothing(tmp_path):
    created = tmp_path / "code-ran"
    (tmp_path / "state.safetensors").write_bytes(hostile_pickle(tmp_path, created))
    with pytest.raises(ValueError):
        load_state(tmp_path / "state.safetensors")
    assert not created.exists()


# ---- sharded (FSDP) checkpoints: DCP's files, read without unpickling anything else


def test_sharded_weights_and_optimizer_round_trip(tmp_path, parts):
    model, optimizer, _ = parts
    save_sharded(model, optimizer, tmp_path)
    check_metadata(tmp_path)
    fresh, fresh_optimizer, _ = fresh_parts()
    fresh_optimizer.param_groups[0]["lr"] = 0.5
    load_sharded(fresh, fresh_optimizer, tmp_path)
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_optimizer.state[fresh.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1  # a non-tensor entry, loaded without pickle's full power


@pytest.mark.parametrize("sub", ["fsdp_model", "fsdp_optim"])
def test_sharded_metadata_that_would_run_code_is_refused(tmp_path, parts, sub):
    model, optimizer, _ = parts
    save_sharded(model, optimizer, tmp_path)
    created = tmp_path / "code-ran"
    (tmp_path / sub / ".metadata").write_bytes(hostile_pickle(tmp_path, created))
    with pytest.raises(ValueError, match="not a checkpoint's metadata"):
        check_metadata(tmp_path)
    with pytest.raises(CheckpointException):  # DCP's own reader, through ours, refuses it too
        load_sharded(*fresh_parts()[:2], tmp_path)
    assert not created.exists()
