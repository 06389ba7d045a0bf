"""Verification of pvc:// artifacts: the verification Job, the result it hands back, and reading it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_core.api import MANIFEST_FILE_NAME, ModelAdapter, manifest_of_directory
from finetune_operator.adapters.verification import MESSAGE_LIMIT_BYTES, Verification, verify_artifact
from finetune_operator.adapters.volume import result_of
from finetune_operator.adapters.volume_check import main as volume_check
from finetune_operator.render.verifier import ADAPTER_LABEL, artifact_path, render_verifier_job, verifier_job_name
from finetune_operator.settings import Settings
from finetune_operator.storage import FileStore

LLAMA = {"model_type": "llama"}


def adapter(uri: str = "pvc://adapters/team-a/bot/v1/", name: str = "bot", **spec) -> ModelAdapter:
    return ModelAdapter.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a", "uid": "u-1", "generation": 3},
            "spec": {"baseModel": {"uri": "hf://example/tiny-llama"}, "artifact": {"uri": uri}, **spec},
        }
    )


def write_artifact(directory: Path, **config_changes) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 12, "lora_alpha": 24, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    config.update(config_changes)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "base_model_config.json").write_text(json.dumps(LLAMA))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    manifest = manifest_of_directory(directory)
    (directory / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True))
    return manifest.digest


# -- one verification, wherever it runs ----------------------------------------------------------


def test_a_good_artifact_is_verified_with_its_facts(tmp_path):
    digest = write_artifact(tmp_path / "v1")
    found = verify_artifact(adapter().spec, FileStore(f"file://{tmp_path / 'v1'}"))
    assert found.verified and not found.serving_problems
    assert found.digest == digest and found.size_bytes > 4096
    assert found.required_max_lora_rank == 16 and found.target_modules == ["q_proj", "v_proj"]
    assert found.summary == f"3 files verified against {digest}"


def test_a_missing_directory_is_a_missing_artifact(tmp_path):
    found = verify_artifact(adapter().spec, FileStore(f"file://{tmp_path / 'nothing'}"))
    assert not found.verified and found.problem_reason == "ArtifactNotFound"


def test_a_changed_file_fails_and_a_dora_adapter_is_verified_but_not_servable(tmp_path):
    write_artifact(tmp_path / "v1")
    (tmp_path / "v1" / "adapter_model.safetensors").write_bytes(b"\1" * 4096)
    assert verify_artifact(adapter().spec, FileStore(f"file://{tmp_path / 'v1'}")).problem_reason == "FileCorrupt"
    write_artifact(tmp_path / "dora", use_dora=True)
    found = verify_artifact(adapter().spec, FileStore(f"file://{tmp_path / 'dora'}"))
    assert found.verified and found.serving_problems == ["use_dora is true; vLLM does not serve DoRA adapters"]


def test_the_result_survives_a_termination_message_and_fits_in_it():
    found = Verification(
        digest="sha256:" + "a" * 64,
        size_bytes=10,
        summary="s" * 5000,
        target_modules=[f"module_{i}" for i in range(1000)],
        serving_problems=["p" * 5000] * 9,
    )
    message = found.to_message()
    assert len(message.encode()) <= MESSAGE_LIMIT_BYTES
    back = Verification.from_message(message)
    assert back.digest == found.digest and back.size_bytes == 10 and len(back.serving_problems) == 4
    small = Verification(problem_reason="FileMissing", problem_message="a.bin is listed in the manifest but missing")
    assert Verification.from_message(small.to_message()) == small


@pytest.mark.parametrize("message", ["", "Traceback (most recent call last): ...", "[1, 2]", '{"unknown": 1}'])
def test_a_message_that_is_not_a_result_is_refused(message):
    with pytest.raises(ValueError, match="not a verification result"):
        Verification.from_message(message)


def test_the_pods_program_writes_the_result_where_the_kubelet_reads_it(tmp_path, monkeypatch, capsys):
    digest = write_artifact(tmp_path / "claim" / "team-a" / "bot" / "v1")
    monkeypatch.setenv("FINETUNE_ADAPTER_SPEC", json.dumps(adapter().spec.to_api()))
    result = tmp_path / "termination-log"
    assert volume_check([f"--dir={tmp_path / 'claim' / 'team-a' / 'bot' / 'v1'}", f"--result={result}"]) == 0
    assert Verification.from_message(result.read_text()).digest == digest
    assert result.read_text() in capsys.readouterr().out


def test_the_pods_program_reports_a_verification_out_of_time_as_its_result(tmp_path, monkeypatch):
    write_artifact(tmp_path / "v1")
    monkeypatch.setenv("FINETUNE_ADAPTER_SPEC", json.dumps(adapter().spec.to_api()))
    result = tmp_path / "termination-log"
    assert volume_check([f"--dir={tmp_path / 'v1'}", f"--result={result}", "--timeout-seconds=0"]) == 0
    found = Verification.from_message(result.read_text())
    assert found.problem_reason == "VerificationTimedOut" and "manifest.json" in found.problem_message


def test_a_symlink_on_the_claim_cannot_make_the_pod_read_outside_the_artifact(tmp_path):
    write_artifact(tmp_path / "v1")
    (tmp_path / "secret.json").write_text('{"model_type": "llama"}')
    (tmp_path / "v1" / "base_model_config.json").unlink()
    (tmp_path / "v1" / "base_model_config.json").symlink_to(tmp_path / "secret.json")
    found = verify_artifact(adapter().spec, FileStore(f"file://{tmp_path / 'v1'}"))
    assert found.problem_reason == "PathOutsideArtifact" and "base_model_config.json" in found.problem_message


def test_the_pods_program_refuses_a_spec_it_cannot_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_ADAPTER_SPEC", '{"artifact": {}}')
    assert volume_check([f"--dir={tmp_path}", f"--result={tmp_path / 'log'}"]) == 2
    assert "FINETUNE_ADAPTER_SPEC: " in capsys.readouterr().err and not (tmp_path / "log").exists()


# -- the verification Job ------------------------------------------------------------------------


def test_the_verification_job_mounts_the_claim_read_only_and_has_no_api_access():
    job = render_verifier_job(adapter(), 3, Settings())
    assert job["metadata"]["name"] == "bot-verify-3"
    assert job["metadata"]["labels"][ADAPTER_LABEL] == "bot"
    assert (
        job["metadata"]["ownerReferences"][0] | {"kind": "ModelAdapter", "uid": "u-1"}
        == (job["metadata"]["ownerReferences"][0])
    )
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [
        {"name": "artifact", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}}
    ]
    (container,) = pod["containers"]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert "--dir=/artifact/team-a/bot/v1" in container["command"]
    assert json.loads(container["env"][0]["value"]) == adapter().spec.to_api()
    assert container["image"] == Settings().trainer_image
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_the_verification_pod_meets_the_restricted_pod_security_standard():
    pod = render_verifier_job(adapter(), 1, Settings())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = pod["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}


def test_the_operator_settings_place_the_verification_pod():
    toleration = {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}
    settings = Settings(
        verifier_image="op:1",
        verifier_image_pull_policy="Always",
        verifier_image_pull_secrets="registry-creds, mirror-creds",
        verifier_node_selector={"pool": "cpu"},
        verifier_tolerations=[toleration],
    )
    pod = render_verifier_job(adapter(), 1, settings)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == [toleration]
    assert pod["containers"][0]["image"] == "op:1" and pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}, {"name": "mirror-creds"}]


def test_a_claims_root_is_mounted_whole():
    assert artifact_path("pvc://adapters") == ("adapters", "")
    assert artifact_path("pvc://adapters/") == ("adapters", "")
    command = render_verifier_job(adapter("pvc://adapters/"), 1, Settings())["spec"]["template"]["spec"]
    assert "--dir=/artifact" in command["containers"][0]["command"]
    with pytest.raises(ValueError, match="not a pvc:// URI"):
        artifact_path("s3://bucket/x/")


def test_job_names_are_per_generation_and_fit_kubernetes_limits():
    assert verifier_job_name("bot", 7) == "bot-verify-7"
    long_a, long_b = "a" * 63, "a" * 62 + "b"
    assert len(verifier_job_name(long_a, 12345)) == 63
    assert verifier_job_name(long_a, 1) != verifier_job_name(long_b, 1)


# -- reading the result back ---------------------------------------------------------------------

COMPLETE = {"type": "Complete", "status": "True"}


def pod(exit_code: int, message: str, container: str = "verify", controller_uid: str | None = "j") -> dict:
    """A pod of the verification Job (UID j), or a look-alike controlled by something else or nothing."""
    terminated = {"exitCode": exit_code, "message": message, "reason": "Completed" if exit_code == 0 else "Error"}
    owners = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "bot-verify-3", "uid": controller_uid, "controller": True}
    ]
    return {
        "metadata": {"name": "bot-verify-3-x", "ownerReferences": owners if controller_uid else []},
        "status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]},
    }


JOB = {"metadata": {"name": "bot-verify-3", "namespace": "team-a", "uid": "j"}}


def test_the_result_is_read_from_the_pods_termination_message():
    said = Verification(digest="sha256:" + "c" * 64, size_bytes=3, summary="3 files verified")
    assert result_of(JOB, COMPLETE, [pod(0, said.to_message())]) == said


def test_a_pod_that_crashed_or_said_nothing_useful_fails_the_verification():
    crashed = result_of(JOB, {"type": "Failed", "status": "True"}, [pod(1, "ImportError: no module named x")])
    assert (
        crashed.problem_reason == "VerificationFailed" and "exited with code 1: ImportError" in crashed.problem_message
    )
    garbled = result_of(JOB, COMPLETE, [pod(0, "hello")])
    assert garbled.problem_reason == "VerificationFailed" and "not a verification result" in garbled.problem_message


def test_a_job_that_never_ran_its_pod_says_why():
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "active too long"}
    found = result_of(JOB, deadline, [])
    assert found.problem_reason == "VerificationFailed"
    assert found.problem_message == "Job bot-verify-3 ended (DeadlineExceeded) without a result: active too long"


def test_a_long_adapter_name_fits_the_labels_and_is_found_through_the_owner():
    from finetune_operator.render.verifier import adapter_of

    name = "a" * 70 + ".v1"
    job = render_verifier_job(adapter(name=name), 1, Settings())
    for value in job["metadata"]["labels"].values():
        assert len(value) <= 63
    assert job["metadata"]["labels"][ADAPTER_LABEL] == job["spec"]["template"]["metadata"]["labels"][ADAPTER_LABEL]
    assert len(job["metadata"]["name"]) <= 63
    assert adapter_of(job) == name
    assert adapter_of({"metadata": {"ownerReferences": [{"kind": "FineTuneJob", "name": "x"}]}}) is None


@pytest.mark.parametrize("controller_uid", [None, "another-job"])
def test_a_pod_the_job_does_not_control_is_no_verdict(controller_uid):
    """The pods are listed by the controller-uid label, which anyone who creates pods can set."""
    forged = Verification(digest="sha256:" + "f" * 64, size_bytes=3, summary="3 files verified")
    found = result_of(JOB, COMPLETE, [pod(0, forged.to_message(), controller_uid=controller_uid)])
    assert found.problem_reason == "VerificationFailed" and "without a result" in found.problem_message
    genuine = Verification(problem_reason="DigestMismatch", problem_message="digest differs")
    both = [pod(0, forged.to_message(), controller_uid=controller_uid), pod(0, genuine.to_message())]
    assert result_of(JOB, COMPLETE, both) == genuine
