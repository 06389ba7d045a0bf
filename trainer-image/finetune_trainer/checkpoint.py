"""Resumable checkpoints: written atomically, sealed with their files' digests, the newest K kept, restored exactly.

Layout under output.checkpointsUri:

    step-<N>/
        weights.safetensors       trainable parameters (the adapter, or every weight for full fine-tuning)
        optimizer.safetensors     AdamW moments and settings
        fsdp_model/ fsdp_optim/   instead of the two files above when sharded with FSDP (DCP shards)
        scheduler.safetensors     learning-rate schedule position
        grad_scaler.safetensors   fp16's loss scale (precision fp16 only)
        rng-rank-<r>.safetensors  each rank's generators (dropout), captured at the step boundary
        trainer_state.json        data position (epoch, step in epoch), counters, base losses
        metrics.jsonl             the run's metrics so far
        complete.json             the seal: every file's path, size and sha256; written last, and a
                                  directory without it does not exist

No file is a pickle (state_codec, sharded_checkpoint), so a replaced file cannot run code when it is
read. A checkpoint is committed the way its storage allows (see storage.Location): all ranks write
their files, hash them, meet at a barrier, then rank 0 seals it with the marker, then old ones are
deleted. A restore checks every file against the seal before reading any (checkpoint_seal); a
damaged checkpoint is skipped for the previous one, and when none is usable the run starts at step 0:
the run is still right (only longer), and a store that can replace files can delete them as well, so
failing every retry would protect nothing. Both are logged and reported to the operator.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from finetune_core.api import CheckpointFallback
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import log
from .checkpoint_seal import (
    MARKER,
    DamagedCheckpoint,
    SealedFile,
    describe,
    files_under,
    marker_content,
    read_marker,
    verify,
)
from .distributed import Distributed
from .errors import ConfigError
from .losses import unwrapped
from .sharded_checkpoint import MODEL_DIR, check_metadata, load_sharded, save_sharded
from .state import TrainState
from .state_codec import load_state, save_state
from .storage import Location, sync_files

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"
# fp16's loss scale: restarting it at 65536 would skip the first steps after a resume (inf gradients) while the
# schedule advances, and the resumed run would no longer be the uninterrupted one.
SCALER_FILE = "grad_scaler.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step}"


def rng_file_name(rank: int) -> str:
    return f"rng-rank-{rank}.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    name: str
    uri: str


@dataclass
class Resumed:
    """Where a run starts: the restored state (step 0 when nothing was usable), its generators, and any fallback."""

    state: TrainState
    rng: dict[str, Any] | None
    fallback: CheckpointFallback | None


@dataclass
class _Contents:
    """A verified checkpoint, read into memory; nothing of it is applied yet."""

    directory: Path
    payload: dict[str, Any]
    weights: dict[str, torch.Tensor] | None  # None when sharded (read by the collective load)
    optimizer: Any
    scheduler: Any
    scaler: Any
    rng: dict[str, Any] | None
    metrics: Path | None


class Checkpointer:
    """Saves, finds, restores and prunes the checkpoints of one job at one location."""

    def __init__(self, location: Location, keep: int, dist: Distributed, config_sha256: str = ""):
        self.location = location
        self.keep = keep
        self.dist = dist
        self.config_sha256 = config_sha256

    # ---- finding

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first. Directories without the marker are partial and ignored."""
        found = []
        for name in self.location.list_dirs():
            match = _STEP_DIR.match(name)
            if match and self.location.child(name).exists(MARKER):
                found.append(Checkpoint(int(match.group(1)), name, f"{self.location.uri}/{name}"))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        complete = self.complete()
        return complete[-1] if complete else None

    # ---- saving

    def save(
        self,
        state: TrainState,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        rng: dict[str, Any],
        metrics_file: Path | None,
    ) -> Checkpoint:
        """Write the checkpoint of ``state.step`` on every rank; returns it once sealed."""
        started = time.monotonic()
        name = step_dir_name(state.step)
        staging = self.location.staging_dir(name)
        if self.dist.is_main and staging.exists():
            shutil.rmtree(staging)  # a leftover of an attempt that died while saving
        self.dist.barrier()
        staging.mkdir(parents=True, exist_ok=True)

        _write_weights_and_optimizer(staging, self.dist, model, optimizer)
        save_state(rng, staging / rng_file_name(self.dist.rank))
        if self.dist.is_main:
            save_state(scheduler.state_dict(), staging / SCHEDULER_FILE)
            payload = {**state.to_json(), "config_sha256": self.config_sha256, "world_size": self.dist.world_size}
            (staging / STATE_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
            if metrics_file is not None and metrics_file.is_file():
                shutil.copyfile(metrics_file, staging / METRICS_FILE)
        self.dist.barrier()  # on shared storage the ranks write into one directory: all files must be closed
        sync_files(staging)
        files = self._describe_staged(staging)
        self.location.upload(staging, name)
        self.dist.barrier()

        checkpoint = Checkpoint(state.step, name, f"{self.location.uri}/{name}")
        if self.dist.is_main:
            marker = marker_content(state.step, self.dist.world_size, files, saved_at=time.time())
            self.location.seal(staging, name, MARKER, marker)
            self._prune()
        self.dist.barrier()
        log.info("checkpoint_written", step=state.step, seconds=round(time.monotonic() - started, 3))
        return checkpoint

    def _describe_staged(self, staging: Path) -> list[SealedFile]:
        """Every rank's files with their digests, for the seal (a collective).

        Each file is hashed by one of the ranks that see it: its writer where each rank stages privately
        (S3), an even share of them where the ranks stage into one shared directory (local storage).
        """
        seen_by: dict[str, list[int]] = {}
        for rank, paths in enumerate(self.dist.all_gather(files_under(staging))):
            for path in paths:
                seen_by.setdefault(path, []).append(rank)
        mine = [
            path
            for index, path in enumerate(sorted(seen_by))
            if seen_by[path][index % len(seen_by[path])] == self.dist.rank
        ]
        described = [sealed.to_json() for sealed in describe(staging, mine)]
        return [SealedFile(**entry) for part in self.dist.all_gather(described) for entry in part]

    def _prune(self) -> None:
        complete = self.complete()
        for old in complete[: max(0, len(complete) - self.keep)]:
            self.location.delete(old.name, MARKER)
            log.info("checkpoint_deleted", step=old.step, uri=old.uri)
        # Uploads of attempts that died before sealing (S3 shows them as prefixes): never to be completed.
        newest = complete[-1].step if complete else 0
        sealed = {c.name for c in complete}
        for name in self.location.list_dirs():
            match = _STEP_DIR.match(name)
            if match and name not in sealed and int(match.group(1)) < newest:
                self.location.delete(name, MARKER)
                log.info("partial_checkpoint_deleted", uri=f"{self.location.uri}/{name}")

    # ---- restoring

    def resume(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, metrics_file: Path | None
    ) -> Resumed:
        """Restore the newest usable checkpoint; damaged newer ones are logged, reported and deleted."""
        damaged: list[tuple[Checkpoint, str]] = []
        restored: Checkpoint | None = None
        state, rng = TrainState(), None
        for checkpoint in reversed(self.complete()):
            try:
                state, rng = self.restore(checkpoint, model, optimizer, scheduler, metrics_file)
            except DamagedCheckpoint as error:
                log.warning(
                    "checkpoint_damaged",
                    step=checkpoint.step,
                    uri=checkpoint.uri,
                    reason=error.reason,
                    detail=str(error),
                )
                damaged.append((checkpoint, error.reason))
                continue
            restored = checkpoint
            break
        if not damaged:
            return Resumed(state, rng, None)
        newest, reason = damaged[0]
        to_step = restored.step if restored else None
        log.warning("checkpoint_fallback", from_step=newest.step, to_step=to_step, reason=reason)
        if self.dist.is_main:
            # Never to be resumed: kept, they would be verified and reported again by every later attempt, and
            # counted by the pruning as if they were good.
            for checkpoint, _ in damaged:
                self.location.delete(checkpoint.name, MARKER)
        self.dist.barrier()
        return Resumed(state, rng, CheckpointFallback(from_step=newest.step, to_step=to_step, reason=reason))

    def restore(
        self,
        checkpoint: Checkpoint,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        metrics_file: Path | None,
    ) -> tuple[TrainState, dict[str, Any] | None]:
        """Load ``checkpoint`` into the objects; returns the state and this rank's RNG state (None if absent).

        Raises DamagedCheckpoint, on every rank alike, before anything is applied when any rank finds a
        file that does not match the seal or does not parse.
        """
        contents = self._agreed(self._read_or_damage(checkpoint))
        payload = contents.payload
        if payload.get("config_sha256") and payload["config_sha256"] != self.config_sha256:
            log.warning("resume_config_changed", checkpoint=checkpoint.uri)
        state = TrainState.from_json(payload)
        _apply_weights_and_optimizer(contents, self.dist, model, optimizer)
        scheduler.load_state_dict(contents.scheduler)
        if contents.rng is None:
            # Resumed with more ranks than saved: the rest of the epoch is planned anew (TrainState.adopt_layout),
            # the dropout noise of the new ranks is new.
            log.warning("resume_without_rng", rank=self.dist.rank, saved_world_size=payload.get("world_size"))
        if metrics_file is not None and self.dist.is_main and contents.metrics is not None:
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(contents.metrics, metrics_file)
        state.resumed_from_step = checkpoint.step
        log.info("checkpoint_restored", step=checkpoint.step, uri=checkpoint.uri, epoch=state.epoch)
        return state, contents.rng

    def _read_or_damage(self, checkpoint: Checkpoint) -> _Contents | DamagedCheckpoint:
        directory = self.location.download(checkpoint.name)
        try:
            sealed = read_marker(directory)
            verify(directory, sealed)
            return _read_contents(directory, {entry.path for entry in sealed}, self.dist.rank)
        except DamagedCheckpoint as damage:
            return damage

    def _agreed(self, outcome: _Contents | DamagedCheckpoint) -> _Contents:
        """The ranks resume the same checkpoint or none: the first rank's damage stops them all."""
        mine = outcome.reason if isinstance(outcome, DamagedCheckpoint) else None
        reasons = [reason for reason in self.dist.all_gather(mine) if reason]
        if isinstance(outcome, DamagedCheckpoint):
            raise outcome
        if reasons:
            raise DamagedCheckpoint(reasons[0], "damaged as another rank read it")
        return outcome


def _read_contents(directory: Path, sealed: set[str], rank: int) -> _Contents:
    """Every sealed file this rank needs, parsed; files the seal does not list are never opened."""

    def path(name: str) -> Path | None:
        return directory / name if name in sealed else None

    def required(name: str) -> Path:
        found = path(name)
        if found is None:
            raise DamagedCheckpoint("file_missing", f"the seal lists no {name}")
        return found

    try:
        payload = json.loads(required(STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or not isinstance(payload.get("step"), int):
            raise ValueError(f"{STATE_FILE} has no step")
        sharded = any(name.startswith(f"{MODEL_DIR}/") for name in sealed)
        if sharded:
            check_metadata(directory)
            weights, optimizer = None, None
        else:
            weights = load_file(str(required(WEIGHTS_FILE)))
            optimizer = load_state(required(OPTIMIZER_FILE))
        scaler_file, rng_file = path(SCALER_FILE), path(rng_file_name(rank))
        return _Contents(
            directory=directory,
            payload=payload,
            weights=weights,
            optimizer=optimizer,
            scheduler=load_state(required(SCHEDULER_FILE)),
            scaler=load_state(scaler_file) if scaler_file else None,
            rng=load_state(rng_file) if rng_file else None,
            metrics=path(METRICS_FILE),
        )
    except (ValueError, UnicodeDecodeError, SafetensorError) as error:
        raise DamagedCheckpoint("unreadable", str(error)[:200]) from None


# ---------------------------------------------------------------------------------------------
# weights and optimizer


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training changes, by name (tied weights appear once)."""
    return {name: p for name, p in unwrapped(model).named_parameters() if p.requires_grad}


def _write_weights_and_optimizer(staging: Path, dist: Distributed, model, optimizer) -> None:
    if dist.fsdp:
        save_sharded(model, optimizer, staging)
        if dist.is_main:
            _write_scaler(staging, dist)
        return
    if not dist.is_main:
        return  # replicas hold the same weights and moments
    tensors = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in trainable_parameters(model).items()}
    save_file(tensors, str(staging / WEIGHTS_FILE))
    save_state(optimizer.state_dict(), staging / OPTIMIZER_FILE)
    _write_scaler(staging, dist)


def _write_scaler(staging: Path, dist: Distributed) -> None:
    scaler = getattr(dist.accelerator, "scaler", None)
    if scaler is not None:
        save_state(scaler.state_dict(), staging / SCALER_FILE)


def _apply_weights_and_optimizer(contents: _Contents, dist: Distributed, model, optimizer) -> None:
    scaler = getattr(dist.accelerator, "scaler", None)
    if scaler is not None and contents.scaler is not None:
        scaler.load_state_dict(contents.scaler)
    if contents.weights is None:
        if not dist.fsdp:
            raise ConfigError("the checkpoint was written with FSDP: resume it with the same resources")
        load_sharded(model, optimizer, contents.directory)
        return
    if dist.fsdp:
        raise ConfigError(
            "the checkpoint was written without FSDP (one process) and this run shards the model: full "
            "fine-tuning resumes with the resources it was checkpointed with (set spec.resources back)"
        )
    saved = contents.weights
    parameters = trainable_parameters(model)
    if set(saved) != set(parameters):
        missing = sorted(set(parameters) - set(saved))
        unexpected = [name[:100] for name in sorted(set(saved) - set(parameters))]  # names from a file: bounded
        raise ConfigError(
            f"the checkpoint's weights do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "the method or model changed since it was written"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
    optimizer.load_state_dict(contents.optimizer)
