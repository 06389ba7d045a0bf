"""render_job, render_pod_template and trainer_command: the Indexed training Job of a FineTuneJob."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from catalog import edited, valid_job
from finetune_core.api import ExitCode, FineTuneJob
from finetune_operator.naming import CONFIG_HASH_ANNOTATION, SPEC_HASH_ANNOTATION
from finetune_operator.render import (
    config_data,
    data_hash,
    render_job,
    render_pod_template,
    resolve_trainer_config,
    trainer_command,
)
from finetune_operator.settings import Settings

NAMESPACE = "team-a"
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
SETTINGS = Settings(default_output_uri="s3://models/out")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def make_job(edits: dict[str, Any] | None = None, name: str = "demo") -> FineTuneJob:
    manifest = edited(valid_job(name), {"metadata.namespace": NAMESPACE, "metadata.uid": UID, **(edits or {})})
    return FineTuneJob.model_validate(manifest)


def pod_spec(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, Any]:
    return render_pod_template(job, settings)["spec"]


def container(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, Any]:
    (trainer,) = pod_spec(job, settings)["containers"]
    return trainer


def env_of(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, Any]:
    return {e["name"]: e for e in container(job, settings)["env"]}


def volumes_of(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(job, settings)["volumes"]}


def mounts_of(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(job, settings)["volumeMounts"]}


def flag(command: list[str], name: str) -> str | None:
    """The value of --name=value in a command, None when absent."""
    values = [part.split("=", 1)[1] for part in command if part.startswith(f"--{name}=")]
    assert len(values) <= 1, command
    return values[0] if values else None


# ---------------------------------------------------------------------------------------------
# trainer_command


def test_the_command_launches_the_trainer_module_with_the_mounted_config():
    command = trainer_command(make_job(), SETTINGS)
    assert command[:2] == ["accelerate", "launch"]
    assert command[-3:] == ["-m", "finetune_trainer", "--config=/etc/finetune/config.json"]


def test_one_node_one_gpu_is_a_single_process_without_rendezvous_flags():
    command = trainer_command(make_job(), SETTINGS)
    assert flag(command, "num_processes") == "1"
    assert flag(command, "num_machines") == "1"
    assert flag(command, "machine_rank") is None
    assert flag(command, "main_process_ip") is None
    assert flag(command, "main_process_port") is None
    assert "--multi_gpu" not in command
    assert "--cpu" not in command


def test_eight_gpus_on_one_node_are_eight_processes_with_multi_gpu():
    command = trainer_command(make_job({"spec.resources.gpusPerNode": 8}), SETTINGS)
    assert flag(command, "num_processes") == "8"
    assert flag(command, "num_machines") == "1"
    assert "--multi_gpu" in command


def test_several_nodes_rendezvous_at_rank_zero_through_the_headless_service():
    command = trainer_command(make_job({"spec.resources.nodes": 2, "spec.resources.gpusPerNode": 4}), SETTINGS)
    assert flag(command, "num_processes") == "8"
    assert flag(command, "num_machines") == "2"
    assert flag(command, "machine_rank") == "$(MACHINE_RANK)"
    assert flag(command, "main_process_ip") == f"demo-0.demo.{NAMESPACE}.svc"
    assert flag(command, "main_process_port") == str(SETTINGS.rendezvous_port)
    assert "--multi_gpu" in command


def test_two_nodes_with_one_gpu_each_are_multi_gpu():
    command = trainer_command(make_job({"spec.resources.nodes": 2}), SETTINGS)
    assert flag(command, "num_processes") == "2"
    assert "--multi_gpu" in command


def test_the_rendezvous_port_comes_from_the_settings():
    settings = Settings(default_output_uri="s3://models/out", rendezvous_port=31000)
    command = trainer_command(make_job({"spec.resources.nodes": 3}), settings)
    assert flag(command, "main_process_port") == "31000"


def test_a_cpu_run_passes_cpu_and_no_mixed_precision():
    job = make_job({"spec.resources.gpusPerNode": 0, "spec.training": {"precision": "bf16"}})
    command = trainer_command(job, SETTINGS)
    assert "--cpu" in command
    assert "--multi_gpu" not in command
    assert flag(command, "mixed_precision") is None
    assert flag(command, "num_processes") == "1"


def test_a_multi_node_cpu_run_has_one_process_per_node():
    command = trainer_command(make_job({"spec.resources.nodes": 3, "spec.resources.gpusPerNode": 0}), SETTINGS)
    assert flag(command, "num_processes") == "3"
    assert "--cpu" in command
    assert "--multi_gpu" not in command


@pytest.mark.parametrize(("precision", "expected"), [("bf16", "bf16"), ("fp16", "fp16"), ("fp32", None)])
def test_gpu_runs_use_the_training_precision(precision, expected):
    command = trainer_command(make_job({"spec.training": {"precision": precision}}), SETTINGS)
    assert flag(command, "mixed_precision") == expected


def test_a_job_without_namespace_rendezvouses_in_default():
    manifest = edited(valid_job("demo"), {"spec.resources.nodes": 2})
    command = trainer_command(FineTuneJob.model_validate(manifest), SETTINGS)
    assert flag(command, "main_process_ip") == "demo-0.demo.default.svc"


# ---------------------------------------------------------------------------------------------
# pod template: ranks, resources, scheduling


def test_machine_rank_comes_from_the_completion_index_annotation():
    rank = env_of(make_job({"spec.resources.nodes": 2}))["MACHINE_RANK"]
    assert rank["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )


def test_pods_are_under_the_headless_service_subdomain_and_never_restart_in_place():
    spec = pod_spec(make_job())
    assert spec["subdomain"] == "demo"
    assert spec["restartPolicy"] == "Never"


def test_gpu_requests_equal_limits():
    job = make_job({"spec.resources": {"gpusPerNode": 8, "cpu": "32", "memory": "256Gi"}})
    resources = container(job)["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}
    assert resources["requests"] == resources["limits"]


def test_a_custom_gpu_resource_name_is_requested_and_tolerated():
    job = make_job({"spec.resources": {"gpusPerNode": 1, "gpuResource": "amd.com/gpu"}})
    assert container(job)["resources"]["limits"] == {"amd.com/gpu": "1"}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(job)["tolerations"]


def test_a_cpu_run_has_no_gpu_limit_and_no_gpu_toleration():
    job = make_job({"spec.resources": {"gpusPerNode": 0, "cpu": "4"}})
    assert container(job)["resources"]["limits"] == {"cpu": "4"}
    assert "tolerations" not in pod_spec(job)


def test_a_cpu_run_without_cpu_or_memory_has_no_resources_block():
    assert "resources" not in container(make_job({"spec.resources": {"gpusPerNode": 0}}))


def test_gpu_pods_tolerate_the_gpu_pool_taint():
    assert pod_spec(make_job())["tolerations"] == [GPU_TOLERATION]


def test_user_tolerations_are_kept_and_the_gpu_toleration_added():
    user = {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    assert pod_spec(make_job({"spec.template": {"tolerations": [user]}}))["tolerations"] == [user, GPU_TOLERATION]


def test_a_user_gpu_toleration_is_not_duplicated():
    user = {"key": "spot", "operator": "Exists"}
    job = make_job({"spec.template": {"tolerations": [GPU_TOLERATION, user]}})
    assert pod_spec(job)["tolerations"] == [GPU_TOLERATION, user]


def test_user_tolerations_are_kept_on_cpu_runs():
    user = {"key": "spot", "operator": "Exists"}
    job = make_job({"spec.resources.gpusPerNode": 0, "spec.template": {"tolerations": [user]}})
    assert pod_spec(job)["tolerations"] == [user]


def test_a_single_node_job_has_no_affinity_of_its_own():
    assert "affinity" not in pod_spec(make_job())


def test_ranks_of_a_multi_node_job_never_share_a_node():
    affinity = pod_spec(make_job({"spec.resources.nodes": 2}))["affinity"]
    (term,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {
        "labelSelector": {"matchLabels": {"finetune.dev/job": "demo"}},
        "topologyKey": "kubernetes.io/hostname",
    }


def test_user_affinity_is_kept_and_anti_affinity_added_for_several_nodes():
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]
        }
    }
    affinity = pod_spec(
        make_job({"spec.resources.nodes": 2, "spec.template": {"affinity": {"nodeAffinity": node_affinity}}})
    )["affinity"]
    assert affinity["nodeAffinity"] == node_affinity
    assert "podAntiAffinity" in affinity


def test_a_user_pod_anti_affinity_replaces_the_default_one():
    user = {"preferredDuringSchedulingIgnoredDuringExecution": []}
    job = make_job({"spec.resources.nodes": 2, "spec.template": {"affinity": {"podAntiAffinity": user}}})
    assert pod_spec(job)["affinity"] == {"podAntiAffinity": user}


def test_user_affinity_is_kept_on_a_single_node():
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    assert pod_spec(make_job({"spec.template": {"affinity": affinity}}))["affinity"] == affinity


def test_rendering_does_not_modify_the_users_affinity():
    job = make_job({"spec.resources.nodes": 2, "spec.template": {"affinity": {"nodeAffinity": {}}}})
    render_pod_template(job, SETTINGS)
    assert job.spec.template.affinity == {"nodeAffinity": {}}


def test_pod_level_settings_pass_through_from_the_template():
    job = make_job(
        {
            "spec.template": {
                "nodeSelector": {"pool": "a100"},
                "priorityClassName": "training-high",
                "imagePullSecrets": [{"name": "registry"}],
                "image": "registry.example.com/trainer:dev",
                "imagePullPolicy": "Always",
            }
        }
    )
    spec = pod_spec(job)
    assert spec["nodeSelector"] == {"pool": "a100"}
    assert spec["priorityClassName"] == "training-high"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["containers"][0]["image"] == "registry.example.com/trainer:dev"
    assert spec["containers"][0]["imagePullPolicy"] == "Always"


def test_unset_pod_level_settings_are_left_out():
    spec = pod_spec(make_job())
    for key in ("nodeSelector", "priorityClassName", "imagePullSecrets"):
        assert key not in spec


def test_the_image_and_pull_policy_default_to_the_settings():
    settings = Settings(
        default_output_uri="s3://models/out", trainer_image="example.com/trainer:1", trainer_image_pull_policy="Never"
    )
    trainer = container(make_job(), settings)
    assert trainer["image"] == "example.com/trainer:1"
    assert trainer["imagePullPolicy"] == "Never"


def test_the_operator_created_service_account_is_used_unless_the_user_names_one():
    assert pod_spec(make_job())["serviceAccountName"] == "demo-trainer"
    assert pod_spec(make_job({"spec.template.serviceAccountName": "mine"}))["serviceAccountName"] == "mine"


def test_pods_get_no_api_token_and_no_service_links():
    spec = pod_spec(make_job())
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


def test_the_termination_grace_period_comes_from_the_settings():
    settings = Settings(default_output_uri="s3://models/out", termination_grace_seconds=600)
    assert pod_spec(make_job(), settings)["terminationGracePeriodSeconds"] == 600


def test_the_termination_message_falls_back_to_the_logs():
    assert container(make_job())["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pod_labels_carry_the_users_labels_but_never_override_the_selector():
    job = make_job({"spec.template.podLabels": {"team": "search", "finetune.dev/job": "other"}})
    labels = render_pod_template(job, SETTINGS)["metadata"]["labels"]
    assert labels["team"] == "search"
    assert labels["finetune.dev/job"] == "demo"


def test_pod_annotations_name_the_default_container_and_carry_the_users():
    job = make_job({"spec.template.podAnnotations": {"example.com/cost-center": "42"}})
    annotations = render_pod_template(job, SETTINGS)["metadata"]["annotations"]
    assert annotations == {"kubectl.kubernetes.io/default-container": "trainer", "example.com/cost-center": "42"}


# ---------------------------------------------------------------------------------------------
# pod template: security, filesystem, volumes


def test_the_pod_meets_the_restricted_pod_security_standard():
    spec = pod_spec(make_job())
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = spec["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    assert not security.get("privileged", False)
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    assert all("hostPort" not in port for port in spec["containers"][0]["ports"])


def test_every_volume_the_operator_adds_is_allowed_under_restricted():
    job = make_job(
        {
            "spec.model": {"uri": "pvc://models/llama", "credentialsSecretRef": {"name": "hf"}},
            "spec.resources.nodes": 2,
        }
    )
    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator:8443")
    for volume in pod_spec(job, settings)["volumes"]:
        (source,) = set(volume) - {"name"}
        assert source in RESTRICTED_VOLUME_TYPES, volume


def test_the_volumes_and_mount_paths_the_operator_uses_are_the_ones_the_api_reserves():
    from finetune_core.api.finetunejob import RESERVED_MOUNT_PATHS, RESERVED_VOLUME_NAMES, RESERVED_VOLUME_PREFIXES

    job = make_job(
        {
            "spec.model": {"uri": "pvc://models/llama", "credentialsSecretRef": {"name": "hf"}},
            "spec.output": {"uri": "s3://out/prefix", "credentialsSecretRef": {"name": "out-s3"}},
        }
    )
    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator:8443")
    # With the shared model cache mounted too (render/shared_cache.py): a tenant's volume of that name or path
    # would make the API server refuse the training Job.
    spec = render_job(job, settings, "hash", shared_cache=True)["spec"]["template"]["spec"]
    assert any(v.get("persistentVolumeClaim") for v in spec["volumes"])
    for volume in spec["volumes"]:
        name = volume["name"]
        assert name in RESERVED_VOLUME_NAMES or name.startswith(RESERVED_VOLUME_PREFIXES), name
    for mount in spec["containers"][0]["volumeMounts"]:
        path = mount["mountPath"]
        assert any(path == p or path.startswith(p + "/") for p in RESERVED_MOUNT_PATHS), path


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"volumes": [{"name": "config", "emptyDir": {}}]}, "spec.template.volumes[].name is the operator's"),
        ({"volumes": [{"name": "pvc-0", "emptyDir": {}}]}, "spec.template.volumes[].name is the operator's"),
        ({"volumes": [{"emptyDir": {}}]}, "volumes.0.name\n  Field required"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/dev/shm"}]}, "mountPath must not be within /etc/finetune"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/mnt/pvc/x/"}]}, "mountPath must not be within"),
        ({"volumeMounts": [{"name": "x", "mountPath": "data"}]}, "must be an absolute path"),
    ],
)
def test_template_volumes_that_would_collide_with_the_operators_are_refused(template, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        make_job({"spec.template": template})


@pytest.mark.parametrize(
    "path",
    [
        "/etc//finetune",
        "/etc/finetune/.",
        "/etc/./finetune",
        "//etc/finetune",
        "/scratch/",
        "/./dev/shm/x",
        "/mnt//pvc",
    ],
)
def test_mount_paths_are_normalised_before_the_reserved_check(path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must not be within"):
        make_job({"spec.template.volumeMounts": [{"name": "x", "mountPath": path}]})


@pytest.mark.parametrize("path", ["/scratch/../etc/finetune", "/data/..", "/a/../b"])
def test_mount_paths_with_dot_dot_segments_are_refused(path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape("must not have '..' segments")):
        make_job({"spec.template.volumeMounts": [{"name": "x", "mountPath": path}]})


@pytest.mark.parametrize("path", ["/etc/finetune-extra", "/etc", "/scratchpad", "/mnt/pvcs/x", "/data/./etc/finetune"])
def test_mount_paths_beside_the_reserved_ones_are_accepted(path):
    job = make_job({"spec.template.volumeMounts": [{"name": "x", "mountPath": path}]})
    assert mounts_of(job)["x"]["mountPath"] == path


@pytest.mark.parametrize(
    "path",
    [
        "/etc/finetune",
        "/etc//finetune",
        "/etc/finetune/.",
        "//etc/./finetune/x",
        "/scratch",
        "/var/run/finetune/credentials/model",
        "/etc/finetune-extra",
        "/etc",
        "/",
        "/.",
        "/data/./etc/finetune",
        "/etc/finetune.",
        "/etc/.finetune",
        "/mnt/pvc\n/x",
    ],
)
def test_the_reserved_mount_path_rule_of_the_crd_agrees_with_the_models(path):
    from finetune_core.api.finetunejob import RESERVED_MOUNT_PATHS, RESERVED_MOUNT_PATTERN
    from finetune_core.api.paths import is_within, normalised_mount_path

    by_cel = re.search(RESERVED_MOUNT_PATTERN, path) is not None
    by_model = any(is_within(normalised_mount_path(path), reserved) for reserved in RESERVED_MOUNT_PATHS)
    assert by_cel == by_model, path


@pytest.mark.parametrize("volume_type", ["hostPath", "nfs", "iscsi", "gitRepo", "rbd", "cephfs", "flexVolume"])
def test_volumes_of_types_restricted_pod_security_refuses_are_refused_naming_the_volume(volume_type):
    from finetune_core.api import format_validation_error
    from pydantic import ValidationError

    volumes = [{"name": "ok", "emptyDir": {}}, {"name": "host", volume_type: {"path": "/"}}]
    with pytest.raises(ValidationError) as raised:
        make_job({"spec.template.volumes": volumes})
    (message,) = format_validation_error(raised.value)
    assert message.startswith(f"spec.template.volumes[1]: {volume_type}: volumes may be of the types"), message


@pytest.mark.parametrize("volume_type", sorted(RESTRICTED_VOLUME_TYPES))
def test_volumes_of_every_type_restricted_pod_security_allows_are_kept(volume_type):
    job = make_job({"spec.template.volumes": [{"name": "extra", volume_type: {}}]})
    assert volumes_of(job)["extra"] == {"name": "extra", volume_type: {}}


@pytest.mark.parametrize("sources", [{}, {"emptyDir": {}, "secret": {"secretName": "s"}}])
def test_a_volume_needs_exactly_one_source(sources):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs exactly one source"):
        make_job({"spec.template.volumes": [{"name": "extra", **sources}]})


def test_template_volumes_beside_the_operators_are_kept():
    job = make_job(
        {
            "spec.template": {
                "volumes": [{"name": "datasets", "emptyDir": {}}],
                "volumeMounts": [{"name": "datasets", "mountPath": "/mnt/datasets"}],
            }
        }
    )
    assert mounts_of(job)["datasets"]["mountPath"] == "/mnt/datasets"


def test_the_root_filesystem_is_read_only_and_caches_go_to_writable_scratch():
    trainer = container(make_job())
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    for name in ("HOME", "TMPDIR", "HF_HOME", "TRITON_CACHE_DIR", "XDG_CACHE_HOME", "FINETUNE_SCRATCH_DIR"):
        assert env[name].startswith("/scratch"), name
    scratch = mounts_of(make_job())["scratch"]
    assert scratch["mountPath"] == "/scratch"
    assert not scratch.get("readOnly", False)
    assert volumes_of(make_job())["scratch"] == {"name": "scratch", "emptyDir": {}}


def test_shared_memory_is_a_memory_backed_empty_dir_on_dev_shm():
    assert volumes_of(make_job())["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert mounts_of(make_job())["shm"]["mountPath"] == "/dev/shm"
    sized = make_job({"spec.resources.sharedMemory": "16Gi"})
    assert volumes_of(sized)["shm"]["emptyDir"]["sizeLimit"] == "16Gi"


def test_the_config_map_is_mounted_read_only_at_etc_finetune():
    assert volumes_of(make_job())["config"]["configMap"]["name"] == "demo-config"
    assert mounts_of(make_job())["config"] == {"name": "config", "mountPath": "/etc/finetune", "readOnly": True}


def test_credentials_are_mounted_per_purpose_and_never_put_in_env_values():
    job = make_job(
        {
            "spec.model.credentialsSecretRef": {"name": "hf-token"},
            "spec.data.credentialsSecretRef": {"name": "data-s3"},
            "spec.output": {"uri": "s3://out/prefix", "credentialsSecretRef": {"name": "out-s3"}},
        }
    )
    volumes, mounts = volumes_of(job), mounts_of(job)
    for purpose, secret in (("model", "hf-token"), ("data", "data-s3"), ("output", "out-s3")):
        assert volumes[f"credentials-{purpose}"]["secret"]["secretName"] == secret
        assert mounts[f"credentials-{purpose}"] == {
            "name": f"credentials-{purpose}",
            "mountPath": f"/var/run/finetune/credentials/{purpose}",
            "readOnly": True,
        }
    for variable in container(job)["env"]:
        assert "secretKeyRef" not in variable.get("valueFrom", {}), variable
    assert "envFrom" not in container(job)


def test_the_default_output_secret_is_mounted_for_the_default_output():
    settings = Settings(default_output_uri="s3://models/out", default_output_secret="platform-s3")
    assert volumes_of(make_job(), settings)["credentials-output"]["secret"]["secretName"] == "platform-s3"


def test_no_credentials_no_secret_volumes():
    assert not [name for name in volumes_of(make_job()) if name.startswith("credentials-")]


def test_claims_are_mounted_read_only_unless_the_trainer_writes_there():
    job = make_job(
        {
            "spec.model.uri": "pvc://models/llama-3-8b",
            "spec.data.train": [{"uri": "pvc://datasets/train.jsonl"}],
            "spec.output.uri": "pvc://outputs/runs",
        }
    )
    volumes = [v for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v]
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    by_claim = {v["persistentVolumeClaim"]["claimName"]: v for v in volumes}
    assert set(by_claim) == {"models", "datasets", "outputs"}
    for claim, writable in (("models", False), ("datasets", False), ("outputs", True)):
        volume = by_claim[claim]
        assert volume["persistentVolumeClaim"]["readOnly"] is (not writable), claim
        mount = mounts[volume["name"]]
        assert mount["mountPath"] == f"/mnt/pvc/{claim}"
        assert mount["readOnly"] is (not writable), claim


def test_a_claim_read_and_written_is_mounted_once_writable():
    job = make_job({"spec.model.uri": "pvc://shared/base", "spec.output.uri": "pvc://shared/out"})
    claims = [v for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"name": "pvc-0", "persistentVolumeClaim": {"claimName": "shared", "readOnly": False}}]


def test_the_progress_token_is_projected_only_when_a_progress_url_is_set():
    assert "progress-token" not in volumes_of(make_job())
    assert "progress-token" not in mounts_of(make_job())
    settings = Settings(
        default_output_uri="s3://models/out", progress_url="https://operator:8443", progress_audience="example.com/p"
    )
    volume = volumes_of(make_job(), settings)["progress-token"]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "example.com/p"
    assert source["serviceAccountToken"]["path"] == "token"
    assert 600 <= source["serviceAccountToken"]["expirationSeconds"] <= 86400
    assert mounts_of(make_job(), settings)["progress-token"] == {
        "name": "progress-token",
        "mountPath": "/var/run/finetune/progress",
        "readOnly": True,
    }


def test_user_env_volumes_and_mounts_are_appended_after_the_operators():
    job = make_job(
        {
            "spec.template": {
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                "volumes": [{"name": "extra", "emptyDir": {}}],
                "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            }
        }
    )
    trainer = container(job)
    assert trainer["env"][-1] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert trainer["env"][0]["name"] == "MACHINE_RANK"
    assert pod_spec(job)["volumes"][-1] == {"name": "extra", "emptyDir": {}}
    assert trainer["volumeMounts"][-1] == {"name": "extra", "mountPath": "/extra"}


def test_user_env_from_a_secret_reference_is_passed_as_written():
    reference = {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    job = make_job({"spec.template.env": [{"name": "WANDB_API_KEY", "valueFrom": reference}]})
    assert env_of(job)["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": reference}


def test_volume_names_are_unique():
    job = make_job(
        {
            "spec.model": {"uri": "pvc://models/base", "credentialsSecretRef": {"name": "same"}},
            "spec.data.credentialsSecretRef": {"name": "same"},
        }
    )
    settings = Settings(default_output_uri="pvc://out/runs", default_output_secret="same", progress_url="https://op")
    names = [v["name"] for v in pod_spec(job, settings)["volumes"]]
    assert len(names) == len(set(names))
    mount_names = [m["name"] for m in container(job, settings)["volumeMounts"]]
    assert sorted(mount_names) == sorted(names)


# ---------------------------------------------------------------------------------------------
# the Job


def test_the_job_is_indexed_with_one_pod_per_node():
    spec = render_job(make_job({"spec.resources.nodes": 4}), SETTINGS, "cfg")["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 4
    assert spec["parallelism"] == 4


def test_the_job_is_named_after_the_finetunejob_and_owned_by_it():
    metadata = render_job(make_job(), SETTINGS, "cfg")["metadata"]
    assert metadata["name"] == "demo"
    assert metadata["namespace"] == NAMESPACE
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "demo",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_the_job_carries_the_config_hash():
    annotations = render_job(make_job(), SETTINGS, "0123456789abcdef")["metadata"]["annotations"]
    assert annotations[CONFIG_HASH_ANNOTATION] == "0123456789abcdef"


def test_the_backoff_limit_comes_from_spec():
    assert render_job(make_job({"spec.backoffLimit": 7}), SETTINGS, "cfg")["spec"]["backoffLimit"] == 7


def test_the_deadline_is_absent_unless_set():
    spec = render_job(make_job(), SETTINGS, "cfg")["spec"]
    assert "activeDeadlineSeconds" not in spec


def test_the_deadline_is_copied_and_the_ttl_is_left_to_the_operator():
    job = make_job({"spec.activeDeadlineSeconds": 86400, "spec.ttlSecondsAfterFinished": 0})
    spec = render_job(job, SETTINGS, "cfg")["spec"]
    assert spec["activeDeadlineSeconds"] == 86400
    # The Job controller's TTL could remove a finished Job before the operator recorded its outcome.
    assert "ttlSecondsAfterFinished" not in spec


def test_the_pod_failure_policy_fails_the_job_on_the_non_retriable_exit_codes():
    rules = render_job(make_job(), SETTINGS, "cfg")["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    (rule,) = fail_job
    assert rule["onExitCodes"]["containerName"] == "trainer"
    assert rule["onExitCodes"]["operator"] == "In"
    assert rule["onExitCodes"]["values"] == sorted(int(code) for code in ExitCode if not code.retriable)
    assert set(rule["onExitCodes"]["values"]) == {65, 78, 79}


def test_preemption_and_failures_are_retried_and_disruptions_ignored():
    rules = render_job(make_job(), SETTINGS, "cfg")["spec"]["podFailurePolicy"]["rules"]
    failing_codes = {code for r in rules if "onExitCodes" in r for code in r["onExitCodes"]["values"]}
    assert int(ExitCode.PREEMPTED) not in failing_codes
    assert int(ExitCode.FAILURE) not in failing_codes
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules


def test_a_failed_pod_is_replaced_only_once_it_is_gone():
    assert render_job(make_job(), SETTINGS, "cfg")["spec"]["podReplacementPolicy"] == "Failed"


def test_the_job_runs_unless_spec_suspends_it():
    assert render_job(make_job(), SETTINGS, "cfg")["spec"]["suspend"] is False
    assert render_job(make_job({"spec.suspend": True}), SETTINGS, "cfg")["spec"]["suspend"] is True


def test_kueue_labels_are_copied_and_a_queued_job_starts_suspended():
    job = make_job({"metadata.labels": {QUEUE_LABEL: "team-a", PRIORITY_LABEL: "high", "other": "x"}})
    manifest = render_job(job, SETTINGS, "cfg")
    assert manifest["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert manifest["metadata"]["labels"][PRIORITY_LABEL] == "high"
    assert "other" not in manifest["metadata"]["labels"]
    assert manifest["spec"]["suspend"] is True


def test_a_priority_class_label_alone_does_not_queue_the_job():
    manifest = render_job(make_job({"metadata.labels": {PRIORITY_LABEL: "high"}}), SETTINGS, "cfg")
    assert manifest["metadata"]["labels"][PRIORITY_LABEL] == "high"
    assert manifest["spec"]["suspend"] is False


def test_the_job_labels_select_its_pods():
    manifest = render_job(make_job(), SETTINGS, "cfg")
    assert manifest["metadata"]["labels"]["finetune.dev/job"] == "demo"
    assert manifest["spec"]["template"]["metadata"]["labels"]["finetune.dev/job"] == "demo"


def test_the_pod_template_of_the_job_is_render_pod_template():
    job = make_job({"spec.resources.nodes": 2})
    assert render_job(job, SETTINGS, "cfg")["spec"]["template"] == render_pod_template(job, SETTINGS)


# ---------------------------------------------------------------------------------------------
# determinism and the spec hash


def _spec_hash(job: FineTuneJob, settings: Settings = SETTINGS) -> str:
    return render_job(job, settings, "cfg")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


def test_the_same_job_renders_the_same_manifest():
    edits = {
        "spec.resources.nodes": 2,
        "spec.model.credentialsSecretRef": {"name": "hf"},
        "spec.data.train": [{"uri": "pvc://b/x"}, {"uri": "pvc://a/y"}],
    }
    assert render_job(make_job(edits), SETTINGS, "cfg") == render_job(make_job(edits), SETTINGS, "cfg")


def test_rendering_does_not_change_the_job():
    job = make_job({"spec.resources.nodes": 2, "spec.template.tolerations": [{"key": "a", "operator": "Exists"}]})
    before = copy.deepcopy(job.model_dump())
    render_job(job, SETTINGS, "cfg")
    render_job(job, SETTINGS, "cfg")
    assert job.model_dump() == before


def test_the_spec_hash_is_a_short_stable_hex_string():
    spec_hash = _spec_hash(make_job())
    assert len(spec_hash) == 16
    int(spec_hash, 16)
    assert spec_hash == _spec_hash(make_job())


@pytest.mark.parametrize(
    "edits",
    [
        {"spec.resources.gpusPerNode": 2},
        {"spec.resources.nodes": 2},
        {"spec.resources.memory": "64Gi"},
        {"spec.resources.cpu": "8"},
        {"spec.template.image": "example.com/trainer:2"},
        {"spec.backoffLimit": 9},
    ],
    ids=lambda edits: next(iter(edits)),
)
def test_the_spec_hash_changes_with_what_the_job_runs(edits):
    assert _spec_hash(make_job(edits)) != _spec_hash(make_job())


def test_the_spec_hash_ignores_suspend():
    assert _spec_hash(make_job({"spec.suspend": True})) == _spec_hash(make_job())


def test_the_spec_hash_ignores_the_config_hash():
    job = make_job()
    first = render_job(job, SETTINGS, "aaaa")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    second = render_job(job, SETTINGS, "bbbb")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert first == second


# ---------------------------------------------------------------------------------------------
# the examples


def _example_jobs() -> list:
    examples = Path(__file__).resolve().parents[2] / "examples"
    return [
        pytest.param(document, id=f"{path.name}#{index}")
        for path in sorted(examples.glob("*.yaml"))
        for index, document in enumerate(yaml.safe_load_all(path.read_text()))
        if document and document["kind"] == "FineTuneJob"
    ]


@pytest.mark.parametrize("document", _example_jobs())
def test_every_example_renders_a_job_and_a_trainer_config(document):
    job = FineTuneJob.model_validate(
        edited(
            document,
            {
                "metadata.namespace": NAMESPACE,
                "metadata.uid": UID,
                "metadata.creationTimestamp": "2025-01-01T00:00:00Z",
            },
        )
    )
    config = resolve_trainer_config(job, SETTINGS)
    manifest = render_job(job, SETTINGS, data_hash(config_data(config, None)))
    assert manifest["spec"]["completions"] == job.spec.resources.nodes
    assert flag(manifest["spec"]["template"]["spec"]["containers"][0]["args"], "num_machines") == str(
        job.spec.resources.nodes
    )


@pytest.mark.parametrize(
    ("cpu", "gpus", "threads"),
    [("16", 8, "2"), ("2", 0, "2"), ("500m", 0, "1"), ("3.5", 1, "3"), ("4", 8, "1")],
)
def test_torch_threads_follow_the_cpu_limit_per_process(cpu, gpus, threads):
    job = FineTuneJob.model_validate(
        {**valid_job(), "spec": {**valid_job()["spec"], "resources": {"cpu": cpu, "gpusPerNode": gpus}}}
    )
    env = {e["name"]: e.get("value") for e in render_pod_template(job, Settings())["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == threads


@pytest.mark.parametrize(
    ("cpu", "gpus", "threads"),
    [
        ("1k", 8, "125"),
        ("2Ki", 2, "1024"),
        ("1e3", 4, "250"),
        ("1E1", 0, "10"),
        ("0.5k", 0, "500"),
        ("1M", 1, "1000000"),
    ],
)
def test_torch_threads_follow_cpu_limits_written_with_any_suffix(cpu, gpus, threads):
    job = make_job({"spec.resources": {"cpu": cpu, "gpusPerNode": gpus}})
    assert env_of(job)["OMP_NUM_THREADS"]["value"] == threads
    assert container(job)["resources"]["limits"]["cpu"] == cpu


@pytest.mark.parametrize("name", ["MACHINE_RANK", "POD_NAME", "HOME", "FINETUNE_SCRATCH_DIR", "FINETUNE_ANYTHING"])
def test_user_env_cannot_override_what_the_operator_sets(name):
    from finetune_core.api import format_validation_error
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        make_job({"spec.template.env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": name, "value": "x"}]})
    (message,) = format_validation_error(raised.value)
    assert message.startswith("spec.template.env[1]: spec.template.env[].name: MACHINE_RANK"), message
    assert "are set by the operator" in message


def test_every_variable_the_operator_sets_is_reserved_except_omp_num_threads():
    from finetune_core.api.finetunejob import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIX

    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator:8443")
    job = make_job({"spec.resources": {"cpu": "8", "nodes": 2}})
    for variable in container(job, settings)["env"]:
        name = variable["name"]
        if name != "OMP_NUM_THREADS":
            assert name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIX), name


def test_torch_threads_are_left_alone_without_a_cpu_limit_or_when_the_user_sets_them():
    job = FineTuneJob.model_validate(valid_job())
    env = [e["name"] for e in render_pod_template(job, Settings())["spec"]["containers"][0]["env"]]
    assert "OMP_NUM_THREADS" not in env
    spec = {
        **valid_job()["spec"],
        "resources": {"cpu": "8"},
        "template": {"env": [{"name": "OMP_NUM_THREADS", "value": "3"}]},
    }
    job = FineTuneJob.model_validate({**valid_job(), "spec": spec})
    env = [(e["name"], e.get("value")) for e in render_pod_template(job, Settings())["spec"]["containers"][0]["env"]]
    assert [value for name, value in env if name == "OMP_NUM_THREADS"] == ["3"]
