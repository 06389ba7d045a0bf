"""Invalid FineTuneJob manifests, each with the field its error must name.

Replayed against the pydantic models (unit) and against the real API server's schema and CEL
rules (e2e), so the two stay in step: anything the operator would refuse, kubectl apply refuses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

_DELETE = object()


def valid_job(name: str = "catalog-job") -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {
                "train": [{"uri": "s3://datasets/train.jsonl"}],
                "general": {"uri": "s3://datasets/general.jsonl"},
            },
            "resources": {"gpusPerNode": 1},
        },
    }


def edited(manifest: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with dotted paths set (or removed, for _DELETE); digits index lists."""
    result = copy.deepcopy(manifest)
    for path, value in edits.items():
        *parents, last = path.split(".")
        node = result
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return result


@dataclass(frozen=True)
class InvalidCase:
    id: str
    edits: dict[str, Any]
    field: str  # the path the error must name

    def manifest(self, name: str = "catalog-job") -> dict[str, Any]:
        return edited(valid_job(name), self.edits)


CATALOG = [
    InvalidCase("unknown-method", {"spec.method": {"type": "prefix-tuning"}}, "spec.method.type"),
    InvalidCase("unknown-objective", {"spec.objective": "rlhf-ppo"}, "spec.objective"),
    InvalidCase("unknown-data-format", {"spec.data.format": "xml"}, "spec.data.format"),
    InvalidCase("bad-model-scheme", {"spec.model.uri": "http://example.com/model"}, "spec.model.uri"),
    InvalidCase("bad-data-scheme", {"spec.data.train": [{"uri": "ftp://host/data.jsonl"}]}, "spec.data.train[0].uri"),
    InvalidCase("bad-output-scheme", {"spec.output": {"uri": "hf://org/out"}}, "spec.output.uri"),
    InvalidCase("missing-model", {"spec.model": _DELETE}, "spec.model"),
    InvalidCase("model-name-and-uri", {"spec.model.name": "llama-8b"}, "spec.model"),
    InvalidCase("model-neither-name-nor-uri", {"spec.model": {"revision": "main"}}, "spec.model"),
    InvalidCase("model-name-with-revision", {"spec.model": {"name": "llama-8b", "revision": "v2"}}, "spec.model"),
    InvalidCase(
        "model-name-with-credentials",
        {"spec.model": {"name": "a", "credentialsSecretRef": {"name": "s"}}},
        "spec.model",
    ),
    InvalidCase("model-name-not-a-dns-name", {"spec.model": {"name": "Llama_8B"}}, "spec.model.name"),
    InvalidCase("missing-train-data", {"spec.data.train": _DELETE}, "spec.data.train"),
    InvalidCase("empty-train-data", {"spec.data.train": []}, "spec.data.train"),
    InvalidCase(
        "zero-weight", {"spec.data.train": [{"uri": "s3://data/a.jsonl", "weight": 0}]}, "spec.data.train[0].weight"
    ),
    InvalidCase(
        "negative-weight",
        {"spec.data.train": [{"uri": "s3://data/a.jsonl", "weight": -1}]},
        "spec.data.train[0].weight",
    ),
    InvalidCase("negative-learning-rate", {"spec.training": {"learningRate": -0.001}}, "spec.training.learningRate"),
    InvalidCase("zero-epochs", {"spec.training": {"epochs": 0}}, "spec.training.epochs"),
    InvalidCase("epochs-and-max-steps", {"spec.training": {"epochs": 1, "maxSteps": 10}}, "spec.training"),
    InvalidCase("tiny-max-seq-length", {"spec.training": {"maxSeqLength": 8}}, "spec.training.maxSeqLength"),
    InvalidCase("unknown-precision", {"spec.training": {"precision": "fp8"}}, "spec.training.precision"),
    InvalidCase("warmup-too-long", {"spec.training": {"warmupRatio": 0.9}}, "spec.training.warmupRatio"),
    InvalidCase("zero-keep-checkpoints", {"spec.training": {"keepCheckpoints": 0}}, "spec.training.keepCheckpoints"),
    InvalidCase("qlora-without-lora", {"spec.method": {"type": "qlora"}}, "spec.method.lora"),
    InvalidCase("full-with-lora", {"spec.method": {"type": "full", "lora": {"rank": 8}}}, "spec.method.lora"),
    InvalidCase("lora-rank-zero", {"spec.method": {"type": "lora", "lora": {"rank": 0}}}, "spec.method.lora.rank"),
    InvalidCase("lora-dropout-one", {"spec.method": {"lora": {"dropout": 1.0}}}, "spec.method.lora.dropout"),
    InvalidCase("dpo-with-chat-data", {"spec.objective": "dpo", "spec.data.format": "messages"}, "spec.objective"),
    InvalidCase(
        "dpo-with-text-source",
        {"spec.objective": "dpo", "spec.data.train": [{"uri": "s3://data/p.jsonl", "format": "text"}]},
        "spec.objective",
    ),
    InvalidCase("preference-without-dpo", {"spec.data.format": "preference"}, "spec.data.format"),
    InvalidCase("pretrain-on-chat", {"spec.objective": "pretrain", "spec.data.format": "messages"}, "spec.objective"),
    InvalidCase(
        "qlora-without-gpus",
        {"spec.method": {"type": "qlora", "lora": {"rank": 8}}, "spec.resources.gpusPerNode": 0},
        "spec.method.type",
    ),
    InvalidCase("enforce-gate-without-general-data", {"spec.data.general": _DELETE}, "spec.data.general"),
    InvalidCase(
        "eval-split-and-set", {"spec.data.eval": {"uri": "s3://data/e.jsonl", "splitFraction": 0.1}}, "spec.data.eval"
    ),
    InvalidCase("eval-split-too-large", {"spec.data.eval": {"splitFraction": 0.9}}, "spec.data.eval.splitFraction"),
    InvalidCase("invalid-fraction-above-one", {"spec.data.maxInvalidFraction": 1.5}, "spec.data.maxInvalidFraction"),
    InvalidCase("unknown-gate-mode", {"spec.evaluation": {"gate": {"mode": "block"}}}, "spec.evaluation.gate.mode"),
    InvalidCase(
        "negative-general-threshold",
        {"spec.evaluation": {"gate": {"maxGeneralLossIncrease": -0.1}}},
        "spec.evaluation.gate.maxGeneralLossIncrease",
    ),
    InvalidCase("zero-nodes", {"spec.resources.nodes": 0}, "spec.resources.nodes"),
    InvalidCase("too-many-gpus", {"spec.resources.gpusPerNode": 64}, "spec.resources.gpusPerNode"),
    InvalidCase("bad-memory-quantity", {"spec.resources.memory": "lots"}, "spec.resources.memory"),
    InvalidCase("negative-backoff-limit", {"spec.backoffLimit": -1}, "spec.backoffLimit"),
    InvalidCase(
        "bad-secret-name",
        {"spec.model.credentialsSecretRef": {"name": "Not_A_Name"}},
        "spec.model.credentialsSecretRef.name",
    ),
    InvalidCase("bad-adapter-name", {"spec.adapter": {"name": "Support.Bot"}}, "spec.adapter.name"),
    InvalidCase("unknown-spec-field", {"spec.learningRate": 0.001}, "spec.learningRate"),
    InvalidCase("unknown-training-field", {"spec.training": {"lr": 0.001}}, "spec.training.lr"),
    InvalidCase(
        "metrics-for-pretrain",
        {"spec.objective": "pretrain", "spec.evaluation": {"metrics": ["exactMatch"]}},
        "spec.evaluation.metrics",
    ),
    # Issue 15: what a hostile tenant writes to leave its claim, bucket or pod contract.
    InvalidCase("pvc-model-dot-dot", {"spec.model.uri": "pvc://claim/../../etc"}, "spec.model.uri"),
    InvalidCase("s3-data-dot-dot", {"spec.data.train": [{"uri": "s3://data/a/../../b"}]}, "spec.data.train[0].uri"),
    InvalidCase("s3-data-absolute-key", {"spec.data.general": {"uri": "s3://data//etc"}}, "spec.data.general.uri"),
    InvalidCase("pvc-output-dot", {"spec.output": {"uri": "pvc://out/./x"}}, "spec.output.uri"),
    InvalidCase("zero-cpu", {"spec.resources.cpu": "0"}, "spec.resources.cpu"),
    InvalidCase("negative-cpu", {"spec.resources.cpu": "-1"}, "spec.resources.cpu"),
    InvalidCase("negative-memory", {"spec.resources.memory": "-2Gi"}, "spec.resources.memory"),
    InvalidCase("zero-shared-memory", {"spec.resources.sharedMemory": "0Mi"}, "spec.resources.sharedMemory"),
    InvalidCase(
        "host-path-volume",
        {"spec.template.volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        "spec.template.volumes[0]",
    ),
    InvalidCase("volume-without-source", {"spec.template.volumes": [{"name": "nothing"}]}, "spec.template.volumes[0]"),
    InvalidCase(
        "mount-over-config-with-double-slash",
        {"spec.template.volumeMounts": [{"name": "x", "mountPath": "/etc//finetune"}]},
        "spec.template.volumeMounts[0]",
    ),
    InvalidCase(
        "mount-over-config-with-dot",
        {"spec.template.volumeMounts": [{"name": "x", "mountPath": "/etc/finetune/."}]},
        "spec.template.volumeMounts[0]",
    ),
    InvalidCase(
        "mount-over-config-through-dot-dot",
        {"spec.template.volumeMounts": [{"name": "x", "mountPath": "/scratch/../etc/finetune"}]},
        "spec.template.volumeMounts[0]",
    ),
    InvalidCase(
        "env-machine-rank", {"spec.template.env": [{"name": "MACHINE_RANK", "value": "0"}]}, "spec.template.env[0]"
    ),
    InvalidCase(
        "env-finetune-prefix",
        {"spec.template.env": [{"name": "FINETUNE_PVC_ROOT", "value": "/"}]},
        "spec.template.env[0]",
    ),
    InvalidCase("env-home", {"spec.template.env": [{"name": "HOME", "value": "/etc"}]}, "spec.template.env[0]"),
    InvalidCase("name-starting-with-digit", {"metadata.name": "1st-job"}, "metadata.name"),
    InvalidCase("name-too-long", {"metadata.name": "a" * 60}, "metadata.name"),
]
