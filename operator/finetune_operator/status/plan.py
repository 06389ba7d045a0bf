"""What the preflight Job said, and what it does to a FineTuneJob's status. Pure: no I/O.

The preflight pod is the tenant's (its image, its data): its termination message is bounded before it
is parsed, validated with PreflightReport, and only numbers are taken from it, plus the ``file:line``
of invalid rows, each shown only when it names one of the job's own data URIs. A failure other than
bad data is described by its exit code alone; the pod's words stay in its log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from finetune_core.api import PREFLIGHT_MESSAGE_LIMIT, ExitCode, FineTuneJob, Plan, PreflightPlan, PreflightReport
from finetune_core.api import describe_exit_code as describe_code
from finetune_core.api.finetunejob import ModelStatus
from pydantic import ValidationError

from ..naming import PLAN_HASH_ANNOTATION, TRAINER_CONTAINER, preflight_job_name
from ..render.preflight import plan_hash
from ..render.shared_cache import mounts_cache
from .conditions import set_condition
from .observe import REASON_BY_EXIT_CODE, job_condition, pods_of

# Stale: the preflight Job planned other spec fields than the job has now (render/preflight.py plan_inputs).
State = Literal["Missing", "Stale", "Running", "Planned", "DataError", "Failed"]


@dataclass(frozen=True)
class Preflight:
    state: State
    plan: PreflightPlan | Plan | None = None  # a Plan: status.plan, read before its pod went
    origins: tuple[str, ...] = ()
    reason: str = ""
    message: str = ""


def plans_current_spec(job: FineTuneJob, preflight_job: dict[str, Any]) -> bool:
    """Whether ``preflight_job`` planned the spec the job has now. A Job without the stamp (made by an older
    operator) cannot say, and is taken for stale: a preflight costs CPU minutes, a wrong plan a GPU run."""
    annotations = preflight_job.get("metadata", {}).get("annotations") or {}
    return annotations.get(PLAN_HASH_ANNOTATION) == plan_hash(job)


def starting_plan(job: FineTuneJob, outcome: Preflight | None) -> PreflightPlan | Plan | None:
    """The plan the training pods start on. A job that waits for its preflight has none until it is Planned; a
    job past it (its training Job exists) keeps status.plan, so its configuration stays the one its Job was
    created with; without a preflight, none."""
    if outcome is not None:
        return outcome.plan if outcome.state == "Planned" else None
    return job.status.plan


def pinned_revision(job: FineTuneJob, outcome: Preflight | None) -> str | None:
    """The model revision the training pods load: the one their plan resolved (else the spec's)."""
    plan = starting_plan(job, outcome)
    return plan.model_revision if plan is not None else None


def plan_used_cache(job: FineTuneJob, outcome: Preflight | None) -> bool:
    """Whether the training pods read the model from the namespace's shared cache: exactly when their plan was
    made with it (the preflight that filled it reports its counts)."""
    plan = starting_plan(job, outcome)
    return plan is not None and plan.cache is not None


def preflight_outcome(job: FineTuneJob, preflight_job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Preflight:
    """The preflight's state, believed only along the FineTuneJob -> Job -> pod chain of controllers."""
    if preflight_job is not None and not plans_current_spec(job, preflight_job):
        return Preflight("Stale")
    mine = pods_of(preflight_job, pods, job.metadata.uid)
    if preflight_job is None or (not mine and not _finished(preflight_job)):
        return Preflight("Missing" if preflight_job is None else "Running")
    name = preflight_job_name(job.metadata.name)
    if job_condition(preflight_job, "Complete") is not None:
        report = _report(mine, exit_code=0)
        if report is None and job.status.plan is not None:
            # Planned already (status.plan is cleared whenever its Job is stale or missing), and its pod gone
            # since: a dry run outlives its preflight pod (pod GC, a CPU node scaled away, kubectl delete).
            return Preflight("Planned", plan=job.status.plan)
        if report is None or report.outcome != "Planned" or report.plan is None:
            return Preflight("Failed", reason="PreflightUnreadable", message=f"Job {name} left no readable plan")
        plan = report.plan
        if plan.cache is not None and not mounts_cache(preflight_job):
            # Counts of a cache the pod was not given (cache off, or no usable claim of ours): forged.
            # Believed, they would mount that claim into the training pods and feed the cache counters.
            plan = plan.model_copy(update={"cache": None})
        return Preflight("Planned", plan=plan)
    failed = job_condition(preflight_job, "Failed") or job_condition(preflight_job, "FailureTarget")
    if failed is None:
        return Preflight("Running")
    code = _exit_code(mine)
    if code is None and failed.get("reason") == "PodFailurePolicy":
        return Preflight("Running")  # the pod's exit, which the Job controller acted on, is on its way to the cache
    if code == ExitCode.DATA_ERROR:
        report = _report(mine, exit_code=int(code))
        origins = tuple(o for o in (report.origins if report else []) if _names_job_data(job, o))
        return Preflight("DataError", origins=origins, reason="DataError")
    reason = REASON_BY_EXIT_CODE.get(code, "PreflightFailed") if code is not None else "PreflightFailed"
    why = f"exited with code {code} ({describe_code(code)})" if code is not None else failed.get("reason", "failed")
    return Preflight("Failed", reason=reason, message=f"the preflight Job {name} {why}: kubectl logs job/{name}")


def _finished(preflight_job: dict[str, Any]) -> bool:
    return any(job_condition(preflight_job, t) for t in ("Complete", "Failed", "FailureTarget"))


def _terminated(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == TRAINER_CONTAINER and terminated:
                found.append(terminated)
    return sorted(found, key=lambda t: t.get("finishedAt") or "")


def _exit_code(pods: list[dict[str, Any]]) -> ExitCode | None:
    failures = [t for t in _terminated(pods) if t.get("exitCode")]
    if not failures:
        return None
    try:
        return ExitCode(int(failures[-1]["exitCode"]))
    except ValueError:
        return ExitCode.FAILURE


def _report(pods: list[dict[str, Any]], *, exit_code: int) -> PreflightReport | None:
    for terminated in reversed(_terminated(pods)):
        message = terminated.get("message") or ""
        if terminated.get("exitCode") != exit_code or len(message) > PREFLIGHT_MESSAGE_LIMIT + 96:
            continue
        try:
            return PreflightReport.model_validate_json(message)
        except ValidationError:
            continue
    return None


def data_uris(job: FineTuneJob) -> list[str]:
    data = job.spec.data
    uris = [source.uri for source in data.train]
    if data.eval is not None and data.eval.uri:
        uris.append(data.eval.uri)
    if data.general is not None:
        uris.append(data.general.uri)
    return uris


def _names_job_data(job: FineTuneJob, origin: str) -> bool:
    """``origin`` is uri:line or uri/file-in-it:line of one of the job's own data URIs."""
    location = origin.rsplit(":", 1)[0]
    for uri in data_uris(job):
        base = uri.rstrip("/")
        if location == base or location.startswith(base + "/"):
            return True
    return False


def data_error_message(outcome: Preflight) -> str:
    rows = "; ".join(outcome.origins) if outcome.origins else "see the preflight's log for the rows"
    return (
        f"the preflight found data that cannot be trained on; no training Job was created. Invalid rows: {rows}. "
        "Fix the data (kubectl logs on the preflight Job says what is wrong with each row)"
    )


def plan_from(preflight: PreflightPlan) -> Plan:
    return Plan(
        model_revision=preflight.model_revision,
        parameters=preflight.parameters,
        examples=preflight.examples,
        tokens=preflight.tokens,
        steps_per_epoch=preflight.steps_per_epoch,
        steps=preflight.total_steps,
        epochs=preflight.epochs,
        trained_tokens=preflight.trained_tokens,
        cache=preflight.cache,
    )


def apply_outcome(status, job: FineTuneJob, outcome: Preflight, now: str, estimate) -> list:
    """The status of a job whose training Job waits for its preflight; ``estimate(plan)`` -> Estimate.

    Returns the condition changes (for events)."""
    changes = []

    def condition(type_: str, value: str, reason: str, message: str) -> None:
        change = set_condition(status.conditions, type_, value, reason, message, now, job.metadata.generation)
        if change is not None:
            changes.append(change)

    name = preflight_job_name(job.metadata.name)
    if outcome.state in ("Missing", "Stale", "Running"):
        # No training Job yet, and no current plan: a plan of an earlier spec is never shown as this one's.
        status.plan = None
        status.model = None
        if outcome.state == "Stale":
            message = f"the spec changed after {name} planned it: the preflight runs again before any GPU is requested"
            condition("Planned", "False", "SpecChanged", message)
        else:
            message = f"validating and counting the data on CPU (Job {name}) before any GPU is requested"
            condition("Planned", "False", "Preflight", message)
        condition("Created", "False", "AwaitingPreflight", f"the training Job is created once {name} succeeds")
        return changes
    if outcome.state == "Planned" and outcome.plan is not None:
        if status.plan is None:
            status.plan = plan_from(outcome.plan)
            status.plan.estimate = estimate(status.plan)
        if outcome.plan.model_revision:
            status.model = ModelStatus(revision=outcome.plan.model_revision)  # pinned: training loads this one
        found = status.plan.estimate
        cost = f"; estimated {found.duration} of training, {found.gpu_hours:g} GPU-hours" if found else ""
        condition(
            "Planned",
            "True",
            "Planned",
            f"{status.plan.steps} steps over {status.plan.trained_tokens} tokens{cost}",
        )
        if job.spec.suspend:
            status.phase = "Suspended"
            condition(
                "Suspended", "True", "DryRun", "planned and estimated; no training Job while spec.suspend is true"
            )
        return changes
    reason = outcome.reason or "PreflightFailed"
    message = data_error_message(outcome) if outcome.state == "DataError" else outcome.message
    status.phase = "Failed"
    status.completion_time = status.completion_time or now
    condition("Planned", "False", reason, message)
    condition("Running", "False", "NotStarted", "no training Job was created")
    condition("Failed", "True", reason, message)
    condition("Succeeded", "False", reason, message)
    return changes
