"""Minting short-lived storage credentials with STS AssumeRole (any store that implements it: AWS, MinIO).

The minting identity's keys come from a Secret in the operator's own namespace, passed to the client
explicitly: never the ambient chain (environment, instance profile, IRSA). Each session carries an
inline policy (render/session_policy.py), so what it can reach is the intersection of that policy and
the identity's own. Values are never logged, put in status or in events.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging

from finetune_core.api import FineTuneJob
from finetune_core.s3 import DEFAULT_REGION

from .kube import SECRETS, Kube
from .render.session_policy import check_in_namespace, policy_text, read_policy, uses_minted_credentials
from .render.storage_secret import MintedSession
from .render.trainer_config import output_secret
from .settings import Settings
from .storage import StorageUnreachable, secret_credentials

log = logging.getLogger(__name__)

# Stores that ignore the role (MinIO: the session inherits the identity's policy) still want a well-formed one.
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/finetune-operator"


def minting_identity(kube: Kube, settings: Settings) -> dict[str, str]:
    name, namespace = settings.sts_credentials_secret, settings.operator_namespace
    secret = kube.get(SECRETS, namespace, name)
    if secret is None:
        raise StorageUnreachable("CredentialsNotMinted", f"the operator's STS Secret {namespace}/{name} is missing")
    data = secret.get("data") or {}
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
    identity = {key: base64.b64decode(data[key]).decode().strip() for key in keys if key in data}
    if not identity.get("AWS_ACCESS_KEY_ID") or not identity.get("AWS_SECRET_ACCESS_KEY"):
        raise StorageUnreachable(
            "CredentialsNotMinted",
            f"the operator's STS Secret {namespace}/{name} lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY",
        )
    return identity


def mint(kube: Kube, settings: Settings, policy: str, session_name: str) -> MintedSession:
    """One AssumeRole call; StorageUnreachable (CredentialsNotMinted) when STS refuses or cannot be reached."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    identity = minting_identity(kube, settings)
    store_endpoint = identity.get("AWS_ENDPOINT_URL")
    region = settings.sts_region or identity.get("AWS_REGION") or DEFAULT_REGION
    client = boto3.client(
        "sts",
        endpoint_url=settings.sts_endpoint or store_endpoint,
        region_name=region,
        aws_access_key_id=identity["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=identity["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=None,
        config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
    )
    minted_at = dt.datetime.now(dt.UTC)
    try:
        answer = client.assume_role(
            RoleArn=settings.sts_role_arn or PLACEHOLDER_ROLE_ARN,
            RoleSessionName=session_name[:64],
            Policy=policy,
            DurationSeconds=settings.sts_duration_seconds,
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise StorageUnreachable("CredentialsNotMinted", f"STS AssumeRole was refused ({code})") from None
    except BotoCoreError as error:
        raise StorageUnreachable("CredentialsNotMinted", f"STS AssumeRole failed: {type(error).__name__}") from None
    credentials = answer["Credentials"]
    log.info("minted storage credentials for %s, valid until %s", session_name, credentials["Expiration"])
    return MintedSession(
        access_key_id=credentials["AccessKeyId"],
        secret_access_key=credentials["SecretAccessKey"],
        session_token=credentials["SessionToken"],
        minted_at=minted_at,
        expires_at=credentials["Expiration"],
        endpoint=store_endpoint,
        region=identity.get("AWS_REGION") or DEFAULT_REGION,
    )


def read_credentials(kube: Kube, settings: Settings, namespace: str, uri: str, field: str) -> dict[str, str]:
    """Read-only credentials for one prefix in ``namespace``'s part of the shared output (the operator's own
    reads of what a job wrote). ForeignPrefix when ``uri`` is in another namespace's part."""
    check_in_namespace(settings, namespace, uri, field)
    return mint(kube, settings, policy_text(read_policy(uri), field), f"{namespace}.read").values()


def job_output_credentials(kube: Kube, settings: Settings, job: FineTuneJob, uri: str) -> dict[str, str]:
    """Credentials for the operator's reads of a job's output at ``uri``: a minted read-only session where the
    job's pods get minted credentials, else the keys of the job's output Secret."""
    namespace = job.metadata.namespace
    if uses_minted_credentials(job, settings):
        return read_credentials(kube, settings, namespace, uri, "spec.output")
    return secret_credentials(kube, namespace, output_secret(job, settings))
