"""Who is calling: a TokenReview says which ServiceAccount and which pod the token is bound to; the
pod, its Job and the FineTuneJob must then be one chain of owners, and the pod must be rank 0.

Pure: the caller fetches the objects, this decides. Every refusal has a reason for the metrics and
an HTTP status: 401 when the token itself is not good, 403 when a good token asks for the wrong job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Refusal(Exception):
    status: int
    reason: str  # snake_case, a metrics label
    message: str


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


def caller_from_review(review_status: dict[str, Any], namespace: str, audience: str) -> Caller:
    """The pod a reviewed token belongs to; refuses tokens that are invalid, foreign or not pod-bound."""
    if not review_status.get("authenticated"):
        # Expired, wrong audience, revoked, or bound to a deleted pod: the API server does not say which.
        raise Refusal(401, "invalid_token", "the token is not valid for this endpoint")
    if audience not in (review_status.get("audiences") or []):
        # An authenticator that ignores spec.audiences answers without them: its yes is not for us.
        raise Refusal(401, "invalid_token", "the token is not valid for this endpoint's audience")
    user = review_status.get("user") or {}
    username = user.get("username", "")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise Refusal(403, "not_a_service_account", "only trainer pods may report progress")
    account_namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if account_namespace != namespace:
        raise Refusal(403, "wrong_namespace", "the token belongs to another namespace")
    extra = user.get("extra") or {}
    pod_names, pod_uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    if not pod_names or not pod_uids:
        raise Refusal(403, "not_bound_to_pod", "the token must be a projected token bound to the trainer pod")
    return Caller(namespace, account, pod_names[0], pod_uids[0])


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def check_chain(
    caller: Caller,
    pod: dict[str, Any] | None,
    training_job: dict[str, Any] | None,
    finetunejob: dict[str, Any] | None,
) -> None:
    """The calling pod is rank 0 of the training Job of the FineTuneJob named in the request."""
    if finetunejob is None:
        raise Refusal(404, "job_not_found", "no such FineTuneJob")
    if pod is None or pod["metadata"].get("uid") != caller.pod_uid:
        raise Refusal(403, "pod_gone", "the pod the token is bound to no longer exists")
    if training_job is None or not _owned_by(training_job, finetunejob["metadata"]["uid"]):
        raise Refusal(403, "wrong_job", "the FineTuneJob has no training Job this pod could belong to")
    if not _owned_by(pod, training_job["metadata"]["uid"]):
        raise Refusal(403, "wrong_job", "the pod does not belong to this FineTuneJob")
    if (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "0") != "0":
        raise Refusal(403, "not_rank_zero", "only rank 0 reports progress")
