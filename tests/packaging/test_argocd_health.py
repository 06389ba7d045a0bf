"""The Argo CD health checks (charts/finetune-operator/argocd/*.lua) under a real Lua interpreter: Lua 5.1,
the dialect of gopher-lua that Argo CD embeds. Every status sample is valid for the API's own status
model, and every phase the API defines has a sample."""

from __future__ import annotations

import typing

import pytest
from chartkit import CHART

NOW = "2025-01-01T12:00:00Z"


def condition(type_: str, status: str, reason: str, message: str, generation: int = 1) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
        "observedGeneration": generation,
    }


def finetunejob(status: dict | None, generation: int = 1) -> dict:
    obj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "support-bot", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def modeladapter(status: dict | None, generation: int = 1) -> dict:
    obj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": "support-bot-v3", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


MISSING_SECRET = (
    "Secret s3-creds (spec.data.credentialsSecretRef) not found in namespace team-a: create it and the job proceeds"
)
FAILED = "training Job failed (PodFailurePolicy): pod support-bot-0 exited with code 78 (configuration error): method qlora needs CUDA GPUs"

INVALID = "the spec is invalid: spec.training.learningRate: Input should be greater than 0"

FINETUNEJOB_CASES = [
    ("no-status", finetunejob(None), "Progressing", "Waiting for the operator"),
    (
        "invalid-stored-spec",
        finetunejob(
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [condition("Created", "False", "InvalidSpec", INVALID)],
            }
        ),
        "Degraded",
        INVALID,
    ),
    (
        "pending-missing-secret",
        finetunejob(
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [
                    condition("ReferencesResolved", "False", "SecretNotFound", MISSING_SECRET),
                    condition(
                        "Created", "False", "SecretNotFound", "the training Job is not created until this is fixed"
                    ),
                ],
            }
        ),
        "Progressing",
        f"Pending: {MISSING_SECRET}",
    ),
    (
        "pending-scheduling",
        finetunejob(
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [
                    condition("ReferencesResolved", "True", "Resolved", "every reference exists"),
                    condition("Created", "True", "JobCreated", "created Job support-bot with 1 pod(s)"),
                ],
            }
        ),
        "Progressing",
        "Pending: created Job support-bot with 1 pod(s)",
    ),
    (
        "suspended-by-kueue",
        finetunejob(
            {
                "phase": "Suspended",
                "observedGeneration": 1,
                "conditions": [
                    condition("Suspended", "True", "QueuedByKueue", "waiting for Kueue to admit it (queue gpu-queue)")
                ],
            }
        ),
        "Progressing",
        "Suspended: waiting for Kueue to admit it (queue gpu-queue)",
    ),
    (
        "running-with-progress",
        finetunejob(
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [condition("Running", "True", "PodsRunning", "1 of 1 pod(s) running")],
                "startTime": NOW,
                "progress": {
                    "step": 120,
                    "totalSteps": 400,
                    "percent": 30,
                    "trainLoss": 1.2345,
                    "etaSeconds": 3725,
                    "eta": "1h2m",
                    "updatedAt": NOW,
                },
            }
        ),
        "Progressing",
        "step 120/400 (30%), loss 1.234, ETA 1h2m",
    ),
    (
        "running-before-the-first-report",
        finetunejob(
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [condition("Running", "True", "PodsRunning", "1 of 1 pod(s) running")],
            }
        ),
        "Progressing",
        "1 of 1 pod(s) running",
    ),
    (
        "succeeded-and-published",
        finetunejob(
            {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [condition("Succeeded", "True", "TrainingSucceeded", "training finished in 2h")],
                "completionTime": NOW,
                "adapter": {"name": "support-bot-v3", "uri": "s3://adapters/team-a/support-bot-v3/1/"},
            }
        ),
        "Healthy",
        "Succeeded: published ModelAdapter support-bot-v3",
    ),
    (
        "succeeded",
        finetunejob(
            {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [condition("Succeeded", "True", "TrainingSucceeded", "training finished in 2h")],
            }
        ),
        "Healthy",
        "training finished in 2h",
    ),
    (
        "failed",
        finetunejob(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    condition("Failed", "True", "ConfigurationError", FAILED),
                    condition("Succeeded", "False", "ConfigurationError", FAILED),
                ],
            }
        ),
        "Degraded",
        FAILED,
    ),
    (
        "spec-changed-not-yet-observed",
        finetunejob(
            {
                "phase": "Succeeded",
                "observedGeneration": 2,
                "conditions": [condition("Succeeded", "True", "TrainingSucceeded", "done", generation=2)],
            },
            generation=3,
        ),
        "Progressing",
        "Waiting for the operator to observe generation 3",
    ),
    (
        "status-without-observed-generation",
        finetunejob({"phase": "Failed", "conditions": []}, generation=1),
        "Progressing",
        "Waiting for the operator to observe generation 1",
    ),
]

