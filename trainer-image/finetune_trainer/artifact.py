"""The published artifact: the adapter (or full model), its tokenizer, the training report, the manifest.

    <artifactUri>/
        adapter_config.json, adapter_model.safetensors   (LoRA/QLoRA; PEFT's format, which vLLM loads)
        config.json, model*.safetensors                  (full fine-tuning instead)
        tokenizer files, chat template
        metrics.jsonl                                    the training curve
        training_report.json                             api.TrainingReport
        manifest.json                                    api.Manifest, written last

An artifact is immutable: once its manifest exists nothing overwrites it. A retry of the same job
finds its own artifact (same job uid and configuration) and is done; anything else already there
is an error the user must resolve by choosing another version.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from finetune_core.api import (
    MANIFEST_FILE_NAME,
    REPORT_FILE_NAME,
    ArtifactReport,
    Manifest,
    TrainingReport,
    manifest_of_directory,
)

from . import log
from .errors import ConfigError
from .losses import unwrapped
from .storage import Location, open_location


@dataclass(frozen=True)
class ArtifactTarget:
    """The artifact directory as a name inside its parent location (so that it can be sealed)."""

    parent: Location
    name: str

    @property
    def uri(self) -> str:
        return f"{self.parent.uri}/{self.name}"

    @classmethod
    def of(cls, uri: str) -> ArtifactTarget:
        parent_uri, _, name = uri.rstrip("/").rpartition("/")
        if not name or "://" not in parent_uri:
            raise ConfigError(f"output.artifactUri {uri!r} needs a parent directory and a name")
        return cls(open_location(parent_uri, "output"), name)

    def published(self) -> tuple[Manifest, TrainingReport | None] | None:
        """The manifest (and report) of a complete artifact already there, or None."""
        location = self.parent.child(self.name)
        raw = location.read_bytes(MANIFEST_FILE_NAME)
        if raw is None:
            return None
        manifest = Manifest.model_validate_json(raw)
        report_raw = location.read_bytes(REPORT_FILE_NAME)
        report = TrainingReport.model_validate_json(report_raw) if report_raw else None
        return manifest, report

    def staging(self) -> Path:
        staging = self.parent.staging_dir(self.name)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging


def is_same_job(report: TrainingReport | None, job_uid: str, config_sha256: str) -> bool:
    """Whether an artifact's report says this job (same object, same configuration) wrote it."""
    return report is not None and report.job.get("uid", "") == job_uid and report.config_sha256 == config_sha256


BASE_MODEL_CONFIG = "base_model_config.json"


def write_model_files(
    staging: Path,
    model: torch.nn.Module,
    tokenizer,
    *,
    is_adapter: bool,
    model_uri: str,
    revision: str | None,
    dtype: torch.dtype,
    state_dict: dict | None = None,
) -> None:
    """The adapter (or the full model in ``dtype``) and the tokenizer, in the formats serving stacks load."""
    inner = unwrapped(model)
    if is_adapter:
        inner.save_pretrained(staging, safe_serialization=True)
        # PEFT's model card names the local download path, which means nothing to a reader of the
        # artifact; training_report.json describes the run.
        (staging / "README.md").unlink(missing_ok=True)
        _describe_base_model(staging / "adapter_config.json", model_uri, revision)
        # The base's architecture, so a reader can check the target modules exist in it without the base.
        inner.get_base_model().config.to_json_file(staging / BASE_MODEL_CONFIG)
    else:
        # Serving stacks want the compute dtype (bf16 on GPU), not the fp32 master weights.
        weights = state_dict if state_dict is not None else inner.state_dict()
        weights = {
            k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype) for k, v in weights.items()
        }
        inner.config.use_cache = True
        inner.save_pretrained(staging, state_dict=weights, safe_serialization=True)
        inner.config.use_cache = False
    tokenizer.save_pretrained(staging)


def _describe_base_model(adapter_config: Path, model_uri: str, revision: str | None) -> None:
    """Point the adapter at its base as the job named it, pinned to the resolved commit.

    PEFT records ``all-linear`` as the full path of every module it chose; the module names alone
    (q_proj, down_proj, ...) select the same layers, read the same in every serving stack, and let a
    reader check them against the architecture.
    """
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model_uri
    config["revision"] = revision
    config["inference_mode"] = True
    targets = config.get("target_modules")
    if isinstance(targets, list):
        config["target_modules"] = sorted({name.rsplit(".", 1)[-1] for name in targets})
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def publish(target: ArtifactTarget, staging: Path, report: TrainingReport) -> ArtifactReport:
    """Write the report, then the manifest last, and make the artifact visible; never overwrite."""
    (staging / REPORT_FILE_NAME).write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    manifest = manifest_of_directory(staging)
    existing = target.published()
    if existing is not None:
        if existing[0].digest != manifest.digest:
            raise ConfigError(
                f"output.artifactUri {target.uri} already holds another artifact ({existing[0].digest}): "
                "artifacts are immutable, publish under a new version"
            )
        log.info("artifact_already_published", uri=target.uri, digest=manifest.digest)
        return ArtifactReport(uri=target.uri, digest=manifest.digest, size_bytes=manifest.size_bytes)
    target.parent.upload(staging, target.name)
    target.parent.seal(staging, target.name, MANIFEST_FILE_NAME, manifest.model_dump_json(indent=2).encode() + b"\n")
    log.info("artifact_published", uri=target.uri, digest=manifest.digest, size_bytes=manifest.size_bytes)
    return ArtifactReport(uri=target.uri, digest=manifest.digest, size_bytes=manifest.size_bytes)
