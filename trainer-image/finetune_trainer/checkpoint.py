"""Resumable checkpoints: written atomically, the newest K kept, restored exactly.

Layout under output.checkpointsUri:

    step-<N>/
        weights.safetensors       trainable parameters (the adapter, or every weight for full fine-tuning)
        fsdp_model/ fsdp_optim/   instead of the two files of weights and optimizer when sharded with FSDP
        optimizer.pt              AdamW moments
        scheduler.pt              learning-rate schedule position
        grad_scaler.pt            fp16's loss scale (precision fp16 only)
        rng-rank-<r>.pt           each rank's generators (dropout), captured at the step boundary
        trainer_state.json        data position (epoch, step in epoch), counters, base losses
        metrics.jsonl             the run's metrics so far
        complete.json             the marker: written last; a directory without it does not exist

A checkpoint is committed the way its storage allows (see storage.Location): all ranks write their
files, meet at a barrier, then rank 0 seals it with the marker, then old ones are deleted.
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
from safetensors.torch import load_file, save_file

from . import log
from .distributed import Distributed
from .errors import ConfigError
from .losses import unwrapped
from .state import TrainState
from .storage import Location, sync_files

MARKER = "complete.json"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step}"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    name: str
    uri: str


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
        torch.save(rng, staging / f"rng-rank-{self.dist.rank}.pt")
        if self.dist.is_main:
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
            payload = {**state.to_json(), "config_sha256": self.config_sha256, "world_size": self.dist.world_size}
            (staging / STATE_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
            if metrics_file is not None and metrics_file.is_file():
                shutil.copyfile(metrics_file, staging / METRICS_FILE)
        self.dist.barrier()  # on shared storage the ranks write into one directory: all files must be closed
        sync_files(staging)
        self.location.upload(staging, name)
        self.dist.barrier()

        checkpoint = Checkpoint(state.step, name, f"{self.location.uri}/{name}")
        if self.dist.is_main:
            marker = {"step": state.step, "world_size": self.dist.world_size, "saved_at": time.time()}
            self.location.seal(staging, name, MARKER, json.dumps(marker).encode())
            self._prune()
        self.dist.barrier()
        log.info("checkpoint_written", step=state.step, seconds=round(time.monotonic() - started, 3))
        return checkpoint

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

    def restore(
        self,
        checkpoint: Checkpoint,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        metrics_file: Path | None,
    ) -> tuple[TrainState, dict[str, Any] | None]:
        """Load ``checkpoint`` into the objects; returns the state and this rank's RNG state (None if absent)."""
        directory = self.location.download(checkpoint.name)
        payload = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        if payload.get("config_sha256") and payload["config_sha256"] != self.config_sha256:
            log.warning("resume_config_changed", checkpoint=checkpoint.uri)
        state = TrainState.from_json(payload)
        _read_weights_and_optimizer(directory, self.dist, model, optimizer)
        scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=False))
        rng_file = directory / f"rng-rank-{self.dist.rank}.pt"
        rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
        if rng is None:
            # Resumed with more ranks than saved: the rest of the epoch is planned anew (TrainState.adopt_layout),
            # the dropout noise of the new ranks is new.
            log.warning("resume_without_rng", rank=self.dist.rank, saved_world_size=payload.get("world_size"))
        if metrics_file is not None and self.dist.is_main and (directory / METRICS_FILE).is_file():
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / METRICS_FILE, metrics_file)
        state.resumed_from_step = checkpoint.step
        log.info("checkpoint_restored", step=checkpoint.step, uri=checkpoint.uri, epoch=state.epoch)
        return state, rng


# ---------------------------------------------------------------------------------------------
# weights and optimizer


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training changes, by name (tied weights appear once)."""
    return {name: p for name, p in unwrapped(model).named_parameters() if p.requires_grad}


def _write_weights_and_optimizer(staging: Path, dist: Distributed, model, optimizer) -> None:
    if dist.fsdp:
        from accelerate.utils.fsdp_utils import save_fsdp_model, save_fsdp_optimizer

        plugin = dist.accelerator.state.fsdp_plugin
        save_fsdp_model(plugin, dist.accelerator, model, str(staging / "fsdp_model"))
        save_fsdp_optimizer(plugin, dist.accelerator, optimizer, model, str(staging / "fsdp_optim"))
        if dist.is_main:
            _write_scaler(staging, dist)
        return
    if not dist.is_main:
        return  # replicas hold the same weights and moments
    tensors = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in trainable_parameters(model).items()}
    save_file(tensors, str(staging / "weights.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    _write_scaler(staging, dist)


# fp16's loss scale: restarting it at 65536 would skip the first steps after a resume (inf gradients) while the
# schedule advances, and the resumed run would no longer be the uninterrupted one.
SCALER_FILE = "grad_scaler.pt"


def _write_scaler(staging: Path, dist: Distributed) -> None:
    scaler = getattr(dist.accelerator, "scaler", None)
    if scaler is not None:
        torch.save(scaler.state_dict(), staging / SCALER_FILE)


def _read_scaler(directory: Path, dist: Distributed) -> None:
    scaler = getattr(dist.accelerator, "scaler", None)
    if scaler is not None and (directory / SCALER_FILE).is_file():
        scaler.load_state_dict(torch.load(directory / SCALER_FILE, weights_only=False, map_location="cpu"))


def _read_weights_and_optimizer(directory: Path, dist: Distributed, model, optimizer) -> None:
    if (directory / "fsdp_model").is_dir():
        if not dist.fsdp:
            raise ConfigError("the checkpoint was written with FSDP: resume it with the same resources")
        from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer

        plugin = dist.accelerator.state.fsdp_plugin
        load_fsdp_model(plugin, dist.accelerator, model, str(directory / "fsdp_model"))
        load_fsdp_optimizer(plugin, dist.accelerator, optimizer, model, str(directory / "fsdp_optim"))
        _read_scaler(directory, dist)
        return
    if dist.fsdp:
        raise ConfigError(
            "the checkpoint was written without FSDP (one process) and this run shards the model: full "
            "fine-tuning resumes with the resources it was checkpointed with (set spec.resources back)"
        )
    saved = load_file(str(directory / "weights.safetensors"))
    parameters = trainable_parameters(model)
    if set(saved) != set(parameters):
        missing, unexpected = sorted(set(parameters) - set(saved)), sorted(set(saved) - set(parameters))
        raise ConfigError(
            f"the checkpoint's weights do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "the method or model changed since it was written"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False, map_location="cpu"))
    _read_scaler(directory, dist)