UNVERIFIED = "artifact digest sha256:1111 does not match the stored files (sha256:2222)"

MODELADAPTER_CASES = [
    ("no-status", modeladapter(None), "Progressing", "Waiting for the operator to verify the artifact"),
    (
        "pending",
        modeladapter({"phase": "Pending", "observedGeneration": 1, "conditions": []}),
        "Progressing",
        "Pending: verifying the artifact",
    ),
    (
        "verifying",
        modeladapter(
            {
                "phase": "Verifying",
                "observedGeneration": 1,
                "conditions": [
                    condition("ArtifactVerified", "Unknown", "Verifying", "reading 3 files from s3://adapters/")
                ],
            }
        ),
        "Progressing",
        "Verifying: reading 3 files from s3://adapters/",
    ),
    (
        "ready",
        modeladapter(
            {
                "phase": "Ready",
                "observedGeneration": 1,
                "conditions": [
                    condition("ArtifactVerified", "True", "DigestMatches", "digest verified"),
                    condition("ServingCompatible", "True", "LoadableByVLLM", "vLLM loads it with --max-lora-rank 16"),
                    condition("Ready", "True", "Ready", "verified and servable"),
                ],
                "requiredMaxLoraRank": 16,
            }
        ),
        "Healthy",
        "verified and servable",
    ),
    (
        "failed-verification",
        modeladapter(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    condition("ArtifactVerified", "False", "DigestMismatch", UNVERIFIED),
                    condition("Ready", "False", "ArtifactNotVerified", "not servable"),
                ],
            }
        ),
        "Degraded",
        f"ArtifactVerified: {UNVERIFIED}",
    ),
    (
        "failed-serving",
        modeladapter(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    condition("ArtifactVerified", "True", "DigestMatches", "digest verified"),
                    condition("ServingCompatible", "False", "DoRA", "vLLM cannot serve DoRA adapters"),
                ],
            }
        ),
        "Degraded",
        "ServingCompatible: vLLM cannot serve DoRA adapters",
    ),
    (
        "spec-changed-not-yet-observed",
        modeladapter({"phase": "Ready", "observedGeneration": 1, "conditions": []}, generation=2),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
]


def health(script: str, obj: dict) -> dict:
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((CHART / "argocd" / script).read_text())
    return dict(result.items())


@pytest.mark.parametrize("case, obj, status, message", FINETUNEJOB_CASES, ids=[c[0] for c in FINETUNEJOB_CASES])
def test_finetunejob_health(case, obj, status, message):
    assert health("finetunejob-health.lua", obj) == {"status": status, "message": message}


@pytest.mark.parametrize("case, obj, status, message", MODELADAPTER_CASES, ids=[c[0] for c in MODELADAPTER_CASES])
def test_modeladapter_health(case, obj, status, message):
    assert health("modeladapter-health.lua", obj) == {"status": status, "message": message}


def test_an_unknown_phase_is_unknown_health():
    obj = finetunejob({"phase": "Evaluating", "observedGeneration": 1})
    assert health("finetunejob-health.lua", obj) == {"status": "Unknown", "message": "Unknown phase Evaluating"}


def test_the_samples_are_valid_statuses_of_the_api():
    from finetune_core.api import FineTuneJobStatus
    from finetune_core.api.modeladapter import ModelAdapterStatus

    for _, obj, _, _ in FINETUNEJOB_CASES:
        if "status" in obj:
            FineTuneJobStatus.model_validate(obj["status"])
    for _, obj, _, _ in MODELADAPTER_CASES:
        if "status" in obj:
            ModelAdapterStatus.model_validate(obj["status"])


def test_every_phase_of_the_api_has_a_sample():
    from finetune_core.api.finetunejob import Phase
    from finetune_core.api.modeladapter import AdapterPhase

    assert set(typing.get_args(Phase)) <= {o.get("status", {}).get("phase") for _, o, _, _ in FINETUNEJOB_CASES}
    assert set(typing.get_args(AdapterPhase)) <= {o.get("status", {}).get("phase") for _, o, _, _ in MODELADAPTER_CASES}
