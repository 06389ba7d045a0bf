"""The resumable state of a run besides weights and optimizer: position in the data, counters, RNG."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next step comes from
    step_in_epoch: int = 0  # steps of that epoch already done: the exact data position
    tokens_seen: int = 0  # real (non-padding) tokens, all ranks
    wall_seconds: float = 0.0  # training time summed over attempts
    last_loss: float | None = None
    last_eval_loss: float | None = None
    resumed_from_step: int | None = None
    # Base-model losses measured before the first step (full fine-tuning has no adapter to switch off).
    base_losses: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # periodic evals: {"step", "eval_loss"}
    # The layout (world_size, micro_batch_tokens, packing) the epoch's plan was made with, and the layouts
    # this epoch ran under before it, with their steps (batching.plan_steps_after).
    plan_layout: dict[str, Any] | None = None
    epoch_segments: list[dict[str, Any]] = field(default_factory=list)

    def adopt_layout(self, layout: dict[str, Any]) -> bool:
        """Continue under ``layout``; True when it differs from the one the checkpoint's plan was made with.

        The steps already run in this epoch are kept as a segment, so that the rest of the epoch is
        planned from the examples it has not trained on, and step_in_epoch starts again at 0.
        """
        previous, self.plan_layout = self.plan_layout, dict(layout)
        if previous is None or previous == layout:
            return False
        if self.step_in_epoch:
            self.epoch_segments.append({**previous, "steps": self.step_in_epoch})
            self.step_in_epoch = 0
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def capture_rng() -> dict[str, Any]:
    """Every generator a training step draws from (dropout, shuffles): restored on resume.

    Plain values and tensors only (numpy's key as a list of ints), so that a checkpoint stores them
    without pickling (state_codec).
    """
    kind, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
