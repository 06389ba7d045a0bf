"""The container's termination message (terminationMessagePath): where the operator reads how the trainer
ended, even when the progress channel is off and the output location is a claim it cannot mount.

On failure: the one-line reason. On success (global rank 0): the final summary, JSON
(finetune_core.api.FinalSummary): the artifact, the evaluation and the resolved base revision.
"""

from __future__ import annotations

import os
from pathlib import Path

from finetune_core.api import FinalSummary, TrainingReport

MESSAGE_LIMIT = 4000  # the kubelet keeps at most 4096 bytes


def write_termination_message(message: str) -> None:
    path = Path(os.environ.get("FINETUNE_TERMINATION_LOG", "/dev/termination-log"))
    try:
        with path.open("w", encoding="utf-8") as handle:
            handle.write(message[:MESSAGE_LIMIT])
    except OSError:
        pass  # not in a pod, or not writable: the log lines say the same


def write_final_summary(report: TrainingReport | None) -> None:
    if report is None or report.artifact is None:
        return
    summary = FinalSummary(
        artifact=report.artifact,
        evaluation=report.evaluation,
        model_revision=report.model_revision,
        train_seconds=report.train_seconds,
    )
    write_termination_message(summary.to_message())
