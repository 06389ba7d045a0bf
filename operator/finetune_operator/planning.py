"""The preflight stage of a reconcile: the reads and writes around status/plan.py and planner.py.

With ``settings.preflight`` on, a job's training Job is created only after its CPU preflight Job
succeeded, and not while ``spec.suspend`` is true (a dry run: plan and estimate, no training). A job
whose training Job exists already (created before, or by an operator without preflight) is left to
the training path. The measured throughput of finished jobs is kept in a ConfigMap the operator owns in
its own namespace (planner.py says how it is used).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from finetune_core.api import FineTuneJob, FineTuneJobStatus

from .context import Context
from .kube import CONFIGMAPS, JOBS, PODS, PVCS, KubeError
from .naming import MANAGED_BY, THROUGHPUT_CONFIG_MAP, preflight_job_name, selector_labels
from .planner import estimate, plausible, recorded, training_processes
from .render.owner import controlled_by
from .render.preflight import render_preflight_job
from .render.shared_cache import CACHE_CLAIM, is_ours, mounts_cache, render_cache_claim
from .status.conditions import is_true
from .status.observe import final_summary, pods_of
from .status.plan import Preflight, apply_outcome, plan_used_cache, preflight_outcome

log = logging.getLogger(__name__)

MAX_TABLE_SAMPLES = 50  # per row, whatever the ConfigMap says: it is ours, but bounded all the same


def observe(context: Context, job: FineTuneJob, training_job: dict[str, Any] | None) -> Preflight | None:
    """The preflight's outcome, or None when this job does not wait for one."""
    if not context.settings.preflight or training_job is not None:
        return None
    caches, namespace, name = context.caches, job.metadata.namespace, job.metadata.name
    preflight_job = caches[JOBS].get(namespace, preflight_job_name(name))
    if preflight_job is not None and not controlled_by(preflight_job, job.metadata.uid):
        preflight_job = None  # someone else's Job of that name says nothing about this job
    pods = caches[PODS].select(namespace, selector_labels(name)) if preflight_job is not None else []
    return preflight_outcome(job, preflight_job, pods)


def allows_training(job: FineTuneJob, outcome: Preflight | None) -> bool:
    return outcome is None or (outcome.state == "Planned" and not job.spec.suspend)


def converge(context: Context, job: FineTuneJob, outcome: Preflight | None) -> None:
    """Create the preflight Job when the job waits for one that does not exist (after its ConfigMap); delete
    one that planned an earlier spec (its deletion's watch event brings the job back, to create the new one)."""
    if outcome is None or outcome.state not in ("Missing", "Stale"):
        return
    namespace, name = job.metadata.namespace, preflight_job_name(job.metadata.name)
    if outcome.state == "Stale":
        existing = context.caches[JOBS].get(namespace, name) or {}
        if not existing.get("metadata", {}).get("deletionTimestamp"):
            log.info("replacing the preflight Job %s/%s: the spec changed after it planned", namespace, name)
            context.kube.delete(JOBS, namespace, name)
        return
    shared = context.settings.cache and cache_claim_is_ours(context, namespace)
    created, _ = context.kube.create(render_preflight_job(job, context.settings, shared), read_existing=False)
    context.caches[JOBS].created(created)


def cache_claim_is_ours(context: Context, namespace: str) -> bool:
    """The namespace's cache claim, created when missing; one of that name that is not ours, or one the namespace
    refuses (its ResourceQuota or LimitRange: 403, 422), is never used (that namespace's jobs then download per
    pod, as without a cache). Read once per preflight, not cached: a watch of every namespace's claims would cost
    more than a GET per planned job."""
    claim = context.kube.get(PVCS, namespace, CACHE_CLAIM)
    if claim is None:
        try:
            claim, _ = context.kube.create(render_cache_claim(namespace, context.settings))
        except KubeError as error:
            if error.status not in (403, 422):
                raise
            log.warning(
                "%s/%s was refused (%s): jobs there run without the shared cache", namespace, CACHE_CLAIM, error
            )
            return False
    return _usable(claim, namespace, "this preflight")


def training_reads_cache(
    context: Context, job: FineTuneJob, outcome: Preflight | None, training_job: dict[str, Any] | None, create: bool
) -> bool:
    """Whether the training pods mount the namespace's cache: when their plan was made with it and the claim is
    still there for them. An existing Job keeps what it was made with (its pods and their retries read alike);
    a new one asks the API server once, as it is created: a claim deleted since the plan would leave its pods
    Pending for a volume that never comes, so they then train without the cache (downloading and tokenizing
    themselves)."""
    if not plan_used_cache(job, outcome):
        return False
    if training_job is not None:
        return mounts_cache(training_job)
    if not create:
        return True  # nothing is created: what would be rendered is never sent
    namespace = job.metadata.namespace
    return _usable(context.kube.get(PVCS, namespace, CACHE_CLAIM), namespace, "its training")


