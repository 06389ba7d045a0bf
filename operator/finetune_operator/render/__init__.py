"""Pure builders: a FineTuneJob and the operator's settings in, Kubernetes manifests out. No I/O."""

from .children import config_data, data_hash, render_config_map, render_service, render_service_account
from .job import render_job, render_pod_template, trainer_command
from .references import Reference, claims, credential_secrets, references
from .trainer_config import ResolutionError, adapter_name, artifact_version, resolve_trainer_config

__all__ = [
    "Reference",
    "ResolutionError",
    "adapter_name",
    "artifact_version",
    "claims",
    "config_data",
    "credential_secrets",
    "data_hash",
    "references",
    "render_config_map",
    "render_job",
    "render_pod_template",
    "render_service",
    "render_service_account",
    "resolve_trainer_config",
    "trainer_command",
]
