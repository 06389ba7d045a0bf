"""Is a stored artifact what its ModelAdapter says, complete, and loadable by vLLM? Pure decisions
over what the caller read from storage."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_core.api import (
    MANIFEST_FILE_NAME,
    Manifest,
    ManifestEntry,
    ModelAdapterSpec,
    digest_of,
    format_validation_error,
    required_max_lora_rank,
)
from finetune_core.api.manifest import MAX_MANIFEST_FILES
from pydantic import ValidationError

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


def check_manifest(spec: ModelAdapterSpec, manifest_bytes: bytes | None) -> Manifest:
    if manifest_bytes is None:
        raise ArtifactProblem(
            "ArtifactNotFound", f"no {MANIFEST_FILE_NAME} at {spec.artifact.uri}: the artifact is missing or incomplete"
        )
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as error:
        if any(problem["type"] == "too_long" and problem["loc"] == ("files",) for problem in error.errors()):
            raise ArtifactProblem(
                "TooManyFiles", f"{MANIFEST_FILE_NAME} lists more than {MAX_MANIFEST_FILES} files"
            ) from None
        problems = format_validation_error(error)  # field paths and what is wrong, never the values
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ArtifactProblem("ManifestInvalid", f"{MANIFEST_FILE_NAME} is not a valid manifest: {shown}") from None
    if digest_of(manifest.files) != manifest.digest:
        raise ArtifactProblem("DigestMismatch", f"{MANIFEST_FILE_NAME}'s digest does not match its own file list")
    if spec.artifact.digest and spec.artifact.digest != manifest.digest:
        raise ArtifactProblem(
            "DigestMismatch",
            f"spec.artifact.digest is {spec.artifact.digest} but the stored artifact's is {manifest.digest}",
        )
    return manifest


def check_file(entry: ManifestEntry, size: int | None, sha256_of: Callable[[str, int], str | None] | None) -> bool:
    """One file of the manifest is there with its size and, when ``sha256_of`` is given, its content.

    The size comes first: a file of another size is never read, and a hash reads at most the size
    the manifest gives, so a manifest claiming 1 byte for a huge object costs one size request.
    Returns whether the file was hashed.
    """
    if size is None:
        raise ArtifactProblem("FileMissing", f"{entry.path} is listed in the manifest but missing")
    if size != entry.size:
        raise ArtifactProblem("FileCorrupt", f"{entry.path} has {size} bytes, the manifest says {entry.size}")
    if sha256_of is None:
        return False
    if sha256_of(entry.path, entry.size) != entry.sha256:
        raise ArtifactProblem("FileCorrupt", f"{entry.path}'s sha256 does not match the manifest")
    return True


def check_files(
    manifest: Manifest,
    size_of: Callable[[str], int | None],
    sha256_of: Callable[[str, int], str | None] | None,
) -> str:
    """Every file of the manifest (check_file), read through the two functions given. Returns a summary."""
    hashed = sum(check_file(entry, size_of(entry.path), sha256_of) for entry in manifest.files)
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


def shown(value: Any, limit: int = 80) -> str:
    """A value of the tenant's config in a message: itself when short, else only what kind it is."""
    text = repr(value)
    if len(text) <= limit and text.isprintable():
        return text
    if isinstance(value, list | dict | str):
        return f"a {type(value).__name__} of {len(value)} {'characters' if isinstance(value, str) else 'items'}"
    return f"a {type(value).__name__}"


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
        result.problems.append(f"peft_type is {shown(adapter_config.get('peft_type'))}, not LORA")
    if adapter_config.get("bias", "none") != "none":
        result.problems.append(f"bias is {shown(adapter_config.get('bias'))}; vLLM needs 'none'")
    if adapter_config.get("use_dora"):
        result.problems.append("use_dora is true; vLLM does not serve DoRA adapters")
    if adapter_config.get("modules_to_save"):
        result.problems.append(f"modules_to_save is {shown(adapter_config['modules_to_save'])}; vLLM cannot load them")
    rank = adapter_config.get("r")
    if not isinstance(rank, int) or rank < 1:
        result.problems.append(f"r (the rank) is {shown(rank)}")
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
        result.problems.append(f"target_modules is {shown(targets)}, not a module name or a list of them")
        targets = []
    result.target_modules = sorted({t.rsplit(".", 1)[-1] for t in targets})
    recorded_base = adapter_config.get("base_model_name_or_path")
    if recorded_base is not None and not isinstance(recorded_base, str):
        result.problems.append(f"base_model_name_or_path is {shown(recorded_base)}, not a string")
    elif not _matches_base(recorded_base, spec):
        result.problems.append(
            f"base_model_name_or_path is {shown(recorded_base)}, which is not spec.baseModel ({spec.base_model.uri})"
        )
    model_type = (base_config or {}).get("model_type")
    known = linear_modules(model_type) if isinstance(model_type, str) else None
    if base_config is None:
        result.notes.append(f"no {BASE_CONFIG}: target modules not checked against the architecture")
    elif known is None:
        result.notes.append(f"architecture {shown(base_config.get('model_type'))} unknown: target modules not checked")
    else:
        missing = [t for t in result.target_modules if t not in known]
        if missing:
            result.problems.append(f"target modules {shown(missing)} do not exist in {model_type} models")
    return result


def parse_json(raw: bytes | None, name: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:  # its message gives a position, not the content
        raise ArtifactProblem("ManifestInvalid", f"{name} is not valid JSON: {error}") from None
    except (ValueError, RecursionError):  # not UTF-8, or nested deeper than the parser goes
        raise ArtifactProblem("ManifestInvalid", f"{name} is not valid JSON") from None
    return value if isinstance(value, dict) else None
