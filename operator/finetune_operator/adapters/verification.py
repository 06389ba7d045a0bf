"""One verification of a stored artifact, wherever it runs: in the operator (s3://, file://) or in a
verification pod that mounts a claim (pvc://), which hands the result back as its termination message.

The result is a small JSON document so that it fits the 4096 bytes of a termination message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from finetune_core.api import MANIFEST_FILE_NAME, ModelAdapterSpec

from ..storage import ObjectRefused, Store
from .verify import (
    ADAPTER_CONFIG,
    BASE_CONFIG,
    ArtifactProblem,
    check_files,
    check_manifest,
    check_serving,
    parse_json,
)

# Adapters are small (MBs): hash every file. Full models can be hundreds of GB: check sizes and trust the
# manifest's hashes (written last by the trainer) rather than downloading them on every verification.
HASH_LIMIT_BYTES = 1 << 30
MESSAGE_LIMIT_BYTES = 4096  # what the kubelet keeps of a termination message
TEXT_LIMIT = 600  # per message or list entry, so that the whole result stays under that limit


@dataclass
class Verification:
    """What one look at an artifact found. ``problem_reason`` set: the artifact itself is not right."""

    problem_reason: str | None = None
    problem_message: str | None = None
    digest: str | None = None
    size_bytes: int | None = None
    summary: str = ""
    target_modules: list[str] = field(default_factory=list)
    required_max_lora_rank: int | None = None
    serving_problems: list[str] = field(default_factory=list)
    serving_notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.problem_reason is None

    def to_message(self) -> str:
        """Compact JSON under the termination message limit (long texts are cut, never the numbers)."""
        data = asdict(self)
        for key in ("problem_message", "summary"):
            if data[key]:
                data[key] = data[key][:TEXT_LIMIT]
        for key in ("serving_problems", "serving_notes"):
            data[key] = [text[:TEXT_LIMIT] for text in data[key][:4]]
        message = json.dumps(data, separators=(",", ":"))
        while len(message.encode()) > MESSAGE_LIMIT_BYTES and data["target_modules"]:
            data["target_modules"].pop()
            message = json.dumps(data, separators=(",", ":"))
        return message

    @classmethod
    def from_message(cls, message: str) -> Verification:
        """The result a verification pod printed; ValueError when the message is not one."""
        try:
            data = json.loads(message)
            if isinstance(data, dict):
                return cls(**data)
        except (json.JSONDecodeError, TypeError):
            pass
        raise ValueError(f"not a verification result: {message[-300:]!r}")


def verify_artifact(spec: ModelAdapterSpec, store: Store) -> Verification:
    """Read the artifact's manifest and files from ``store`` and check them against ``spec``.

    Every read is bounded (storage.py): an object over its bound is a problem of the artifact.
    StorageUnreachable (credentials, endpoint, the deadline) propagates: that says nothing about it.
    """
    try:
        manifest = check_manifest(spec, store.read_small(MANIFEST_FILE_NAME))
        hash_all = manifest.size_bytes <= HASH_LIMIT_BYTES
        summary = check_files(manifest, store.size, store.sha256 if hash_all else None)
        adapter_config = parse_json(store.read_small(ADAPTER_CONFIG), ADAPTER_CONFIG)
        base_config = parse_json(store.read_small(BASE_CONFIG), BASE_CONFIG)
    except (ArtifactProblem, ObjectRefused) as problem:
        return Verification(problem_reason=problem.reason, problem_message=problem.message)
    compatibility = check_serving(spec, adapter_config, base_config)
    return Verification(
        digest=manifest.digest,
        size_bytes=manifest.size_bytes,
        summary=summary,
        target_modules=compatibility.target_modules,
        required_max_lora_rank=compatibility.required_max_lora_rank,
        serving_problems=compatibility.problems,
        serving_notes=compatibility.notes,
    )
