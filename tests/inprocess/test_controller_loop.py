"""The controller's workers and resync over the in-process context: a queued key is reconciled against the API
server and what it found is recorded in the metrics; a failed reconcile is retried with backoff; the resync
looks again at what is not settled. Each test waits for the reconcile it caused (an Event the reconciler sets),
never for time to pass."""

from __future__ import annotations

import threading

from finetune_operator.context import Outcome
from finetune_operator.controller import Controller, job_metrics_recorder
from finetune_operator.kube import FINETUNEJOBS, KubeError
from finetune_operator.reconcile import reconcile, settled_job
from operator_harness import training_job

PREFIX = "finetune_operator"


def controller_of(harness, reconciler) -> Controller:
    return Controller(
        "finetunejob",
        FINETUNEJOBS,
        reconciler,
        harness.context,
        harness.metrics,
        workers=1,
        record=job_metrics_recorder(harness.metrics),
        settled=settled_job,
    )


def run_until(controller: Controller, done: threading.Event, what: str, *enqueued: tuple[str, str]) -> None:
    """The controller's workers running until ``done`` is set (``what`` it waits for), ``enqueued`` queued."""
    controller.start()
    try:
        for namespace, name in enqueued:
            controller.enqueue(namespace, name)
        assert done.wait(timeout=60), f"waited 60 s for {what}"
    finally:
        controller.stop()


def sample(harness, metric: str, **labels: str) -> float | None:
    return harness.metrics.registry.get_sample_value(f"{PREFIX}_{metric}", labels)


def test_a_queued_job_is_reconciled_by_a_worker_and_its_phase_counted(harness):
    harness.create(training_job("queued", harness.namespace))
    harness.fill_caches()
    done = threading.Event()

    def reconciler(context, namespace, name) -> Outcome:
        outcome = reconcile(context, namespace, name)
        done.set()
        return outcome

    run_until(controller_of(harness, reconciler), done, "the worker reconciling the key", (harness.namespace, "queued"))

    assert harness.ftj("queued")["status"]["phase"] == "Pending"
    assert sample(harness, "reconcile_total", controller="finetunejob", result="success") == 1
    assert sample(harness, "jobs", phase="Pending") == 1


def test_a_failed_reconcile_is_retried_with_backoff_and_counted(harness):
    harness.create(training_job("flaky", harness.namespace))
    harness.fill_caches()
    calls: list[str] = []
    done = threading.Event()

    def reconciler(context, namespace, name) -> Outcome:
        calls.append(name)
        if len(calls) == 1:
            raise KubeError(0, "Unreachable", "the API server is away for a moment")
        outcome = reconcile(context, namespace, name)
        done.set()
        return outcome

    run_until(controller_of(harness, reconciler), done, "the failed key retried", (harness.namespace, "flaky"))

    assert calls == ["flaky", "flaky"]
    assert sample(harness, "reconcile_errors_total", controller="finetunejob") == 1
    assert sample(harness, "workqueue_retries_total", name="finetunejob") == 1
    assert harness.ftj("flaky")["status"]["phase"] == "Pending"


def test_the_resync_looks_again_at_unsettled_jobs_only(harness):
    harness.create(training_job("waiting", harness.namespace))
    harness.create(training_job("failed", harness.namespace))
    harness.reconcile("waiting")
    harness.reconcile("failed")
    (pod,) = harness.start_pods("failed")
    harness.finish_pod(pod["metadata"]["name"], 78, "bad configuration")
    harness.fail_job("failed")
    harness.reconcile("failed")
    harness.configure(resync_seconds=0.2)
    harness.fill_caches()
    resynced: list[str] = []
    done = threading.Event()

    def reconciler(context, namespace, name) -> Outcome:
        resynced.append(name)
        done.set()
        return Outcome("Pending")

    controller = controller_of(harness, reconciler)
    assert controller.due_keys() == [(harness.namespace, "waiting")], "a failed job is settled"
    run_until(controller, done, "the resync enqueueing the waiting job")

    assert set(resynced) == {"waiting"}
