"""The small children of a FineTuneJob: the pods' ServiceAccount, the trainer's ConfigMap and the
headless Service the ranks rendezvous through."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_core.api import CONFIG_FILE_NAME, FineTuneJob, TrainerConfig

from ..naming import child_labels, config_map_name, selector_labels, service_account_name, service_name
from ..settings import Settings
from . import paths
from .owner import owner_reference


def _metadata(job: FineTuneJob, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": child_labels(job.metadata.name),
        "ownerReferences": [owner_reference(job)],
    }


def render_service_account(job: FineTuneJob) -> dict[str, Any] | None:
    """A ServiceAccount without any API permissions; None when the user names their own."""
    if job.spec.template.service_account_name:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(job, service_account_name(job.metadata.name)),
        "automountServiceAccountToken": False,
    }


def config_data(config: TrainerConfig, progress_ca: str | None) -> dict[str, str]:
    data = {CONFIG_FILE_NAME: json.dumps(config.to_api(), indent=2, sort_keys=True)}
    if progress_ca:
        data[paths.PROGRESS_CA_KEY] = progress_ca
    return data


def data_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def render_config_map(job: FineTuneJob, config: TrainerConfig, progress_ca: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.metadata.name)),
        "data": config_data(config, progress_ca),
    }


def render_service(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job.metadata.name)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(job.metadata.name),
            # Ranks must find each other before any of them is Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port}],
        },
    }