def _usable(claim: dict[str, Any] | None, namespace: str, who: str) -> bool:
    if claim is None:
        log.warning("%s/%s is gone: %s runs without the shared cache", namespace, CACHE_CLAIM, who)
        return False
    if not is_ours(claim):
        log.warning("%s/%s is not the operator's: jobs there run without the shared cache", namespace, CACHE_CLAIM)
        return False
    if claim["metadata"].get("deletionTimestamp"):
        # Deleted to free its space, held by the pods that still mount it: a new pod would wait for it in vain.
        log.info("%s/%s is being deleted: %s runs without the shared cache", namespace, CACHE_CLAIM, who)
        return False
    return True


def apply(context: Context, job: FineTuneJob, status: FineTuneJobStatus, outcome: Preflight | None, now: str):
    """status.plan, its estimate and the conditions of a job that waits for its preflight."""
    if outcome is None:
        return []
    return apply_outcome(status, job, outcome, now, lambda plan: estimate(job, plan, measured_throughput(context)))


# -- the throughput table ------------------------------------------------------------------------------


def measured_throughput(context: Context) -> dict[str, list[float]]:
    """Measured tokens/s per process, per table row (read when an estimate is made: once per job).

    The table only refines an estimate: when it cannot be read (RBAC without the chart's preflight rules,
    the API server away), the estimate falls back to the default figures and the job goes on."""
    namespace = context.settings.operator_namespace
    if not namespace:
        return {}
    try:
        return _rows(context.kube.get(CONFIGMAPS, namespace, THROUGHPUT_CONFIG_MAP))
    except KubeError as problem:
        log.warning("could not read the throughput table %s/%s: %s", namespace, THROUGHPUT_CONFIG_MAP, problem)
        return {}


def _rows(found: dict[str, Any] | None) -> dict[str, list[float]]:
    table: dict[str, list[float]] = {}
    for key, value in ((found or {}).get("data") or {}).items():
        try:
            samples = [float(s) for s in json.loads(value)][-MAX_TABLE_SAMPLES:]
        except (ValueError, TypeError):
            continue
        table[key] = [s for s in samples if plausible(s)]
    return table


def record_outcome(context: Context, job: FineTuneJob, status: FineTuneJobStatus, training_job, pods) -> None:
    """Once a planned job succeeded: its measured training time, from its own pods' final summary."""
    plan = status.plan
    if plan is None or plan.actual_seconds is not None or not is_true(status.conditions, "Succeeded"):
        return
    summary = final_summary(pods_of(training_job, pods, job.metadata.uid))
    if summary is not None and summary.train_seconds:
        record_actual(context, job, status, summary.train_seconds)


def record_actual(context: Context, job: FineTuneJob, status: FineTuneJobStatus, train_seconds: float) -> None:
    """A succeeded job's measured throughput joins its table row, once (status.plan.actualSeconds says it did)."""
    plan = status.plan
    if plan is None or plan.estimate is None or plan.actual_seconds is not None or train_seconds <= 0:
        return
    plan.actual_seconds = round(train_seconds, 3)  # the controller turns it into the error metric
    namespace = context.settings.operator_namespace
    if not namespace or not plan.trained_tokens or not is_true(status.conditions, "Succeeded"):
        return
    per_process = plan.trained_tokens / train_seconds / training_processes(job)
    if not plausible(per_process):
        log.warning(
            "%s/%s: a measured %g tokens/s is not recorded", job.metadata.namespace, job.metadata.name, per_process
        )
        return
    key = plan.estimate.key
    try:
        found = context.kube.get(CONFIGMAPS, namespace, THROUGHPUT_CONFIG_MAP)
        if found is None:
            manifest = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": THROUGHPUT_CONFIG_MAP,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                },
                "data": {key: json.dumps([round(per_process, 3)])},
            }
            context.kube.create(manifest)
            return
        samples = _rows(found).get(key, [])
        row = recorded(samples, round(per_process, 3), context.settings.throughput_history)
        context.kube.merge_patch(CONFIGMAPS, namespace, THROUGHPUT_CONFIG_MAP, {"data": {key: json.dumps(row)}})
    except KubeError as problem:
        log.warning("could not record the throughput of %s/%s: %s", job.metadata.namespace, job.metadata.name, problem)
