"""Preemptions per job, from what each reconcile found: a gauge that goes with its job."""

from __future__ import annotations

from finetune_core.api import FineTuneJobStatus
from finetune_core.api.finetunejob import QueueStatus
from finetune_operator.context import Outcome
from finetune_operator.controller import job_metrics_recorder
from finetune_operator.metrics import OperatorMetrics


def preemptions(metrics: OperatorMetrics) -> float | None:
    return metrics.registry.get_sample_value("finetune_operator_job_preemptions", {"namespace": "ns", "name": "job"})


def queued(count: int) -> Outcome:
    status = FineTuneJobStatus(
        phase="Suspended", queue=QueueStatus(state="Preempted", local_queue="gpu-queue", preemptions=count)
    )
    return Outcome("Suspended", (), status, None, None)


def test_a_queued_jobs_preemptions_are_a_per_job_gauge_removed_with_the_job():
    metrics = OperatorMetrics()
    record = job_metrics_recorder(metrics)
    record("ns", "job", queued(2))
    assert preemptions(metrics) == 2
    record("ns", "job", Outcome(None))
    assert preemptions(metrics) is None


def test_a_job_outside_kueue_has_no_preemption_series():
    metrics = OperatorMetrics()
    job_metrics_recorder(metrics)("ns", "job", Outcome("Running", (), FineTuneJobStatus(phase="Running"), None, None))
    assert preemptions(metrics) is None
