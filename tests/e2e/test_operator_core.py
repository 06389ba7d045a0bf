"""The operator, run as a process against the real control plane, turns FineTuneJobs into training
Jobs and keeps their status true. kwok plays the GPU nodes; pods finish as their annotations say
(hack/kwok/stages.yaml) or as a test writes their status, as a kubelet would."""

from __future__ import annotations

import json
import time

import pytest
from catalog import valid_job
from finetune_core.api import TrainerConfig
from kubehelpers import apply, condition, condition_is, get, items, patch_pod_status, wait_for

RUN = "test.finetune.dev/run-duration"
EXIT = "test.finetune.dev/exit-code"
MESSAGE = "test.finetune.dev/termination-message"


def training_job(name: str, namespace: str, *, run: str = "2s", **spec) -> dict:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 8, "cpu": "16", "memory": "64Gi"}
    manifest["spec"]["template"] = {"podAnnotations": {RUN: run}}
    for key, value in spec.items():
        manifest["spec"][key] = value
    return manifest


def selector(name: str) -> str:
    return f"finetune.dev/job={name}"


def test_a_lora_job_gets_its_children_and_succeeds(cluster, namespace, operator):
    apply(cluster, training_job("support-bot", namespace))

    job = wait_for("the training Job", lambda: get(cluster, "job", namespace, "support-bot"))
    config_map = get(cluster, "configmap", namespace, "support-bot-config")
    service = get(cluster, "service", namespace, "support-bot")
    account = get(cluster, "serviceaccount", namespace, "support-bot-trainer")
    ftj = get(cluster, "ftj", namespace, "support-bot")
    for child in (job, config_map, service, account):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == ftj["metadata"]["uid"] and owner["controller"] is True

    config = TrainerConfig.model_validate_json(config_map["data"]["config.json"])
    assert config.training.learning_rate == 1e-4
    version = config.output.version
    assert config.output.checkpoints_uri == f"s3://adapters/{namespace}/support-bot/checkpoints/{version}/"
    assert service["spec"]["clusterIP"] == "None"
    assert account["automountServiceAccountToken"] is False

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 1
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [65, 78, 79]
    pod_spec = spec["template"]["spec"]
    (trainer,) = pod_spec["containers"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "16", "memory": "64Gi"}
    assert trainer["command"] == ["python", "-m", "finetune_trainer.launch", "--"]
    assert trainer["args"][:2] == ["accelerate", "launch"]
    assert "--num_processes=8" in trainer["args"] and "--multi_gpu" in trainer["args"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert trainer["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    shm = next(v for v in pod_spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"

    pods = wait_for(
        "a scheduled pod", lambda: [p for p in items(cluster, "pods", namespace) if p["spec"].get("nodeName")]
    )
    assert pods[0]["spec"]["nodeName"].startswith("gpu-")

    cluster.run_kubectl("wait", "--for=condition=Succeeded", "ftj/support-bot", "-n", namespace, "--timeout=60s")
    done = get(cluster, "ftj", namespace, "support-bot")
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["completionTime"]
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    reasons = {e["reason"] for e in items(cluster, "events", namespace) if e["involvedObject"]["kind"] == "FineTuneJob"}
    assert {"JobCreated", "PodsRunning", "TrainingSucceeded"} <= reasons


def test_a_two_node_job_gets_two_ranks_that_rendezvous_at_rank_zero(cluster, namespace, operator):
    manifest = training_job("two-nodes", namespace, run="30s")
    manifest["spec"]["resources"]["nodes"] = 2
    apply(cluster, manifest)

    pods = wait_for(
        "two running ranks",
        lambda: (
            [
                p
                for p in items(cluster, "pods", namespace, selector("two-nodes"))
                if p["status"].get("phase") == "Running"
            ]
            if len(items(cluster, "pods", namespace, selector("two-nodes"))) == 2
            else None
        ),
    )
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "one pod per node"
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    for pod in pods:
        assert pod["spec"]["subdomain"] == "two-nodes"
        assert (
            pod["spec"]["hostname"]
            == f"two-nodes-{pod['metadata']['annotations']['batch.kubernetes.io/job-completion-index']}"
        )
        command = pod["spec"]["containers"][0]["args"]
        assert "--num_machines=2" in command and "--num_processes=16" in command
        assert "--machine_rank=$(MACHINE_RANK)" in command
        assert f"--main_process_ip=two-nodes-0.two-nodes.{namespace}.svc" in command
        rank = next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "MACHINE_RANK")
        assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    wait_for("Running", condition_is(cluster, namespace, "two-nodes", "Running"))


def test_a_configuration_error_fails_the_job_at_once_with_the_trainers_message(cluster, namespace, operator):
    manifest = training_job("bad-config", namespace)
    manifest["spec"]["template"]["podAnnotations"].update(
        {EXIT: "78", MESSAGE: "method qlora needs CUDA GPUs; this pod has none"}
    )
    apply(cluster, manifest)

    failed = wait_for("Failed", condition_is(cluster, namespace, "bad-config", "Failed"))
    assert failed["reason"] == "ConfigurationError"
    assert "exited with code 78" in failed["message"]
    assert "method qlora needs CUDA GPUs" in failed["message"]
    ftj = get(cluster, "ftj", namespace, "bad-config")
    assert ftj["status"]["phase"] == "Failed"
    assert condition(ftj, "Succeeded")["status"] == "False"
    assert len(items(cluster, "pods", namespace, selector("bad-config"))) == 1, "not retried"


def test_a_preempted_pod_is_retried_and_the_restart_is_counted(cluster, namespace, operator):
    apply(cluster, training_job("preempted", namespace, run="1h"))
    first = wait_for(
        "a running pod",
        lambda: [
            p for p in items(cluster, "pods", namespace, selector("preempted")) if p["status"].get("phase") == "Running"
        ],
    )[0]
    patch_pod_status(cluster, namespace, first["metadata"]["name"], "Failed", 75, "checkpoint step-40 saved; exiting")

    def replacement():
        pods = items(cluster, "pods", namespace, selector("preempted"))
        return [
            p
            for p in pods
            if p["metadata"]["name"] != first["metadata"]["name"] and p["status"].get("phase") == "Running"
        ]

    second = wait_for("a replacement pod", replacement)[0]
    wait_for("restarts counted", lambda: get(cluster, "ftj", namespace, "preempted")["status"].get("restarts") == 1)
    patch_pod_status(cluster, namespace, second["metadata"]["name"], "Succeeded", 0)
    wait_for("Succeeded", condition_is(cluster, namespace, "preempted", "Succeeded"), timeout=60)
    assert get(cluster, "ftj", namespace, "preempted")["status"]["restarts"] == 1


def test_suspend_resize_and_resume(cluster, namespace, operator):
    apply(cluster, training_job("held", namespace, suspend=True))
    suspended = wait_for("Suspended", condition_is(cluster, namespace, "held", "Suspended"))
    assert suspended["reason"] == "JobSuspended"
    assert get(cluster, "job", namespace, "held")["spec"]["suspend"] is True
    assert items(cluster, "pods", namespace, selector("held")) == []

    cluster.run_kubectl(
        "patch",
        "ftj",
        "held",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"resources": {"gpusPerNode": 4}}}),
    )

    def resized():
        job = get(cluster, "job", namespace, "held")
        limits = job and job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        return job if limits and limits.get("nvidia.com/gpu") == "4" else None

    wait_for("the Job re-rendered with 4 GPUs", resized)
    cluster.run_kubectl("patch", "ftj", "held", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Succeeded", condition_is(cluster, namespace, "held", "Succeeded"), timeout=60)
    pod = items(cluster, "pods", namespace, selector("held"))[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert condition(get(cluster, "ftj", namespace, "held"), "Suspended")["status"] == "False"


def test_a_missing_secret_is_a_condition_and_creating_it_lets_the_job_proceed(cluster, namespace, operator):
    manifest = training_job("needs-creds", namespace)
    manifest["spec"]["data"]["credentialsSecretRef"] = {"name": "s3-creds"}
    apply(cluster, manifest)

    blocked = wait_for(
        "ReferencesResolved=False", condition_is(cluster, namespace, "needs-creds", "ReferencesResolved", "False")
    )
    assert blocked["reason"] == "SecretNotFound"
    assert "Secret s3-creds (spec.data.credentialsSecretRef) not found" in blocked["message"]
    assert get(cluster, "ftj", namespace, "needs-creds")["status"]["phase"] == "Pending"
    for kind, name in [
        ("job", "needs-creds"),
        ("configmap", "needs-creds-config"),
        ("serviceaccount", "needs-creds-trainer"),
    ]:
        assert get(cluster, kind, namespace, name) is None, f"{kind} created before the references exist"

    cluster.run_kubectl(
        "create", "secret", "generic", "s3-creds", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=x"
    )
    wait_for("Succeeded", condition_is(cluster, namespace, "needs-creds", "Succeeded"), timeout=60)
    assert condition(get(cluster, "ftj", namespace, "needs-creds"), "ReferencesResolved")["status"] == "True"


def test_a_pod_template_the_api_server_refuses_is_a_condition_not_a_retry_storm(cluster, namespace, operator):
    manifest = training_job("bad-affinity", namespace)
    manifest["spec"]["template"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    apply(cluster, manifest)

    refused = wait_for("Created=False", condition_is(cluster, namespace, "bad-affinity", "Created", "False"))
    assert refused["reason"] == "InvalidPodTemplate" and "nodeSelectorTerms" in refused["message"]
    assert get(cluster, "job", namespace, "bad-affinity") is None
    # Fixing the template lets it proceed.
    cluster.run_kubectl(
        "patch", "ftj", "bad-affinity", "-n", namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/template/affinity"}]',
    )  # fmt: skip
    wait_for("Succeeded", condition_is(cluster, namespace, "bad-affinity", "Succeeded"), timeout=90)


def test_a_spec_changed_while_running_waits_for_a_suspend_and_says_so(cluster, namespace, operator):
    apply(cluster, training_job("steady", namespace, run="1h"))
    wait_for("Running", condition_is(cluster, namespace, "steady", "Running"))

    def learning_rate() -> float:
        raw = get(cluster, "configmap", namespace, "steady-config")["data"]["config.json"]
        return TrainerConfig.model_validate_json(raw).training.learning_rate

    started_with = learning_rate()
    patch = json.dumps({"spec": {"training": {"learningRate": 0.0003}}})
    cluster.run_kubectl("patch", "ftj", "steady", "-n", namespace, "--type=merge", "-p", patch)
    waiting = wait_for("SpecApplied=False", condition_is(cluster, namespace, "steady", "SpecApplied", "False"))
    assert waiting["reason"] == "AppliesWhenSuspended"
    assert learning_rate() == started_with, "the running pods' configuration changed under them"

    cluster.run_kubectl("patch", "ftj", "steady", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("SpecApplied=True", condition_is(cluster, namespace, "steady", "SpecApplied"), timeout=60)
    assert learning_rate() == 0.0003


def test_a_spec_the_models_refuse_beyond_the_schema_is_reported_and_nothing_is_created(cluster, namespace, operator):
    manifest = training_job("overflowing", namespace)
    # apimachinery reads this exponent as an int32 (it wraps to 1: 10 cores) and the CRD admits it;
    # the models' parser refuses it rather than guess.
    manifest["spec"]["resources"]["cpu"] = "1e4294967297"
    apply(cluster, manifest)

    refused = wait_for("Created=False", condition_is(cluster, namespace, "overflowing", "Created", "False"))
    assert refused["reason"] == "InvalidSpec"
    assert "spec.resources.cpu: the exponent is out of range" in refused["message"]
    ftj = get(cluster, "ftj", namespace, "overflowing")
    assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]
    assert get(cluster, "job", namespace, "overflowing") is None


@pytest.mark.parametrize(("cpu", "threads"), [("1k", "125"), ("2Ki", "256")])
def test_a_cpu_quantity_with_any_suffix_gets_a_job_and_a_status(cluster, namespace, operator, cpu, threads):
    manifest = training_job("many-cores", namespace)
    manifest["spec"]["resources"]["cpu"] = cpu
    apply(cluster, manifest)

    job = wait_for("the training Job", lambda: get(cluster, "job", namespace, "many-cores"))
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    assert trainer["resources"]["limits"]["cpu"] == cpu
    assert {"name": "OMP_NUM_THREADS", "value": threads} in trainer["env"]
    created = wait_for("Created=True", condition_is(cluster, namespace, "many-cores", "Created"))
    assert created["status"] == "True"
    ftj = get(cluster, "ftj", namespace, "many-cores")
    assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]


def test_deleting_a_job_removes_its_children(cluster, namespace, operator):
    apply(cluster, training_job("short-lived", namespace, run="1h"))
    wait_for("the training Job", lambda: get(cluster, "job", namespace, "short-lived"))
    cluster.run_kubectl("delete", "ftj", "short-lived", "-n", namespace, "--timeout=30s")

    def gone():
        return all(
            get(cluster, kind, namespace, name) is None
            for kind, name in [
                ("job", "short-lived"),
                ("configmap", "short-lived-config"),
                ("service", "short-lived"),
                ("serviceaccount", "short-lived-trainer"),
            ]
        ) and not items(cluster, "pods", namespace, selector("short-lived"))

    wait_for("the children to be garbage-collected", gone, timeout=60)


@pytest.mark.parametrize("kill_after", ["apply", "job-created", "running", "finished"])
def test_an_operator_killed_at_any_point_converges_after_restart(cluster, namespace, start_operator, kill_after):
    first = start_operator()
    if kill_after == "apply":
        first.kill()
    apply(cluster, training_job("resilient", namespace, run="4s"))
    if kill_after == "job-created":
        wait_for("the Job", lambda: get(cluster, "job", namespace, "resilient"))
        first.kill()
    if kill_after == "running":
        wait_for("Running", condition_is(cluster, namespace, "resilient", "Running"))
        first.kill()
    if kill_after == "finished":
        wait_for("the Job to complete", lambda: condition(get(cluster, "job", namespace, "resilient"), "Complete"))
        first.kill()

    start_operator()
    wait_for("Succeeded", condition_is(cluster, namespace, "resilient", "Succeeded"), timeout=60)
    jobs = items(cluster, "jobs", namespace, selector("resilient"))
    assert len(jobs) == 1
    assert len(items(cluster, "configmaps", namespace, selector("resilient"))) == 1
    assert get(cluster, "ftj", namespace, "resilient")["status"]["phase"] == "Succeeded"


def test_ttl_removes_the_training_job_but_keeps_the_finetunejob(cluster, namespace, operator):
    apply(cluster, training_job("ephemeral", namespace, ttlSecondsAfterFinished=1))
    wait_for("Succeeded", condition_is(cluster, namespace, "ephemeral", "Succeeded"), timeout=60)
    # The operator removes it (not the Job controller's TTL, which could outrun the recording of the outcome).
    wait_for("the Job to be removed", lambda: get(cluster, "job", namespace, "ephemeral") is None, timeout=60)
    wait_for("its pods to go", lambda: not items(cluster, "pods", namespace, "finetune.dev/job=ephemeral"), timeout=60)
    cluster.run_kubectl("annotate", "ftj", "ephemeral", "-n", namespace, "poke=1")  # an event: reconcile again
    ftj = wait_for("a reconcile after the TTL", lambda: get(cluster, "ftj", namespace, "ephemeral"))
    assert ftj["status"]["phase"] == "Succeeded"
    assert get(cluster, "job", namespace, "ephemeral") is None, "a finished job is never restarted"


def test_gitops_metadata_changes_write_nothing_and_kopf_leaves_no_marks(cluster, namespace, operator):
    apply(cluster, training_job("gitops", namespace, run="1h"))
    wait_for("Running", condition_is(cluster, namespace, "gitops", "Running"))
    job_before = get(cluster, "job", namespace, "gitops")["metadata"]
    config_before = get(cluster, "configmap", namespace, "gitops-config")["metadata"]["resourceVersion"]
    cluster.run_kubectl(
        "annotate",
        "ftj",
        "gitops",
        "-n",
        namespace,
        "argocd.argoproj.io/tracking-id=team-a:finetune.dev/FineTuneJob:team-a/gitops",
    )
    annotated = get(cluster, "ftj", namespace, "gitops")["metadata"]["resourceVersion"]
    time.sleep(5)  # two resync periods
    ftj = get(cluster, "ftj", namespace, "gitops")
    assert ftj["metadata"]["resourceVersion"] == annotated, "the operator wrote to the FineTuneJob"
    # The Job controller keeps writing the Job's status; the operator must not have touched its spec or metadata.
    job_after = get(cluster, "job", namespace, "gitops")["metadata"]
    assert (job_after["generation"], job_after.get("annotations")) == (
        job_before["generation"],
        job_before.get("annotations"),
    )
    assert get(cluster, "configmap", namespace, "gitops-config")["metadata"]["resourceVersion"] == config_before
    assert not ftj["metadata"].get("finalizers")
    assert not [k for k in ftj["metadata"].get("annotations", {}) if "kopf" in k or k.startswith("finetune.dev/")]


@pytest.mark.parametrize("namespace", [{"pod-security.kubernetes.io/enforce": "restricted"}], indirect=True)
def test_training_pods_are_admitted_under_the_restricted_pod_security_standard(cluster, namespace, operator):
    apply(cluster, training_job("restricted", namespace))
    wait_for("Succeeded", condition_is(cluster, namespace, "restricted", "Succeeded"), timeout=60)
    warnings = [e for e in items(cluster, "events", namespace) if "violates PodSecurity" in e.get("message", "")]
    assert not warnings
