"""The objects a FineTuneJob refers to and that must exist before its pods can start."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.api import FineTuneJob
from finetune_core.uri import parse_uri

from ..naming import storage_secret_name
from ..settings import Settings
from .session_policy import minted_inputs, uses_minted_credentials
from .trainer_config import output_secret


@dataclass(frozen=True)
class Reference:
    kind: str  # Secret | ConfigMap | PersistentVolumeClaim | ServiceAccount
    name: str
    field: str  # where the job names it

    def describe(self) -> str:
        return f"{self.kind} {self.name} ({self.field})"


def pvc_claim(uri: str | None) -> str | None:
    if uri and uri.startswith("pvc://"):
        return parse_uri(uri).authority
    return None


def claims(job: FineTuneJob, settings: Settings) -> dict[str, bool]:
    """PersistentVolumeClaims the pods mount: claim -> whether the trainer writes to it."""
    spec = job.spec
    read_only_uris = [spec.model.uri, *(s.uri for s in spec.data.train)]
    if spec.data.eval and spec.data.eval.uri:
        read_only_uris.append(spec.data.eval.uri)
    if spec.data.general:
        read_only_uris.append(spec.data.general.uri)
    result: dict[str, bool] = {}
    for uri in read_only_uris:
        if claim := pvc_claim(uri):
            result.setdefault(claim, False)
    if claim := pvc_claim(spec.output.uri or settings.default_output_uri):
        result[claim] = True
    return dict(sorted(result.items()))


def credential_secrets(job: FineTuneJob, settings: Settings) -> dict[str, str]:
    """purpose (model, data, output) -> Secret name, for the Secrets mounted into the trainer."""
    spec = job.spec
    secrets = {}
    if spec.model.credentials_secret_ref:
        secrets["model"] = spec.model.credentials_secret_ref.name
    if spec.data.credentials_secret_ref:
        secrets["data"] = spec.data.credentials_secret_ref.name
    if name := output_secret(job, settings):
        secrets["output"] = name
    if uses_minted_credentials(job, settings):
        minted = storage_secret_name(job.metadata.name)
        secrets["output"] = minted
        for purpose in minted_inputs(job):
            secrets.setdefault(purpose, minted)
    return secrets


def _template_references(job: FineTuneJob) -> list[Reference]:
    """Secrets, ConfigMaps and claims that spec.template's env and volumes need (optional ones aside)."""
    template = job.spec.template
    found = []
    for index, variable in enumerate(template.env):
        source = variable.value_from or {}
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            ref = source.get(key)
            if isinstance(ref, dict) and ref.get("name") and not ref.get("optional"):
                found.append(Reference(kind, ref["name"], f"spec.template.env[{index}].valueFrom.{key}"))
    for index, volume in enumerate(template.volumes):
        where = f"spec.template.volumes[{index}]"
        secret, config_map, claim = volume.secret or {}, volume.config_map or {}, volume.persistent_volume_claim or {}
        if secret.get("secretName") and not secret.get("optional"):
            found.append(Reference("Secret", secret["secretName"], f"{where}.secret"))
        if config_map.get("name") and not config_map.get("optional"):
            found.append(Reference("ConfigMap", config_map["name"], f"{where}.configMap"))
        if claim.get("claimName"):
            found.append(Reference("PersistentVolumeClaim", claim["claimName"], f"{where}.persistentVolumeClaim"))
    return found


def references(job: FineTuneJob, settings: Settings) -> list[Reference]:
    spec = job.spec
    fields = {
        "model": "spec.model.credentialsSecretRef",
        "data": "spec.data.credentialsSecretRef",
        "output": "spec.output.credentialsSecretRef"
        if spec.output.credentials_secret_ref
        else "operator default output",
    }
    # The minted Secret is not waited for: the operator creates it, once the Job exists.
    minted = {"output", *minted_inputs(job)} if uses_minted_credentials(job, settings) else set()
    found = [
        Reference("Secret", name, fields[purpose])
        for purpose, name in credential_secrets(job, settings).items()
        if purpose not in minted
    ]
    found += [Reference("Secret", s.name, "spec.template.imagePullSecrets") for s in spec.template.image_pull_secrets]
    found += [Reference("PersistentVolumeClaim", claim, "a pvc:// URI") for claim in claims(job, settings)]
    found += _template_references(job)
    if spec.template.service_account_name:
        found.append(
            Reference("ServiceAccount", spec.template.service_account_name, "spec.template.serviceAccountName")
        )
    unique: dict[tuple[str, str], Reference] = {}
    for reference in found:
        unique.setdefault((reference.kind, reference.name), reference)
    return list(unique.values())
