"""Reconcile one FineTuneJob: read what is, render what should be, converge, and write the status.

Level-triggered and idempotent: it may run any number of times, in any order with the events
that trigger it, and after the operator was killed at any instant; it only ever creates what is
missing and patches what differs. Nothing is created while a reference is missing, so a job is
never left with half of its children.

What is, it reads from the watch-fed caches (cache.py), not from the API: a reconcile that finds
everything as it should be sends no request. A create goes out only when the cache lacks the child, and
what a create or a patch returns goes into the cache at once, so the next reconcile (often triggered by
that very write) does not send it again. References (Secrets, claims, a ServiceAccount) are read from the
API until they are all found for the job's current generation, then not again; a catalog job's namespace
labels until it finishes, when its model admits namespaces by a selector that does not list the namespace.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from finetune_core.api import FineTuneJob, FineTuneJobStatus, FineTuneModel, format_validation_error
from pydantic import ValidationError

from . import planning
from .catalog import Refused, Resolved, labels_needed, resolve
from .context import Context, Outcome, parse_time, utc_now
from .events import event_for, worth_an_event
from .kube import (
    CONFIGMAPS,
    FINETUNEJOBS,
    FINETUNEMODELS,
    JOBS,
    KINDS,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    InvalidApiPath,
    KubeError,
)
from .naming import (
    CONFIG_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    config_map_name,
    selector_labels,
    service_account_name,
    service_name,
    storage_secret_name,
    training_job_name,
)
from .publish import publish
from .queueing import observe_queue
from .render import (
    ResolutionError,
    data_hash,
    references,
    render_config_map,
    render_job,
    render_service,
    render_service_account,
    resolve_trainer_config,
)
from .render.owner import controlled_by
from .render.session_policy import ForeignPrefix, job_policy, policy_text, uses_minted_credentials
from .render.storage_secret import mint_due_in, render_storage_secret
from .status.conditions import get_condition, is_true, net_changes, set_condition
from .status.observe import Blocker, Observation, compute_status, is_finished, is_settled, references_settled
from .status.plan import pinned_revision
from .storage import StorageUnreachable
from .sts import mint

log = logging.getLogger(__name__)

MINT_RETRY_SECONDS = 30.0  # STS refused or away: tried again sooner than the resync

# Status fields a reconcile may write. The progress endpoint writes progress, checkpoint, evaluation
# and artifact too: a field is patched only when this reconcile changed it, so the two never undo
# each other's writes.
OWNED_STATUS_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "startTime",
    "completionTime",
    "restarts",
    "jobName",
    "queue",
    "plan",
    "model",  # the revision the plan pinned, before the trainer reports it (the same one)
    "progress",
    "artifact",
    "evaluation",
    "adapter",
)


def settled_job(raw: dict[str, Any]) -> bool:
    """Whether the resync may leave this cached FineTuneJob be (status/observe.py is_settled)."""
    try:
        return is_settled(FineTuneJobStatus.model_validate(raw.get("status") or {}))
    except ValidationError:
        return False  # its reconcile says what is wrong with it


def reconcile(context: Context, namespace: str, name: str) -> Outcome:
    """Converge one job."""
    caches = context.caches
    raw = caches[FINETUNEJOBS].get(namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return Outcome(None)  # children go with it through their ownerReferences
    try:
        job = FineTuneJob.model_validate(raw)
    except ValidationError as error:
        return Outcome(_report_invalid(context, raw, error))

    now = utc_now()
    spec_pending = False
    mint_due: float | None = None
    job, model = _resolve_model(context, job)  # the model catalog: see the end of this module
    blockers = [Blocker(model.reason, model.message)] if isinstance(model, Refused) else []
    blockers = blockers or ([] if references_settled(job) else _missing_references(context, job))
    training_job = caches[JOBS].get(namespace, training_job_name(name))
    foreign = training_job is not None and not controlled_by(training_job, job.metadata.uid)
    if foreign:
        training_job = None  # says nothing about this job, and is never changed or deleted by it
    # The CPU preflight (planning.py): None when this job does not wait for one.
    preflight = planning.observe(context, job, training_job) if not is_finished(job.status) and not foreign else None
    if not is_finished(job.status) and not isinstance(model, Refused):
        try:
            config = resolve_trainer_config(
                job,
                context.settings,
                progress_ca=context.progress_ca is not None,
                model_revision=pinned_revision(job, preflight),
            )
        except ResolutionError as error:
            blockers.append(Blocker("OutputNotConfigured", str(error)))
            config = None
        policy = None
        if config is not None and uses_minted_credentials(job, context.settings):
            try:
                policy = policy_text(job_policy(job, context.settings), "spec.data")
            except ForeignPrefix as error:
                blockers.append(Blocker("InputOutsideNamespace", str(error)))
            except ResolutionError as error:
                blockers.append(Blocker("SessionPolicyTooLarge", str(error)))
        if foreign:
            blockers.append(
                Blocker("JobNameTaken", f"a Job named {training_job_name(name)} exists and is not this job's")
            )
        elif not blockers and config is not None:
            try:
                allowed = planning.allows_training(job, preflight)
                shared_cache = planning.training_reads_cache(context, job, preflight, training_job, allowed)
                training_job, spec_pending = _converge_children(
                    context, job, config, training_job, allowed, shared_cache
                )
                planning.converge(context, job, preflight)
            except KubeError as error:
                if error.status not in (400, 422):
                    raise
                # What the schema cannot check (a malformed affinity, say): the Job is refused. Said once
                # in a condition, retried at resync; not retried at once as if the API server were away.
                blockers.append(Blocker("InvalidPodTemplate", f"the API server refused: {_api_message(error)}"))
        if training_job is not None and policy is not None:
            try:
                mint_due = _converge_storage_secret(context, job, training_job, policy)
            except StorageUnreachable as problem:
                blockers.append(Blocker(problem.reason, problem.message))
                mint_due = MINT_RETRY_SECONDS

    pods = caches[PODS].select(namespace, selector_labels(name)) if training_job is not None else []
    queue = observe_queue(context.kube, training_job, job.status.queue) if not is_finished(job.status) else None
    status, changes = compute_status(Observation(job, training_job, pods, now, blockers, queue))
    changes += planning.apply(context, job, status, preflight, now)
    planning.record_outcome(context, job, status, training_job, pods)
    changes += _spec_applied(job, status, spec_pending, now)
    changes += _model_resolved(job, status, model, now)
    try:
        changes += publish(context, job, status, now)
    except Exception as error:
        # Publishing is retried at every resync; the training's own status must not wait for it.
        log.warning("publishing %s/%s failed: %s", namespace, name, error, exc_info=not isinstance(error, KubeError))
        change = set_condition(
            status.conditions, "Published", "False", "PublishFailed", str(error)[:1024], now, job.metadata.generation
        )
        changes += [change] if change else []
    changes = net_changes(job.status.conditions, status.conditions, changes)
    _write_status(context, raw, job, status)
    for change in changes:
        if worth_an_event(change):
            context.record_event(event_for(raw, change, now))
    requeue = min((due for due in (_expire(context, job, status, training_job, now), mint_due) if due), default=None)
    return Outcome(status.phase, tuple(changes), status, job.metadata.creation_timestamp, requeue)


def _expire(context: Context, job: FineTuneJob, status, training_job: dict[str, Any] | None, now: str) -> float | None:
    """spec.ttlSecondsAfterFinished: the Job and its pods go once the outcome is recorded and the TTL has
    passed (the FineTuneJob and its ModelAdapter stay). Returns the seconds left, when some are."""
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is None or training_job is None or not is_finished(status) or not status.completion_time:
        return None
    if is_true(status.conditions, "Succeeded") and get_condition(status.conditions, "Published") is None:
        return None  # not published yet: the pods' termination messages may still be needed
    left = ttl - (parse_time(now) - parse_time(status.completion_time)).total_seconds()
    if left > 0:
        return left
    log.info("deleting the training Job of %s/%s: finished %ds ago", job.metadata.namespace, job.metadata.name, ttl)
    context.kube.delete(JOBS, job.metadata.namespace, training_job["metadata"]["name"])
    return None


def _converge_storage_secret(context: Context, job: FineTuneJob, training_job: dict[str, Any], policy: str) -> float:
    """The Job's minted storage credentials: minted when missing, stale or past half their life.

    The Secret is created after the Job (it is owned by it); the Job's pods wait for their Secret volume.
    Returns the seconds until the next minting is due."""
    namespace, name = job.metadata.namespace, storage_secret_name(job.metadata.name)
    existing = context.kube.get(SECRETS, namespace, name)
    due = mint_due_in(existing, training_job, policy, dt.datetime.now(dt.UTC))
    if due > 0:
        return due
    session = mint(context.kube, context.settings, policy, f"{namespace}.{job.metadata.name}")
    secret = render_storage_secret(job, training_job, session, policy)
    if existing is None:
        _, created = context.kube.create(secret)
        if created:
            return (session.expires_at - session.minted_at).total_seconds() / 2
    # Data, annotations and owner replaced at once: the kubelet refreshes the mounted files in place.
    context.kube.merge_patch(SECRETS, namespace, name, {"metadata": secret["metadata"], "data": secret["data"]})
    return (session.expires_at - session.minted_at).total_seconds() / 2


def _spec_applied(job: FineTuneJob, status, pending: bool, now: str) -> list:
    """SpecApplied: said only once a change had to wait, so that users see why it has not taken effect."""
    if pending:
        change = set_condition(
            status.conditions,
            "SpecApplied",
            "False",
            "AppliesWhenSuspended",
            "the running pods keep the configuration and pod template they started with (their retries resume "
            "the same run): suspend and resume the job to apply the change",
            now,
            job.metadata.generation,
        )
    elif get_condition(status.conditions, "SpecApplied") is not None and not is_finished(status):
        change = set_condition(
            status.conditions, "SpecApplied", "True", "Applied", "the pods run the spec", now, job.metadata.generation
        )
    else:
        return []
    return [change] if change else []


def _api_message(error: KubeError) -> str:
    try:
        return json.loads(error.body).get("message") or error.body[:1024]
    except (ValueError, AttributeError):
        return error.body[:1024]


def _missing_references(context: Context, job: FineTuneJob) -> list[Blocker]:
    namespace = job.metadata.namespace
    missing = []
    for reference in references(job, context.settings):
        try:
            found = context.kube.exists(KINDS[reference.kind], namespace, reference.name)
        except InvalidApiPath:
            # Names inside free-form parts of the template (a volume's secretName) reach no request unchecked.
            missing.append(Blocker("InvalidReference", f"{reference.field} does not name a valid {reference.kind}"))
            continue
        if not found:
            missing.append(
                Blocker(
                    f"{reference.kind}NotFound",
                    f"{reference.describe()} not found in namespace {namespace}: create it and the job proceeds",
                )
            )
    return missing


def _converge_children(
    context: Context,
    job: FineTuneJob,
    config,
    training_job: dict[str, Any] | None,
    create_job: bool = True,
    shared_cache: bool = False,
):
    """Create what is missing, in dependency order: the Job last, so its pods find everything.

    Returns the training Job and whether some of the spec waits to be applied: while the Job runs, its
    pods (and their retries, which resume the same run) keep the configuration and pod template they
    started with; changes apply when the job is suspended, as resources do.
    """
    kube, caches, namespace, name = context.kube, context.caches, job.metadata.namespace, job.metadata.name
    account = render_service_account(job)
    if account is not None and caches[SERVICEACCOUNTS].get(namespace, service_account_name(name)) is None:
        _create(context, account)
    running = training_job is not None and not training_job["spec"].get("suspend")
    config_map = render_config_map(job, config, context.progress_ca)
    existing_config = caches[CONFIGMAPS].get(namespace, config_map_name(name))
    if existing_config is None:
        existing_config = _create(context, config_map)
    applied, pending = config_map["data"], False
    if existing_config.get("data") != config_map["data"]:
        if running:
            applied, pending = existing_config.get("data") or {}, True
        else:
            patched = kube.merge_patch(CONFIGMAPS, namespace, config_map_name(name), {"data": config_map["data"]})
            caches[CONFIGMAPS].written(patched)
    if caches[SERVICES].get(namespace, service_name(name)) is None:
        _create(context, render_service(job, context.settings))

    desired = render_job(job, context.settings, data_hash(applied), shared_cache)
    if training_job is None:
        return (_create(context, desired) if create_job else None), False
    existing_hash = training_job["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION)
    pending = pending or (running and existing_hash != desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION])
    return _converge_job(context, job, desired, training_job), pending


def _create(context: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create a child the cache lacks. Should one exist all the same (its watch event on the way), the 409
    fails this reconcile, and the event brings the job back with the child in the cache: nothing is read."""
    created, _ = context.kube.create(manifest, read_existing=False)
    context.caches[KINDS[manifest["kind"]]].created(created)
    return created


