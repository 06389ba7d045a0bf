"""Adapter artifacts as the trainer writes them, for the tiers that verify and publish them (e2e, in-process):
a real PEFT LoRA adapter of a tiny Llama with its manifest, uploaded to a real S3 server (MinIO)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from finetune_core.api import MANIFEST_FILE_NAME, manifest_of_directory


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A real PEFT LoRA adapter of a tiny Llama, with its manifest, as the trainer writes one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hack.tinymodels import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("base"))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "hf://example/tiny-llama"
    (out / "adapter_config.json").write_text(json.dumps(config))
    model.get_base_model().config.to_json_file(out / "base_model_config.json")
    write_manifest(out)
    return out


def new_bucket(minio) -> str:
    name = f"adapters-{uuid.uuid4().hex[:10]}"
    minio.create_bucket(name)
    return name


def write_manifest(directory: Path) -> str:
    manifest = manifest_of_directory(directory)
    (directory / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True, indent=2))
    return manifest.digest


def write_artifact(directory: Path) -> str:
    """A small valid LoRA artifact of a Llama (no weights worth the name), with its manifest; returns its digest."""
    directory.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": "hf://example/tiny-llama",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "base_model_config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    return write_manifest(directory)


def upload(minio, directory: Path, bucket: str, prefix: str) -> str:
    client = minio.client()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE_NAME):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    if (directory / MANIFEST_FILE_NAME).exists():  # last, as the trainer does
        client.upload_file(str(directory / MANIFEST_FILE_NAME), bucket, f"{prefix}/{MANIFEST_FILE_NAME}")
    return f"s3://{bucket}/{prefix}/"


def model_adapter(
    name: str, namespace: str, uri: str, digest: str | None = None, keys_in: str | None = "s3-creds", **spec
) -> dict:
    """A ModelAdapter of ``uri``, read with the keys of the Secret ``keys_in`` (None: no Secret named)."""
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "hf://example/tiny-llama", "servedName": "tiny-llama"},
            "format": "peft-lora",
            "artifact": {"uri": uri},
            **spec,
        },
    }
    if keys_in:
        manifest["spec"]["artifact"]["credentialsSecretRef"] = {"name": keys_in}
    if digest:
        manifest["spec"]["artifact"]["digest"] = digest
    return manifest


def manifest_digest(directory: Path) -> str:
    return json.loads((directory / MANIFEST_FILE_NAME).read_text())["digest"]


def evaluation(gate: str) -> dict:
    return {
        "task": {"baseLoss": 2.0, "adapterLoss": 1.2, "samples": 32},
        "general": {"baseLoss": 2.5, "adapterLoss": 2.52 if gate == "Passed" else 3.5, "samples": 32},
        "gate": gate,
        "message": "task loss 2.0000 -> 1.2000 (-40.0%); general loss ...",
    }
