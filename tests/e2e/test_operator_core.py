"""The operator, run as a process against the real control plane: what only a running operator and the
cluster's own controllers show (scheduling, restarts at any point, what kopf writes, pod admission). kwok
plays the GPU nodes; pods finish as their annotations say (hack/kwok/stages.yaml). What a reconcile does
at each step of a job's life is the in-process tier's (tests/inprocess/test_reconcile_lifecycle.py)."""

from __future__ import annotations

import time

import pytest
from catalog import valid_job
from kubehelpers import apply, condition, condition_is, get, items, wait_for

RUN = "test.finetune.dev/run-duration"


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
    assert all(p["spec"]["nodeName"].startswith("gpu-") for p in pods), "GPU pods land on GPU nodes"
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