def _patch_job(context: Context, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    patched = context.kube.merge_patch(JOBS, namespace, name, patch)
    context.caches[JOBS].written(patched)
    return patched


def _converge_job(context: Context, job: FineTuneJob, desired: dict[str, Any], existing: dict[str, Any]):
    kube, namespace, name = context.kube, job.metadata.namespace, existing["metadata"]["name"]
    existing_hash = existing["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION)
    desired_hash = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    suspended = bool(existing["spec"].get("suspend"))
    job_status = existing.get("status", {})
    if (
        existing_hash != desired_hash
        and suspended
        and not job_status.get("active")
        and not job_status.get("terminating")
    ):
        # A Job's pod template is immutable; while it is suspended and its pods are gone (a stopped trainer
        # may still be saving its checkpoint in its grace period) it is safe to replace it.
        # The next reconcile creates the new one, which resumes from the last checkpoint.
        log.info("replacing suspended Job %s/%s to apply the changed spec", namespace, name)
        kube.delete(JOBS, namespace, name)
        return None
    queued = any(label.startswith("kueue.x-k8s.io/") for label in existing["metadata"].get("labels", {}))
    if job.spec.suspend and not suspended:
        return _patch_job(context, namespace, name, {"spec": {"suspend": True}})
    if not job.spec.suspend and suspended and not queued:
        # A queued Job is unsuspended by Kueue when it admits it, never by us.
        return _patch_job(context, namespace, name, {"spec": {"suspend": False}})
    config_hash = desired["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    if existing["metadata"].get("annotations", {}).get(CONFIG_HASH_ANNOTATION) != config_hash:
        patch = {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: config_hash}}}
        return _patch_job(context, namespace, name, patch)
    return existing


def _status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch = {}
    for key in OWNED_STATUS_FIELDS:
        if desired.get(key) != current.get(key):
            patch[key] = desired.get(key)
    return patch


def _write_status(context: Context, raw: dict[str, Any], job: FineTuneJob, status) -> None:
    desired = status.to_api()
    patch = _status_patch(raw.get("status") or {}, desired)
    if not patch:
        return
    try:
        written = context.kube.merge_patch(
            FINETUNEJOBS, job.metadata.namespace, job.metadata.name, {"status": patch}, "status"
        )
    except KubeError as error:
        if error.status != 404:
            raise
    else:
        context.caches[FINETUNEJOBS].written(written)


def _report_invalid(context: Context, raw: dict[str, Any], error: ValidationError) -> str:
    """A stored object the models refuse (written before a schema change, say): say so, touch nothing."""
    from finetune_core.api import Condition

    message = "; ".join(format_validation_error(error))[:2048]
    now = utc_now()
    condition = Condition(
        type="Created",
        status="False",
        reason="InvalidSpec",
        message=f"the spec is invalid: {message}",
        last_transition_time=now,
        observed_generation=raw["metadata"].get("generation"),
    ).to_api()
    current = (raw.get("status") or {}).get("conditions") or []
    observed = (raw.get("status") or {}).get("observedGeneration") == raw["metadata"].get("generation")
    if observed and any(c.get("type") == "Created" and c.get("message") == condition["message"] for c in current):
        return "Pending"
    conditions = [c for c in current if c.get("type") != "Created"] + [condition]
    # observedGeneration too: it was seen, and what was seen is invalid (Argo CD shows Degraded, not Progressing).
    patch = {
        "status": {
            "phase": "Pending",
            "conditions": conditions,
            "observedGeneration": raw["metadata"].get("generation"),
        }
    }
    written = context.kube.merge_patch(
        FINETUNEJOBS, raw["metadata"]["namespace"], raw["metadata"]["name"], patch, "status"
    )
    context.caches[FINETUNEJOBS].written(written)
    return "Pending"


# -- the model catalog ---------------------------------------------------------------------------------
# A job that names a FineTuneModel (spec.model.name) is reconciled as the effective job catalog.resolve()
# makes of it: everything above renders that one exactly as a job that gave a uri. A refused job gets no
# children; its ModelResolved condition names the limit.


def _resolve_model(context: Context, job: FineTuneJob) -> tuple[FineTuneJob, Resolved | Refused | None]:
    conditions = job.status.conditions
    if job.spec.model.name is None or is_true(conditions, "Failed") or is_true(conditions, "Published"):
        return job, None  # a failed or published job is done with its model
    raw = context.caches[FINETUNEMODELS].get("", job.spec.model.name)  # cluster-scoped: no namespace
    try:
        entry = FineTuneModel.model_validate(raw) if raw is not None else None
    except ValidationError:
        # Stored before a schema change, say: the admin's to fix; what is wrong is not the tenant's to read.
        return job, Refused("ModelInvalid", f"FineTuneModel {job.spec.model.name} is invalid: ask the platform admin")
    enforce = not is_finished(job.status)
    labels: dict[str, str] = {}
    if enforce and entry is not None and labels_needed(entry.spec.limits, job.metadata.namespace):
        # Read only when a selector decides. The labels are the namespace's, set by whoever may label namespaces
        # (the platform), never by the job's author. Not cached: a watch of the cluster's namespaces would take
        # a cluster-wide list and watch without a selector, for the few catalog jobs that need one namespace.
        namespace = context.kube.get(NAMESPACES, None, job.metadata.namespace)
        labels = (namespace or {}).get("metadata", {}).get("labels") or {}
    outcome = resolve(job.spec, entry, job.metadata.namespace, labels, enforce)
    if isinstance(outcome, Refused):
        return job, outcome
    return job.model_copy(update={"spec": outcome.spec}), outcome


def _model_resolved(job: FineTuneJob, status, model: Resolved | Refused | None, now: str) -> list:
    if model is None:
        return []
    value, reason = ("True", "Resolved") if isinstance(model, Resolved) else ("False", model.reason)
    change = set_condition(
        status.conditions, "ModelResolved", value, reason, model.message, now, job.metadata.generation
    )
    return [change] if change else []
