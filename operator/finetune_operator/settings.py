"""The operator's own configuration, from command-line flags or FINETUNE_* environment variables.

Flags win over the environment; the Helm chart sets the environment. Every value is validated
at start-up, so a misconfigured operator stops at once with a message naming the setting,
instead of failing on the first FineTuneJob.
"""

from __future__ import annotations

import argparse
import os
from typing import Annotated, Literal

from finetune_core.api import format_validation_error
from finetune_core.api.base import DNS_SUBDOMAIN_PATTERN, STORAGE_URI_PATTERN
from finetune_core.api.quantity import parse_quantity
from finetune_core.endpoints import EndpointInvalid, normalise_endpoint
from finetune_core.uri import parse_uri
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
PROGRESS_AUDIENCE = "finetune.dev/progress"


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means all namespaces (cluster-wide)."
    )
    trainer_image: str = Field(DEFAULT_TRAINER_IMAGE, min_length=1, description="Default trainer image.")
    trainer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    default_output_uri: str | None = Field(
        None, pattern=STORAGE_URI_PATTERN, description="output.uri of jobs that set none (s3:// or pvc://)."
    )
    default_output_secret: str | None = Field(
        None, description="Secret with S3 credentials for the default output (in each job's namespace)."
    )
    sts_credentials_secret: str | None = Field(
        None,
        description="Secret in the operator's namespace with the keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; "
        "AWS_ENDPOINT_URL and AWS_REGION of the default output's store) of the identity that mints per-job "
        "credentials with STS AssumeRole. Set: every job writing to the default output gets credentials "
        "of its own, limited to its own prefixes.",
    )
    sts_endpoint: str | None = Field(
        None, pattern=r"^https?://", description="STS endpoint; default: the store's AWS_ENDPOINT_URL (or AWS's)."
    )
    sts_role_arn: str | None = Field(
        None,
        min_length=20,
        description="Role the minting identity assumes (AWS needs one; MinIO ignores it).",
    )
    sts_duration_seconds: int = Field(
        3600, ge=900, le=43200, description="Lifetime of the minted credentials; re-minted at half of it."
    )
    sts_region: str | None = Field(None, min_length=1, description="Region of the STS endpoint; default: the Secret's.")
    s3_endpoint: str | None = Field(
        None,
        description="The platform's S3 endpoint (scheme://host[:port]): a Secret's AWS_ENDPOINT_URL may name it; "
        "empty: AWS's own S3 only.",
    )
    allowed_s3_endpoints: list[str] = Field(
        default_factory=list, description="Other S3 endpoints a Secret's AWS_ENDPOINT_URL may name (url,...)."
    )
    allow_local_files: bool = Field(
        False, description="Local mode: read file:// artifacts from the operator's own filesystem (never in a cluster)."
    )
    verification_timeout_seconds: float = Field(
        300.0, gt=0, le=3600, description="Time allowed for all the reads of one look at a store (one verification)."
    )
    progress_url: str | None = Field(
        None,
        pattern=r"^https://",
        description="HTTPS URL of this operator's progress endpoint as the trainer pods reach it.",
    )
    progress_port: int = Field(8443, ge=0, le=65535, description="Port of the progress endpoint (0: disabled).")
    progress_tls_secret: str | None = Field(
        None, description="namespace/name of a kubernetes.io/tls Secret for the progress endpoint."
    )
    progress_audience: str = Field(PROGRESS_AUDIENCE, min_length=1)
    progress_tls_refresh_seconds: float = Field(
        3600.0, gt=0, description="How often the progress endpoint's certificate is reloaded (or re-issued)."
    )
    operator_namespace: str | None = Field(
        None, description="The operator's own namespace, where it keeps its progress CA Secret."
    )
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of /metrics (0: disabled).")
    metrics_secure: bool = Field(
        True,
        description="Serve /metrics over HTTPS, to bearer tokens the API server authenticates (TokenReview) and "
        "authorizes (SubjectAccessReview: get on the non-resource URL /metrics). false: plain HTTP on 127.0.0.1 "
        "only, for local development.",
    )
    tls_hosts: list[Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]] = Field(
        default_factory=list,
        description="DNS names of the operator's Service, in its own serving certificate beside the progress "
        "URL's host (name,...): what Prometheus verifies /metrics against.",
    )
    health_port: int = Field(
        8081, ge=0, le=65535, description="Port of /healthz (liveness) and /readyz (readiness); 0: not served."
    )
    leader_election: bool = Field(
        True,
        description="Elect a leader with the Lease finetune-operator in operator_namespace: only the leader "
        "reconciles and writes, so several replicas may run (the others wait as standbys). Needs operator_namespace; "
        "without it (a local run) a single copy runs unelected.",
    )
    leader_election_lease_duration_seconds: float = Field(
        15.0, gt=0, le=3600, description="How long a standby waits after the leader's last renewal before taking over."
    )
    leader_election_renew_deadline_seconds: float = Field(
        10.0, gt=0, le=3600, description="How long the leader keeps retrying to renew before it gives up (and exits)."
    )
    leader_election_retry_period_seconds: float = Field(
        2.0, gt=0, le=600, description="How often the leader renews and a standby tries to acquire."
    )
    pod_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="This replica's identity in the Lease (the chart sets the pod's name); default: the host name "
        "and a random suffix, so two copies on one host never share an identity.",
    )
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    resync_seconds: float = Field(30.0, gt=0, description="How often every job is reconciled even without events.")
    termination_grace_seconds: int = Field(
        120, ge=10, le=3600, description="Time a preempted trainer gets to save its checkpoint."
    )
    rendezvous_port: int = Field(29500, ge=1024, le=65535)
    verifier_image: str | None = Field(
        None,
        min_length=1,
        description="Image of the pods that verify pvc:// artifacts (the operator's own image will do); "
        "default: the trainer image.",
    )
    verifier_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the verification image; default: the trainer image's."
    )
    verifier_image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (in each adapter's namespace) to pull the verification image (name,...).",
    )
    verifier_node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of the verification pods (key=value,...)."
    )
    verifier_tolerations: list[dict[str, str]] = Field(
        default_factory=list, description="Tolerations of the verification pods (key[=value]:Effect,...)."
    )

    preflight: bool = Field(
        False,
        description="Run a CPU-only preflight Job (validate and count the data, plan and estimate) before a job's "
        "training Job is created.",
    )
    preflight_cpu: str = Field("1", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU of the preflight pod.")
    preflight_memory: str = Field(
        "4Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", description="Memory of the preflight pod."
    )
    preflight_deadline_seconds: int = Field(
        1800, ge=60, le=86400, description="activeDeadlineSeconds of the preflight Job."
    )
    cache: bool = Field(
        False,
        description="A shared cache of models and token stores per tenant namespace (a ReadWriteMany claim the "
        "operator creates), filled by the preflight and read by the training pods; needs preflight.",
    )
    cache_storage_class: str | None = Field(
        None, max_length=253, description="storageClassName of the cache claims (unset: the cluster's default)."
    )
    cache_size: str = Field(
        "200Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", description="Storage request of each cache claim."
    )
    cache_max_bytes: int = Field(
        150 * 2**30,
        ge=1,
        description="Bytes the entries of one cache may hold; the preflight evicts the least recently used beyond it.",
    )
    throughput_history: int = Field(
        5, ge=1, le=50, description="Finished jobs per throughput-table row whose median refines the estimate."
    )

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: list[str]) -> list[str]:
        return sorted({n.strip() for n in value if n.strip()})

    @field_validator("default_output_uri")
    @classmethod
    def _output_uri(cls, value: str | None) -> str | None:
        # The operator joins the namespace and job names onto it: a '..' or '//' in it is refused here, at start.
        if value is not None:
            parse_uri(value)
        return value

    @field_validator("progress_tls_secret")
    @classmethod
    def _secret_ref(cls, value: str | None) -> str | None:
        if value is not None:
            parts = value.split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError("must be namespace/name")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _normalised(value) if value else None

    @field_validator("allowed_s3_endpoints", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return value.split(",") if isinstance(value, str) else value

    @field_validator("allowed_s3_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        return [_normalised(url) for url in value if url.strip()]

    @field_validator("verifier_image_pull_secrets", "tls_hosts", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("verifier_node_selector", mode="before")
    @classmethod
    def _selector(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.strip() for item in value.split(",") if item.strip()]
            if any("=" not in pair for pair in pairs):
                raise ValueError("must be key=value[,key=value...]")
            return dict(pair.split("=", 1) for pair in pairs)
        return value

    @field_validator("verifier_tolerations", mode="before")
    @classmethod
    def _tolerations(cls, value: object) -> object:
        if isinstance(value, str):
            return [_toleration(item.strip()) for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _sts(self) -> Settings:
        if self.sts_credentials_secret is None:
            return self
        if not (self.default_output_uri or "").startswith("s3://"):
            raise ValueError("sts_credentials_secret: per-job credentials need an s3:// default_output_uri")
        if self.default_output_secret:
            raise ValueError(
                "sts_credentials_secret: jobs get minted credentials; a shared default_output_secret would undo that"
            )
        if not self.operator_namespace:
            raise ValueError("sts_credentials_secret: the Secret is read in operator_namespace, which is not set")
        return self

    @model_validator(mode="after")
    def _cache_fits(self) -> Settings:
        if self.cache and not self.preflight:
            # Only the preflight fills the cache and only a plan made with it mounts it: a cache without the
            # preflight would be a setting that silently does nothing (the chart turns both on together).
            raise ValueError("cache needs preflight: the preflight fills the shared cache")
        # The preflight evicts only beyond cache_max_bytes, and a fill stages its copy on the same volume: a limit
        # at or above the claim's size lets the volume fill up (every later fill failing) before any eviction.
        if self.cache and self.cache_max_bytes >= parse_quantity(self.cache_size):
            raise ValueError(f"cache_max_bytes must be below cache_size ({self.cache_size}), with room for a fill")
        return self

    @model_validator(mode="after")
    def _leader_election(self) -> Settings:
        # The leader must give up (renew deadline) before a standby may take over (lease duration, counted
        # from up to half a retry period before the standby saw the last renewal: leader.changed_at), and
        # must have time for more than one renewal attempt, jittered, within the deadline (client-go's rule).
        lease = self.leader_election_lease_duration_seconds
        if lease <= self.leader_election_renew_deadline_seconds + self.leader_election_retry_period_seconds:
            raise ValueError(
                "leader_election_lease_duration_seconds must be greater than the renew deadline plus the retry period"
            )
        if self.leader_election_renew_deadline_seconds <= 1.2 * self.leader_election_retry_period_seconds:
            raise ValueError("leader_election_renew_deadline_seconds must be greater than 1.2 x the retry period")
        return self

    @property
    def elects_leader(self) -> bool:
        """Leader election is on and has a namespace to keep its Lease in."""
        return self.leader_election and self.operator_namespace is not None

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def sts_enabled(self) -> bool:
        return self.sts_credentials_secret is not None

    @property
    def allowed_endpoints(self) -> frozenset[str]:
        """Every S3 endpoint (normalised) the operator may send a request to; AWS's own S3 besides."""
        return frozenset([*([self.s3_endpoint] if self.s3_endpoint else []), *self.allowed_s3_endpoints])


def _normalised(url: str) -> str:
    try:
        return normalise_endpoint(url)
    except EndpointInvalid as error:
        raise ValueError(f"{url!r} {error}") from None


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _toleration(text: str) -> dict[str, str]:
    """key=value:Effect -> Equal; key:Effect -> Exists (what the taint of a node pool looks like)."""
    key_value, _, effect = text.rpartition(":")
    if effect not in TAINT_EFFECTS or not key_value:
        raise ValueError(f"{text!r} must be key[=value]:Effect with Effect one of {', '.join(TAINT_EFFECTS)}")
    key, has_value, value = key_value.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


# setting name -> (flag, environment variable, help)
_OPTIONS = {
    "namespaces": ("--namespace", "FINETUNE_NAMESPACES", "namespace to watch (repeatable; comma list in env)"),
    "trainer_image": ("--trainer-image", "FINETUNE_TRAINER_IMAGE", "default trainer image"),
    "trainer_image_pull_policy": ("--trainer-image-pull-policy", "FINETUNE_TRAINER_IMAGE_PULL_POLICY", None),
    "default_output_uri": ("--default-output-uri", "FINETUNE_DEFAULT_OUTPUT_URI", "output.uri for jobs without one"),
    "default_output_secret": ("--default-output-secret", "FINETUNE_DEFAULT_OUTPUT_SECRET", None),
    "sts_credentials_secret": (
        "--sts-credentials-secret",
        "FINETUNE_STS_CREDENTIALS_SECRET",
        "Secret (operator's namespace) of the identity minting per-job S3 credentials",
    ),
    "sts_endpoint": ("--sts-endpoint", "FINETUNE_STS_ENDPOINT", None),
    "sts_role_arn": ("--sts-role-arn", "FINETUNE_STS_ROLE_ARN", None),
    "sts_duration_seconds": ("--sts-duration-seconds", "FINETUNE_STS_DURATION_SECONDS", None),
    "sts_region": ("--sts-region", "FINETUNE_STS_REGION", None),
    "s3_endpoint": ("--s3-endpoint", "FINETUNE_S3_ENDPOINT", "the platform's S3 endpoint, scheme://host[:port]"),
    "allowed_s3_endpoints": ("--allowed-s3-endpoints", "FINETUNE_ALLOWED_S3_ENDPOINTS", "other S3 endpoints, url,..."),
    "allow_local_files": ("--allow-local-files", "FINETUNE_ALLOW_LOCAL_FILES", "read file:// artifacts (local runs)"),
    "verification_timeout_seconds": (
        "--verification-timeout-seconds",
        "FINETUNE_VERIFICATION_TIMEOUT_SECONDS",
        "time allowed for one verification's reads",
    ),
    "progress_url": ("--progress-url", "FINETUNE_PROGRESS_URL", "progress endpoint URL as pods reach it"),
    "progress_port": ("--progress-port", "FINETUNE_PROGRESS_PORT", None),
    "progress_tls_secret": ("--progress-tls-secret", "FINETUNE_PROGRESS_TLS_SECRET", "namespace/name"),
    "progress_audience": ("--progress-audience", "FINETUNE_PROGRESS_AUDIENCE", None),
    "progress_tls_refresh_seconds": ("--progress-tls-refresh-seconds", "FINETUNE_PROGRESS_TLS_REFRESH_SECONDS", None),
    "operator_namespace": ("--operator-namespace", "FINETUNE_OPERATOR_NAMESPACE", "the operator's own namespace"),
    "metrics_port": ("--metrics-port", "FINETUNE_METRICS_PORT", None),
    "metrics_secure": ("--metrics-secure", "FINETUNE_METRICS_SECURE", "true (HTTPS, authorized) or false (local dev)"),
    "tls_hosts": ("--tls-hosts", "FINETUNE_TLS_HOSTS", "the Service's DNS names, name,..."),
    "health_port": ("--health-port", "FINETUNE_HEALTH_PORT", None),
    "leader_election": ("--leader-elect", "FINETUNE_LEADER_ELECTION", "true (default) or false: one copy only"),
    "leader_election_lease_duration_seconds": (
        "--leader-elect-lease-duration",
        "FINETUNE_LEADER_ELECTION_LEASE_DURATION_SECONDS",
        "seconds a standby waits after the leader's last renewal",
    ),
    "leader_election_renew_deadline_seconds": (
        "--leader-elect-renew-deadline",
        "FINETUNE_LEADER_ELECTION_RENEW_DEADLINE_SECONDS",
        "seconds the leader retries a renewal before it exits",
    ),
    "leader_election_retry_period_seconds": (
        "--leader-elect-retry-period",
        "FINETUNE_LEADER_ELECTION_RETRY_PERIOD_SECONDS",
        "seconds between renewals (leader) and attempts (standby)",
    ),
    "pod_name": ("--pod-name", "FINETUNE_POD_NAME", "this replica's identity in the Lease"),
    "log_format": ("--log-format", "FINETUNE_LOG_FORMAT", "json or text"),
    "log_level": ("--log-level", "FINETUNE_LOG_LEVEL", None),
    "resync_seconds": ("--resync-seconds", "FINETUNE_RESYNC_SECONDS", None),
    "termination_grace_seconds": ("--termination-grace-seconds", "FINETUNE_TERMINATION_GRACE_SECONDS", None),
    "verifier_image": ("--verifier-image", "FINETUNE_VERIFIER_IMAGE", "image of the pods verifying pvc:// artifacts"),
    "verifier_image_pull_policy": ("--verifier-image-pull-policy", "FINETUNE_VERIFIER_IMAGE_PULL_POLICY", None),
    "verifier_image_pull_secrets": (
        "--verifier-image-pull-secrets",
        "FINETUNE_VERIFIER_IMAGE_PULL_SECRETS",
        "name,...",
    ),
    "verifier_node_selector": ("--verifier-node-selector", "FINETUNE_VERIFIER_NODE_SELECTOR", "key=value,..."),
    "preflight": ("--preflight", "FINETUNE_PREFLIGHT", "true: a CPU preflight Job plans every job before training"),
    "preflight_cpu": ("--preflight-cpu", "FINETUNE_PREFLIGHT_CPU", None),
    "preflight_memory": ("--preflight-memory", "FINETUNE_PREFLIGHT_MEMORY", None),
    "preflight_deadline_seconds": ("--preflight-deadline-seconds", "FINETUNE_PREFLIGHT_DEADLINE_SECONDS", None),
    "throughput_history": ("--throughput-history", "FINETUNE_THROUGHPUT_HISTORY", None),
    "cache": ("--cache", "FINETUNE_CACHE", "true: a shared model cache claim per namespace (needs --preflight)"),
    "cache_storage_class": ("--cache-storage-class", "FINETUNE_CACHE_STORAGE_CLASS", None),
    "cache_size": ("--cache-size", "FINETUNE_CACHE_SIZE", None),
    "cache_max_bytes": ("--cache-max-bytes", "FINETUNE_CACHE_MAX_BYTES", None),
    "verifier_tolerations": ("--verifier-tolerations", "FINETUNE_VERIFIER_TOLERATIONS", "key[=value]:Effect,..."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (flag, env, help_text) in _OPTIONS.items():
        default_text = f" (env {env})"
        if name == "namespaces":
            parser.add_argument(flag, dest=name, action="append", default=None, help=(help_text or "") + default_text)
        elif Settings.model_fields[name].annotation is bool:  # --allow-local-files alone means true
            parser.add_argument(
                flag, dest=name, nargs="?", const="true", default=None, help=(help_text or "") + default_text
            )
        else:
            parser.add_argument(
                flag, dest=name, default=None, help=(help_text or name.replace("_", " ")) + default_text
            )


def from_arguments(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, (_flag, env, _) in _OPTIONS.items():
        value = getattr(args, name, None)
        if value is None and environ.get(env):
            value = environ[env].split(",") if name == "namespaces" else environ[env]
        if value is not None:
            values[name] = value
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        names = {name: f"{flag} / {env}" for name, (flag, env, _) in _OPTIONS.items()}
        lines = []
        for line in format_validation_error(error):
            field, _, message = line.partition(": ")
            name, bracket, rest = field.partition("[")  # a list's item: tls_hosts[1]
            item = rest.partition("]")[0]
            where = names.get(name, name) + (f" (item {int(item) + 1})" if bracket and item.isdigit() else "")
            lines.append(f"{where}: {message}")
        raise SettingsError("invalid operator settings:\n  " + "\n  ".join(lines)) from None
