"""Figures 1-3: pods bound for FineTuneJobs vs bare Jobs, the operator's start-up and memory, and its
API requests in steady state. Each returns plain numbers for the JSON results."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from hack.localcluster.operator_process import OperatorProcess

from .api import Api
from .audit import read_requests, summarise
from .binding import BindWatch, create_all, wait_until
from .environment import FINETUNEJOBS, JOBS, pods_not_in_phase
from .manifests import OPERATOR_USER, bare_job, finetune_job
from .memory import PeakMemory


def reconciled(api: Api, namespace: str, name: str) -> bool:
    """Whether the operator has written the job's status (its first reconcile does)."""
    job = api.get(f"{FINETUNEJOBS.format(namespace=namespace)}/{name}") or {}
    return bool((job.get("status") or {}).get("phase"))


def start_operator(process: OperatorProcess, api: Api, probe: tuple[str, str], timeout: float) -> dict[str, Any]:
    """Figure 2, start-up: from spawning the operator to its first reconcile of a job that was waiting."""
    namespace, name = probe
    seen: dict[str, float] = {}

    def watch_probe() -> None:
        while "reconciled" not in seen and time.monotonic() - started < timeout:
            if reconciled(api, namespace, name):
                seen["reconciled"] = time.monotonic()
                return
            time.sleep(0.1)

    started = time.monotonic()
    poller = threading.Thread(target=watch_probe, daemon=True)
    poller.start()
    process.start()
    healthy = time.monotonic()
    poller.join(timeout)
    if "reconciled" not in seen:
        raise TimeoutError(f"the operator did not reconcile {namespace}/{name} within {timeout:.0f}s")
    return {"to_healthy_seconds": healthy - started, "to_first_reconcile_seconds": seen["reconciled"] - started}


def latency_summary(sent: dict[str, float], bound: dict[str, float]) -> dict[str, Any]:
    """How long the whole batch took (first request sent to last Job's first pod bound) and per Job."""
    per_job = sorted(bound[name] - sent[name] for name in sent if name in bound)
    if not per_job:
        return {"jobs": len(sent), "bound": 0, "all_bound_seconds": None}
    return {
        "jobs": len(sent),
        "bound": len(per_job),
        "all_bound_seconds": max(bound[name] for name in sent if name in bound) - min(sent.values()),
        "per_job_seconds": {
            "p50": statistics.median(per_job),
            "p90": per_job[int(0.9 * (len(per_job) - 1))],
            "max": per_job[-1],
        },
    }


def bind_batch(api: Api, namespace: str, manifests: list[dict[str, Any]], path: str, timeout: float) -> dict[str, Any]:
    """Create every manifest and wait until each Job's pod is bound; then until the pods have finished
    (their GPUs free for the next batch)."""
    watch = BindWatch(api, namespace).start()
    try:
        sent = create_all(api, path, manifests)
        complete = watch.wait_for(len(manifests), timeout)
    finally:
        watch.stop()
    result = latency_summary(sent, watch.bound)
    result["timed_out"] = not complete
    if complete:
        wait_until(
            f"the pods of {namespace} to finish",
            lambda: not pods_not_in_phase(api, namespace, "Succeeded", "Failed"),
            timeout=timeout,
            interval=2.0,
        )
    return result


def bound_pods(api: Api, jobs: int, run_duration: str, timeout: float) -> dict[str, Any]:
    """Figure 1: ``jobs`` bare Indexed Jobs, then as many FineTuneJobs, on the same cluster; the ratio of times."""
    bare = bind_batch(
        api,
        "opbench-bare",
        [bare_job(f"bare-{i:05d}", run_duration) for i in range(jobs)],
        JOBS.format(namespace="opbench-bare"),
        timeout,
    )
    ours = bind_batch(
        api,
        "opbench-ftj",
        [finetune_job(f"ftj-{i:05d}", run_duration) for i in range(jobs)],
        FINETUNEJOBS.format(namespace="opbench-ftj"),
        timeout,
    )
    ratio = None
    if bare["all_bound_seconds"] and ours["all_bound_seconds"] and not (bare["timed_out"] or ours["timed_out"]):
        ratio = ours["all_bound_seconds"] / bare["all_bound_seconds"]
    return {"jobs": jobs, "bare": bare, "finetunejobs": ours, "ratio": ratio}


def finished_jobs(api: Api, namespace: str) -> dict[str, int]:
    items, _ = api.list(FINETUNEJOBS.format(namespace=namespace))
    phases: dict[str, int] = {}
    for item in items:
        phase = (item.get("status") or {}).get("phase") or "None"
        phases[phase] = phases.get(phase, 0) + 1
    return phases


def steady_state(
    api: Api, audit_log, jobs: int, minutes: float, memory: PeakMemory, timeout: float
) -> tuple[dict[str, Any], float]:
    """Figure 3: once every FineTuneJob of figure 1 has finished, the operator's requests for ``minutes``.

    Returns the figure and the time (epoch) the window ended.
    """

    def all_finished() -> dict[str, int] | None:
        phases = finished_jobs(api, "opbench-ftj")
        return phases if phases.get("Succeeded", 0) + phases.get("Failed", 0) >= jobs else None

    phases = wait_until(f"{jobs} FineTuneJobs to finish", all_finished, timeout=timeout, interval=2.0)
    start = time.time()
    time.sleep(minutes * 60)
    end = time.time()
    time.sleep(1.0)  # the audit backend writes an event as its request completes: let the last ones land
    summary = summarise(read_requests(audit_log, OPERATOR_USER), start, end)
    summary.update(jobs_by_phase=phases, minutes=minutes, rss_mib_at_end=memory.sample() / 1024)
    return summary, end
