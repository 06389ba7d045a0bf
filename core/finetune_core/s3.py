"""The one way this project builds an S3 client, for the operator's reads and the trainer's transfers.

Every client signs only with the credentials it is given: the botocore session's credential chain is
emptied, so that keys missing from a Secret are never filled in from the process environment, ~/.aws,
an instance profile (a node's role, reachable from a tenant's pod) or IRSA. Endpoints configured in the
environment or in config files are ignored for the same reason: the endpoint is the Secret's
AWS_ENDPOINT_URL or AWS's own S3. Where a caller acts for a tenant with its own identity (the operator),
the endpoint must also be one the platform admin allows (``endpoints``).

Credentials are a mapping of the keys below; values are never logged or put in a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .endpoints import endpoint_problem

HF_KEYS = ("HF_TOKEN",)
S3_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",  # temporary credentials (STS, SSO, assumed roles) are refused without it
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_CREDENTIAL_EXPIRATION",  # minted per-job credentials: re-read from their files before this time
)
# Every key a credentials Secret may carry, for any scheme; nothing else of a Secret is read.
CREDENTIAL_KEYS = HF_KEYS + S3_KEYS
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class RequestPolicy:
    """How long one request may take and how often it is tried again: chosen per caller purpose."""

    retries: int  # attempts after the first
    mode: Literal["standard", "adaptive"]
    connect_timeout: float
    read_timeout: float
    validate_response_checksums: bool


# The operator reads a tenant's store inside a reconcile, under one deadline for the whole look: a store
# that does not answer is reported and looked at again on the next reconcile, so nothing waits long on an
# endpoint a tenant chose. It hashes what it reads itself (sha256 against the manifest) from the raw stream,
# so the store's own checksums add nothing there.
VERIFY = RequestPolicy(
    retries=2, mode="standard", connect_timeout=5, read_timeout=20, validate_response_checksums=False
)
# The trainer moves gigabytes in the middle of hours of GPU time: a failed checkpoint upload or model download
# costs far more than waiting, and many ranks uploading at once meet the store's throttling (503 SlowDown),
# which adaptive mode answers by slowing the client down rather than by failing.
TRANSFER = RequestPolicy(
    retries=10, mode="adaptive", connect_timeout=60, read_timeout=60, validate_response_checksums=True
)


class ClientRefused(Exception):
    """No client can be built from these credentials. ``reason`` is a condition reason (CamelCase);
    ``message`` names the key that is wrong and never carries a credential's value."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def client(
    credentials: Mapping[str, str],
    *,
    endpoint_allowlist: frozenset[str] | None,
    policy: RequestPolicy,
    refresh: Callable[[], Mapping[str, str]] | None = None,
):
    """A boto3 S3 client that signs with ``credentials`` only and talks to their endpoint only.

    ``endpoint_allowlist`` holds normalised endpoints (``endpoints.normalise_endpoint``) the credentials
    may name; None allows any, and is only for a process that runs as the tenant itself (the trainer in
    its own pod). ``refresh``, when given, returns the credentials again: the client asks for them in the
    last 15 minutes before AWS_CREDENTIAL_EXPIRATION, so a session longer than one credential lifetime
    never signs with expired keys. ClientRefused when keys are missing, the endpoint is not allowed, or
    the region or endpoint cannot be used.
    """
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
    from botocore.exceptions import BotoCoreError

    missing = [key for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not credentials.get(key)]
    if missing:
        raise ClientRefused(
            "CredentialsMissing",
            f"the credentials have no {' and no '.join(missing)}: S3 is reached only with the keys of a Secret",
        )
    endpoint = credentials.get("AWS_ENDPOINT_URL") or None
    if endpoint_allowlist is not None:
        problem = endpoint_problem(endpoint, endpoint_allowlist)
        if problem:
            raise ClientRefused("EndpointNotAllowed", problem)

    session = botocore.session.Session()
    providers = []
    if refresh is not None:

        def metadata() -> dict[str, str]:
            values = refresh()
            return {
                "access_key": values.get("AWS_ACCESS_KEY_ID") or "",
                "secret_key": values.get("AWS_SECRET_ACCESS_KEY") or "",
                "token": values.get("AWS_SESSION_TOKEN") or "",
                "expiry_time": values.get("AWS_CREDENTIAL_EXPIRATION") or "",
            }

        class Refreshing(CredentialProvider):
            METHOD = "finetune-refreshing-secret"

            def load(self):
                return RefreshableCredentials.create_from_metadata(metadata(), metadata, self.METHOD)

        providers.append(Refreshing())
    session.register_component("credential_provider", CredentialResolver(providers=providers))
    config = Config(
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        retries={"max_attempts": policy.retries, "mode": policy.mode},
        ignore_configured_endpoint_urls=True,
        response_checksum_validation="when_supported" if policy.validate_response_checksums else "when_required",
        signature_version="s3v4",
        # S3-compatible servers (MinIO, Ceph, on-prem appliances) rarely serve virtual-host bucket names.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    keys = {}
    if refresh is None:
        keys = {
            "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": credentials.get("AWS_SESSION_TOKEN") or None,
        }
    try:
        return boto3.Session(botocore_session=session).client(
            "s3",
            endpoint_url=endpoint,
            region_name=credentials.get("AWS_REGION") or DEFAULT_REGION,
            config=config,
            **keys,
        )
    except (BotoCoreError, ValueError):
        raise ClientRefused(
            "StorageError", "AWS_REGION or AWS_ENDPOINT_URL of the credentials cannot be used"
        ) from None
