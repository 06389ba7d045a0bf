"""Is a stored artifact what its ModelAdapter says, complete, and loadable by vLLM? Pure decisions
over what the caller read from storage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..api import MANIFEST_FILE_NAME, Manifest, ModelAdapterSpec, digest_of, required_max_lora_rank
from .architectures import linear_modules

ADAPTER_CONFIG = "adapter_config.json"
BASE_CONFIG = "base_model_config.json"
VLLM_MAX_RANK = 512


class ArtifactProblem(Exception):
    """The artifact is missing, incomplete or not what the spec says: ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class StoredFile:
    size: int | None  # None: missing
    sha256: str | None = None  # None: not hashed (too large to hash on every verification)


def check_manifest(spec: ModelAdapterSpec, manifest_bytes: bytes | None) -> Manifest:
    if manifest_bytes is None:
        raise ArtifactProblem(
            "ArtifactNotFound", f"no {MANIFEST_FILE_NAME} at {spec.artifact.uri}: the artifact is missing or incomplete"
        )
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as error:
        raise ArtifactProblem("ManifestInvalid", f"{MANIFEST_FILE_NAME} is not a valid manifest: {error}") from None
    if digest_of(manifest.files) != manifest.digest:
        raise ArtifactProblem("DigestMismatch", f"{MANIFEST_FILE_NAME}'s digest does not match its own file list")
    if spec.artifact.digest and spec.artifact.digest != manifest.digest:
        raise ArtifactProblem(
            "DigestMismatch",
            f"spec.artifact.digest is {spec.artifact.digest} but the stored artifact's is {manifest.digest}",
        )
    return manifest


def check_files(manifest: Manifest, stored: dict[str, StoredFile]) -> str:
    """Every file of the manifest is there with its size (and content, when hashed). Returns a summary."""
    hashed = 0
    for entry in manifest.files:
        found = stored.get(entry.path)
        if found is None or found.size is None:
            raise ArtifactProblem("FileMissing", f"{entry.path} is listed in the manifest but missing")
        if found.size != entry.size:
            raise ArtifactProblem("FileCorrupt", f"{entry.path} has {found.size} bytes, the manifest says {entry.size}")
        if found.sha256 is not None:
            if found.sha256 != entry.sha256:
                raise ArtifactProblem("FileCorrupt", f"{entry.path}'s sha256 does not match the manifest")
            hashed += 1
    total = len(manifest.files)
    if hashed == total:
        return f"{total} files verified against {manifest.digest}"
    return f"{total} files present with their sizes ({hashed} hashed) under {manifest.digest}"


@dataclass
class Compatibility:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank: int | None = None
    alpha: int | None = None
    target_modules: list[str] = field(default_factory=list)

    @property
    def required_max_lora_rank(self) -> int | None:
        return required_max_lora_rank(self.rank) if self.rank else None


def _matches_base(recorded: str | None, spec: ModelAdapterSpec) -> bool:
    if not recorded:
        return True  # nothing recorded: nothing contradicts the spec
    base = spec.base_model
    candidates = {base.uri, base.uri.removeprefix("hf://"), base.uri.rstrip("/")}
    if base.served_name:
        candidates.add(base.served_name)
    return recorded.rstrip("/") in {c.rstrip("/") for c in candidates}


def check_serving(
    spec: ModelAdapterSpec, adapter_config: dict[str, Any] | None, base_config: dict[str, Any] | None
) -> Compatibility:
    """vLLM's rules for LoRA adapters; a full model only needs its files."""
    result = Compatibility()
    if spec.format == "full-model":
        return result
    if adapter_config is None:
        result.problems.append(f"no {ADAPTER_CONFIG} in the artifact")
        return result
    if adapter_config.get("peft_type", "LORA") != "LORA":
        result.problems.append(f"peft_type is {adapter_config.get('peft_type')}, not LORA")
    if adapter_config.get("bias", "none") != "none":
        result.problems.append(f"bias is {adapter_config.get('bias')!r}; vLLM needs 'none'")
    if adapter_config.get("use_dora"):
        result.problems.append("use_dora is true; vLLM does not serve DoRA adapters")
    if adapter_config.get("modules_to_save"):
        result.problems.append(f"modules_to_save is {adapter_config['modules_to_save']}; vLLM cannot load them")
    rank = adapter_config.get("r")
    if not isinstance(rank, int) or rank < 1:
        result.problems.append(f"r (the rank) is {rank!r}")
    else:
        result.rank = rank
        if rank > VLLM_MAX_RANK:
            result.problems.append(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_RANK})")
        if spec.lora and spec.lora.rank != rank:
            result.problems.append(f"spec.lora.rank is {spec.lora.rank} but the adapter's rank is {rank}")
    alpha = adapter_config.get("lora_alpha")
    result.alpha = alpha if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        result.problems.append(f"target_modules is {targets!r}, not a module name or a list of them")
        targets = []
    result.target_modules = sorted({t.rsplit(".", 1)[-1] for t in targets})
    recorded_base = adapter_config.get("base_model_name_or_path")
    if recorded_base is not None and not isinstance(recorded_base, str):
        result.problems.append(f"base_model_name_or_path is {recorded_base!r}, not a string")
    elif not _matches_base(recorded_base, spec):
        result.problems.append(
            f"base_model_name_or_path is {recorded_base!r}, which is not spec.baseModel ({spec.base_model.uri})"
        )
    model_type = (base_config or {}).get("model_type")
    known = linear_modules(model_type) if isinstance(model_type, str) else None
    if base_config is None:
        result.notes.append(f"no {BASE_CONFIG}: target modules not checked against the architecture")
    elif known is None:
        result.notes.append(f"architecture {base_config.get('model_type')!r} unknown: target modules not checked")
    else:
        missing = [t for t in result.target_modules if t not in known]
        if missing:
            result.problems.append(f"target modules {missing} do not exist in {base_config.get('model_type')} models")
    return result


def parse_json(raw: bytes | None, name: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ArtifactProblem("ManifestInvalid", f"{name} is not valid JSON: {error}") from None
    return value if isinstance(value, dict) else None
