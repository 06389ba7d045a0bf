"""The Secret that carries a job's minted storage credentials to its pods, and when to mint them again.

The Secret is owned by the training Job: it goes with it, and a replaced Job gets fresh credentials.
Its annotations say when the credentials were minted, when they expire and for which policy, so the
refresh decision reads metadata only. The kubelet updates mounted Secret files in place; the trainer
re-reads them before its credentials expire (finetune_core.s3.client, given a refresh).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from finetune_core.api import FineTuneJob

from ..naming import (
    EXPIRES_AT_ANNOTATION,
    MINTED_AT_ANNOTATION,
    POLICY_HASH_ANNOTATION,
    child_labels,
    storage_secret_name,
)

# The key botocore reads an expiry from (AWS_CREDENTIAL_EXPIRATION, as its environment provider does).
EXPIRATION_KEY = "AWS_CREDENTIAL_EXPIRATION"


@dataclass(frozen=True)
class MintedSession:
    """Temporary credentials from STS; ``repr`` never shows a value."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    minted_at: dt.datetime
    expires_at: dt.datetime
    endpoint: str | None
    region: str

    def values(self) -> dict[str, str]:
        """The keys the operator's and the trainer's S3 clients read (finetune_core.s3.S3_KEYS)."""
        values = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
            "AWS_REGION": self.region,
            EXPIRATION_KEY: _timestamp(self.expires_at),
        }
        if self.endpoint:
            values["AWS_ENDPOINT_URL"] = self.endpoint
        return values


def policy_hash(policy_text: str) -> str:
    return hashlib.sha256(policy_text.encode()).hexdigest()[:16]


def render_storage_secret(
    job: FineTuneJob, training_job: dict[str, Any], session: MintedSession, policy_text: str
) -> dict[str, Any]:
    data = {key: base64.b64encode(value.encode()).decode() for key, value in session.values().items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": storage_secret_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": child_labels(job.metadata.name),
            "annotations": {
                POLICY_HASH_ANNOTATION: policy_hash(policy_text),
                MINTED_AT_ANNOTATION: _timestamp(session.minted_at),
                EXPIRES_AT_ANNOTATION: _timestamp(session.expires_at),
            },
            # The Job's own controller owns its pods; the Secret is ours to rewrite, owned by the Job so that
            # it goes with it. No blockOwnerDeletion: nothing waits for a Secret before deleting a Job.
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": training_job["metadata"]["name"],
                    "uid": training_job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "data": data,
    }


def mint_due_in(
    secret: dict[str, Any] | None, training_job: dict[str, Any], policy_text: str, now: dt.datetime
) -> float:
    """Seconds until the credentials must be minted again (0: now).

    Now when there are none, when they were minted for another policy or another Job (a replaced Job's
    Secret not yet collected), or when half of their lifetime has passed: the kubelet takes up to a
    minute or two to update the files, and the trainer refreshes in the last 15 minutes of a session.
    """
    if secret is None:
        return 0.0
    metadata = secret.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    owners = [ref.get("uid") for ref in metadata.get("ownerReferences") or []]
    if training_job["metadata"].get("uid") not in owners:
        return 0.0
    if annotations.get(POLICY_HASH_ANNOTATION) != policy_hash(policy_text):
        return 0.0
    try:
        minted = _parse(annotations[MINTED_AT_ANNOTATION])
        expires = _parse(annotations[EXPIRES_AT_ANNOTATION])
    except (KeyError, ValueError):
        return 0.0
    half_life = minted + (expires - minted) / 2
    return max(0.0, (half_life - now).total_seconds())


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
