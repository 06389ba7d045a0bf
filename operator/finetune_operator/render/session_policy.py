"""Inline session policies of the per-job credentials the operator mints with STS AssumeRole.

A session's permissions are the intersection of the minting identity's own policy and the policy
built here, so these functions decide what one job's pods (or one of the operator's own reads) can
reach: write on the job's checkpoint and artifact prefixes, read on the s3:// inputs it names without
credentials of its own, and nothing under another namespace's part of the shared output.

Prefixes are granted as ``key/*`` (and an input's ``key`` itself), never ``key*``: namespace ``team``
must not reach ``team-b/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune_core.api import FineTuneJob
from finetune_core.uri import parse_uri

from ..settings import Settings
from .trainer_config import ResolutionError, resolve_trainer_config

# What STS accepts in the Policy parameter (MinIO's maxSTSSessionPolicySize; AWS's plain-text limit).
MAX_POLICY_BYTES = 2048
WRITE_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    key: str  # without leading or trailing slash; "" is the whole bucket

    @classmethod
    def of(cls, uri: str) -> S3Prefix:
        parsed = parse_uri(uri)
        if parsed.scheme != "s3":
            raise ValueError(f"{parsed.scheme}:// is not an S3 prefix")
        return cls(parsed.authority, parsed.path)

    def contains(self, other: S3Prefix) -> bool:
        return self.bucket == other.bucket and (not self.key or f"{other.key}/".startswith(f"{self.key}/"))

    def overlaps(self, other: S3Prefix) -> bool:
        return self.contains(other) or other.contains(self)

    def child(self, name: str) -> S3Prefix:
        return S3Prefix(self.bucket, f"{self.key}/{name}" if self.key else name)

    def object_arns(self, or_itself: bool) -> list[str]:
        """The objects under the prefix, and the object of that very key when ``or_itself`` (an input's URI
        may name one object, data.train[].uri often does)."""
        base = f"arn:aws:s3:::{self.bucket}"
        if not self.key:
            return [f"{base}/*"]
        return [f"{base}/{self.key}", f"{base}/{self.key}/*"] if or_itself else [f"{base}/{self.key}/*"]

    def list_pattern(self) -> str:
        return f"{self.key}/*" if self.key else "*"  # both clients list a prefix as "key/"


class ForeignPrefix(ResolutionError):
    """A job or an adapter names a part of the shared output that belongs to another namespace."""


def shared_output(settings: Settings) -> S3Prefix:
    """The default output as a prefix; without an s3:// one, a bucket named "" that contains no S3 URI."""
    uri = settings.default_output_uri or ""
    return S3Prefix.of(uri) if uri.startswith("s3://") else S3Prefix("", "")


def namespace_prefix(settings: Settings, namespace: str) -> S3Prefix:
    return shared_output(settings).child(namespace)


def check_in_namespace(settings: Settings, namespace: str, uri: str, field: str) -> None:
    """Refuse ``uri`` when it reaches into the shared output outside ``<output>/<namespace>/``."""
    if not uri.startswith("s3://"):
        return
    target, shared = S3Prefix.of(uri), shared_output(settings)
    if target.overlaps(shared) and not namespace_prefix(settings, namespace).contains(target):
        raise ForeignPrefix(
            field,
            f"{uri} is in the operator's shared output outside this namespace's part of it "
            f"(s3://{shared.bucket}/{namespace_prefix(settings, namespace).key}/): name a location of this "
            "namespace's own",
        )


def uses_minted_credentials(job: FineTuneJob, settings: Settings) -> bool:
    """Jobs writing to the operator's default output, with no Secret of their own, get minted credentials."""
    output = job.spec.output
    return settings.sts_enabled and output.uri is None and output.credentials_secret_ref is None


def minted_inputs(job: FineTuneJob) -> dict[str, list[tuple[str, str]]]:
    """purpose -> [(field, s3:// uri)] of the inputs read with the minted credentials (no Secret of their own)."""
    spec = job.spec
    found: dict[str, list[tuple[str, str]]] = {}
    if spec.model.credentials_secret_ref is None and spec.model.uri.startswith("s3://"):
        found["model"] = [("spec.model.uri", spec.model.uri)]
    if spec.data.credentials_secret_ref is None:
        data = [(f"spec.data.train[{i}].uri", source.uri) for i, source in enumerate(spec.data.train)]
        if spec.data.eval and spec.data.eval.uri:
            data.append(("spec.data.eval.uri", spec.data.eval.uri))
        if spec.data.general:
            data.append(("spec.data.general.uri", spec.data.general.uri))
        if data := [(field, uri) for field, uri in data if uri.startswith("s3://")]:
            found["data"] = data
    return found


def job_policy(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    """The session policy of a job's pods. Raises ForeignPrefix for an input in another namespace's part."""
    namespace = job.metadata.namespace or "default"
    inputs = [item for items in minted_inputs(job).values() for item in items]
    for field, uri in inputs:
        check_in_namespace(settings, namespace, uri, field)
    output = resolve_trainer_config(job, settings).output
    writable = [S3Prefix.of(output.checkpoints_uri), S3Prefix.of(output.artifact_uri)]
    readable = _unique(S3Prefix.of(uri) for _, uri in inputs)
    return _policy(writable, readable)


def read_policy(uri: str) -> dict[str, Any]:
    """Read-only on one prefix: the operator's own reads of what a job wrote."""
    return _policy([], [S3Prefix.of(uri)])


def policy_text(policy: dict[str, Any], field: str = "spec") -> str:
    text = json.dumps(policy, separators=(",", ":"))
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise ResolutionError(
            field,
            f"the job names too many s3:// inputs for one session policy ({len(text.encode())} bytes, STS takes "
            f"{MAX_POLICY_BYTES}): use fewer prefixes, or a data credentialsSecretRef of its own",
        )
    return text


def _unique(prefixes) -> list[S3Prefix]:
    return list(dict.fromkeys(prefixes))


def _policy(writable: list[S3Prefix], readable: list[S3Prefix]) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    if writable:
        arns = [arn for prefix in writable for arn in prefix.object_arns(or_itself=False)]
        statements.append({"Effect": "Allow", "Action": WRITE_ACTIONS, "Resource": arns})
    if readable:
        arns = [arn for prefix in readable for arn in prefix.object_arns(or_itself=True)]
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": arns})
    listed: dict[str, list[str]] = {}
    for prefix in [*writable, *readable]:
        listed.setdefault(prefix.bucket, []).append(prefix.list_pattern())
    for bucket, patterns in listed.items():
        statement = {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]}
        if "*" not in patterns:  # a whole bucket is listed without a prefix, which no condition matches
            statement["Condition"] = {"StringLike": {"s3:prefix": list(dict.fromkeys(patterns))}}
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}
