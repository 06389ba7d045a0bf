"""reconcile() through a training job's life: children created once, Running, Succeeded or Failed as the Job
and its pods say, suspend and resume, a spec change while running, and what the API server refuses."""

from __future__ import annotations

import datetime as dt

import pytest
from finetune_core.api import TrainerConfig
from finetune_operator.kube import CONFIGMAPS, FINETUNEJOBS, JOBS, PODS
from operator_harness import condition, timestamp, training_job


def test_a_job_gets_its_children_once_each_owned_by_it(harness):
    harness.create(training_job("support-bot", harness.namespace))

    outcome = harness.reconcile("support-bot")

    assert outcome.phase == "Pending"
    created = sorted(resource for verb, resource, _ in harness.sent("create") if resource != "events")
    assert created == ["configmaps", "jobs", "serviceaccounts", "services"]
    ftj = harness.ftj("support-bot")
    children = harness.children("support-bot")
    for kind, child in children.items():
        (owner,) = child["metadata"]["ownerReferences"]
        # What the garbage collector needs to delete the child with its FineTuneJob.
        assert owner == {
            "apiVersion": ftj["apiVersion"],
            "kind": "FineTuneJob",
            "name": "support-bot",
            "uid": ftj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }, kind
    config = TrainerConfig.model_validate_json(children["ConfigMap"]["data"]["config.json"])
    assert config.training.learning_rate == 1e-4
    version = config.output.version
    assert config.output.checkpoints_uri == f"s3://adapters/{harness.namespace}/support-bot/checkpoints/{version}/"
    assert children["Service"]["spec"]["clusterIP"] == "None"
    assert children["ServiceAccount"]["automountServiceAccountToken"] is False
    spec = children["Job"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 1
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [65, 78, 79]},
    }
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
    assert condition(ftj, "Created")["reason"] == "JobCreated"
    assert {e["reason"] for e in harness.events("support-bot")} >= {"JobCreated"}


def test_a_second_reconcile_of_an_unchanged_job_sends_no_request(harness):
    harness.create(training_job("steady", harness.namespace))
    harness.reconcile("steady")

    outcome = harness.reconcile("steady")

    assert outcome.phase == "Pending"
    assert harness.sent() == [], "children came from the caches; the status was already written"


def test_a_job_runs_and_succeeds_as_its_job_and_pods_say(harness):
    harness.create(training_job("support-bot", harness.namespace))
    harness.reconcile("support-bot")
    (pod,) = harness.start_pods("support-bot")

    running = harness.reconcile("support-bot")

    assert running.phase == "Running"
    ftj = harness.ftj("support-bot")
    assert condition(ftj, "Running")["reason"] == "PodsRunning"
    assert ftj["status"]["startTime"] and ftj["status"]["jobName"] == "support-bot"

    harness.finish_pod(pod["metadata"]["name"], 0)
    completing = harness.reconcile("support-bot")
    assert completing.phase == "Running"
    assert condition(harness.ftj("support-bot"), "Running")["reason"] == "Completing"

    harness.complete_job("support-bot")
    done = harness.reconcile("support-bot")

    assert done.phase == "Succeeded"
    ftj = harness.ftj("support-bot")
    assert ftj["status"]["phase"] == "Succeeded" and ftj["status"]["completionTime"]
    assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]
    assert condition(ftj, "Succeeded")["status"] == "True"
    reasons = {e["reason"] for e in harness.events("support-bot")}
    assert {"JobCreated", "PodsRunning", "TrainingSucceeded"} <= reasons


def test_a_configuration_error_fails_the_job_with_the_trainers_message(harness):
    harness.create(training_job("bad-config", harness.namespace))
    harness.reconcile("bad-config")
    (pod,) = harness.start_pods("bad-config")
    harness.finish_pod(pod["metadata"]["name"], 78, "method qlora needs CUDA GPUs; this pod has none")
    harness.fail_job("bad-config", message="Container trainer for pod exited with code 78 matching FailJob rule")

    outcome = harness.reconcile("bad-config")

    assert outcome.phase == "Failed"
    ftj = harness.ftj("bad-config")
    failed = condition(ftj, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ConfigurationError"
    assert "exited with code 78" in failed["message"]
    assert "method qlora needs CUDA GPUs" in failed["message"]
    assert condition(ftj, "Succeeded")["status"] == "False"
    assert ftj["status"]["phase"] == "Failed"


def test_a_preempted_pod_is_a_restart_and_its_replacement_finishes_the_job(harness):
    harness.create(training_job("preempted", harness.namespace))
    harness.reconcile("preempted")
    (first,) = harness.start_pods("preempted")
    harness.finish_pod(first["metadata"]["name"], 75, "checkpoint step-40 saved; exiting")
    harness.count_failed_pod("preempted")

    restarting = harness.reconcile("preempted")

    assert restarting.phase == "Pending"
    ftj = harness.ftj("preempted")
    assert ftj["status"]["restarts"] == 1
    assert condition(ftj, "Running")["reason"] == "Restarting"
    assert "exited with code 75" in condition(ftj, "Running")["message"]

    (second,) = harness.start_pods("preempted")
    assert harness.reconcile("preempted").phase == "Running"
    harness.finish_pod(second["metadata"]["name"], 0)
    harness.complete_job("preempted")

    assert harness.reconcile("preempted").phase == "Succeeded"
    assert harness.ftj("preempted")["status"]["restarts"] == 1


def test_a_disrupted_pod_counts_as_a_restart_though_the_job_does_not_count_it(harness):
    harness.create(training_job("drained", harness.namespace))
    harness.reconcile("drained")
    (pod,) = harness.start_pods("drained")
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    harness.finish_pod(pod["metadata"]["name"], 143, conditions=[{**disruption, "lastTransitionTime": timestamp()}])

    harness.reconcile("drained")

    assert harness.ftj("drained")["status"]["restarts"] == 1


def test_suspend_resize_and_resume(harness):
    harness.create(training_job("held", harness.namespace, suspend=True))

    assert harness.reconcile("held").phase == "Suspended"
    suspended = condition(harness.ftj("held"), "Suspended")
    assert suspended["status"] == "True" and suspended["reason"] == "JobSuspended"
    assert harness.get(JOBS, "held")["spec"]["suspend"] is True

    harness.patch(FINETUNEJOBS, "held", {"spec": {"resources": {"gpusPerNode": 4}}})
    harness.reconcile("held")  # a suspended Job's template cannot change: it is replaced
    assert harness.sent("delete") == [("delete", "jobs", "200")]
    harness.reconcile("held")
    resized = harness.get(JOBS, "held")
    assert resized["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert resized["spec"]["suspend"] is True

    harness.patch(FINETUNEJOBS, "held", {"spec": {"suspend": False}})
    harness.reconcile("held")
    assert harness.get(JOBS, "held")["spec"]["suspend"] is False
    harness.start_pods("held")

    assert harness.reconcile("held").phase == "Running"
    assert condition(harness.ftj("held"), "Suspended")["status"] == "False"


def test_a_suspended_running_job_stops_its_job(harness):
    harness.create(training_job("paused", harness.namespace))
    harness.reconcile("paused")
    harness.start_pods("paused")
    harness.reconcile("paused")

    harness.patch(FINETUNEJOBS, "paused", {"spec": {"suspend": True}})
    harness.reconcile("paused")

    assert harness.get(JOBS, "paused")["spec"]["suspend"] is True
    assert harness.sent("patch")[0] == ("patch", "jobs", "200")


def test_a_missing_secret_is_a_condition_and_creating_it_lets_the_job_proceed(harness):
    manifest = training_job("needs-creds", harness.namespace)
    manifest["spec"]["data"]["credentialsSecretRef"] = {"name": "s3-creds"}
    harness.create(manifest)

    assert harness.reconcile("needs-creds").phase == "Pending"

    blocked = condition(harness.ftj("needs-creds"), "ReferencesResolved")
    assert blocked["status"] == "False" and blocked["reason"] == "SecretNotFound"
    assert "Secret s3-creds (spec.data.credentialsSecretRef) not found" in blocked["message"]
    assert harness.sent("create") == [("create", "events", "201")] * len(harness.sent("create"))
    assert all(child is None for child in harness.children("needs-creds").values())

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}}
    harness.create({**secret, "stringData": {"AWS_ACCESS_KEY_ID": "x"}})
    harness.reconcile("needs-creds")

    assert condition(harness.ftj("needs-creds"), "ReferencesResolved")["status"] == "True"
    assert all(child is not None for child in harness.children("needs-creds").values())


def test_a_pod_template_the_api_server_refuses_is_a_condition_not_a_retry(harness):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    harness.create(training_job("bad-affinity", harness.namespace, template={"affinity": affinity}))

    outcome = harness.reconcile("bad-affinity")  # returns: a failed reconcile would be retried at once

    assert outcome.phase == "Pending"
    refused = condition(harness.ftj("bad-affinity"), "Created")
    assert refused["status"] == "False" and refused["reason"] == "InvalidPodTemplate"
    assert "nodeSelectorTerms" in refused["message"]
    assert harness.get(JOBS, "bad-affinity") is None

    harness.patch(FINETUNEJOBS, "bad-affinity", {"spec": {"template": {"affinity": None}}})
    harness.reconcile("bad-affinity")
    assert harness.get(JOBS, "bad-affinity") is not None
    assert condition(harness.ftj("bad-affinity"), "Created")["status"] == "True"


def test_a_spec_changed_while_running_waits_for_a_suspend_and_says_so(harness):
    harness.create(training_job("steady", harness.namespace))
    harness.reconcile("steady")
    (pod,) = harness.start_pods("steady")
    harness.reconcile("steady")

    def learning_rate() -> float:
        raw = harness.get(CONFIGMAPS, "steady-config")["data"]["config.json"]
        return TrainerConfig.model_validate_json(raw).training.learning_rate

    started_with = learning_rate()
    harness.patch(FINETUNEJOBS, "steady", {"spec": {"training": {"learningRate": 0.0003}}})
    harness.reconcile("steady")

    waiting = condition(harness.ftj("steady"), "SpecApplied")
    assert waiting["status"] == "False" and waiting["reason"] == "AppliesWhenSuspended"
    assert learning_rate() == started_with, "the running pods' configuration changed under them"

    harness.patch(FINETUNEJOBS, "steady", {"spec": {"suspend": True}})
    harness.reconcile("steady")
    # The Job controller stops the suspended Job's pods.
    harness.admin.delete(PODS, harness.namespace, pod["metadata"]["name"])
    harness.patch(JOBS, "steady", {"status": {"active": 0, "ready": 0}}, "status")
    harness.reconcile("steady")

    assert condition(harness.ftj("steady"), "SpecApplied")["status"] == "True"
    assert learning_rate() == 0.0003


def test_a_spec_the_models_refuse_beyond_the_schema_is_reported_and_nothing_is_created(harness):
    # apimachinery reads this exponent as an int32 (it wraps to 1: 10 cores) and the CRD admits it;
    # the models' parser refuses it rather than guess.
    manifest = training_job("overflowing", harness.namespace)
    manifest["spec"]["resources"]["cpu"] = "1e4294967297"
    harness.create(manifest)

    assert harness.reconcile("overflowing").phase == "Pending"

    ftj = harness.ftj("overflowing")
    refused = condition(ftj, "Created")
    assert refused["status"] == "False" and refused["reason"] == "InvalidSpec"
    assert "spec.resources.cpu: the exponent is out of range" in refused["message"]
    assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]
    assert harness.get(JOBS, "overflowing") is None
    harness.reconcile("overflowing")
    assert harness.sent() == [], "an invalid spec already reported is not written again"


@pytest.mark.parametrize(("cpu", "threads"), [("1k", "125"), ("2Ki", "256")])
def test_a_cpu_quantity_with_any_suffix_gets_a_job_and_a_status(harness, cpu, threads):
    manifest = training_job("many-cores", harness.namespace)
    manifest["spec"]["resources"]["cpu"] = cpu
    harness.create(manifest)

    harness.reconcile("many-cores")

    (trainer,) = harness.get(JOBS, "many-cores")["spec"]["template"]["spec"]["containers"]
    assert trainer["resources"]["limits"]["cpu"] == cpu
    assert {"name": "OMP_NUM_THREADS", "value": threads} in trainer["env"]
    ftj = harness.ftj("many-cores")
    assert condition(ftj, "Created")["status"] == "True"
    assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]


def test_ttl_removes_the_training_job_once_passed_and_the_job_is_never_restarted(harness):
    harness.create(training_job("ephemeral", harness.namespace, ttlSecondsAfterFinished=600))
    harness.reconcile("ephemeral")
    (pod,) = harness.start_pods("ephemeral", ago=dt.timedelta(minutes=5))
    harness.finish_pod(pod["metadata"]["name"], 0)
    harness.complete_job("ephemeral", finished=dt.timedelta(seconds=30))

    outcome = harness.reconcile("ephemeral")

    assert outcome.phase == "Succeeded"
    assert 500 < outcome.requeue_after <= 570, "due again when the TTL has passed"
    assert harness.get(JOBS, "ephemeral") is not None

    an_hour_ago = timestamp(dt.timedelta(hours=1))  # as if the TTL had passed meanwhile
    harness.patch(FINETUNEJOBS, "ephemeral", {"status": {"completionTime": an_hour_ago}}, "status")
    harness.reconcile("ephemeral")

    assert harness.sent("delete") == [("delete", "jobs", "200")]
    assert harness.get(JOBS, "ephemeral") is None
    harness.reconcile("ephemeral")
    assert harness.ftj("ephemeral")["status"]["phase"] == "Succeeded"
    assert harness.get(JOBS, "ephemeral") is None, "a finished job is never restarted"


def test_a_job_being_deleted_is_left_to_the_garbage_collector(harness):
    manifest = training_job("short-lived", harness.namespace)
    manifest["metadata"]["finalizers"] = ["test.finetune.dev/hold"]  # keeps it visible while it is deleted
    harness.create(manifest)
    harness.reconcile("short-lived")
    harness.admin.delete(FINETUNEJOBS, harness.namespace, "short-lived")

    outcome = harness.reconcile("short-lived")

    assert outcome.phase is None
    assert harness.sent() == []
    harness.patch(FINETUNEJOBS, "short-lived", {"metadata": {"finalizers": None}})
    assert harness.reconcile("short-lived").phase is None


def test_a_job_of_that_name_that_is_not_this_jobs_is_never_taken_over(harness):
    """A tenant's Job named like the training Job: reported, never changed, deleted or believed."""
    squatter = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "taken", "labels": {"app.kubernetes.io/managed-by": "finetune-operator"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}},
    }
    harness.create(squatter)
    harness.create(training_job("taken", harness.namespace))

    assert harness.reconcile("taken").phase == "Pending"

    blocked = condition(harness.ftj("taken"), "ReferencesResolved")
    assert blocked["reason"] == "JobNameTaken" and "is not this job's" in blocked["message"]
    assert harness.sent("delete") == []
    assert [r for r in harness.sent("patch") if r[1] != "finetunejobs/status"] == []
    assert harness.get(JOBS, "taken")["spec"]["template"]["spec"]["containers"][0]["name"] == "x"


def test_a_job_without_an_output_where_the_operator_has_no_default_is_told_so(harness):
    harness.configure(default_output_uri=None)
    harness.create(training_job("nowhere", harness.namespace))

    harness.reconcile("nowhere")

    blocked = condition(harness.ftj("nowhere"), "ReferencesResolved")
    assert blocked["reason"] == "OutputNotConfigured"
    assert harness.get(JOBS, "nowhere") is None


def test_a_volume_naming_no_valid_secret_is_refused_before_any_request(harness):
    volume = {"name": "extra", "secret": {"secretName": "Not_A_Name"}}
    harness.create(training_job("odd-volume", harness.namespace, template={"volumes": [volume]}))

    harness.reconcile("odd-volume")

    blocked = condition(harness.ftj("odd-volume"), "ReferencesResolved")
    assert blocked["reason"] == "InvalidReference"
    assert "spec.template.volumes[0].secret does not name a valid Secret" in blocked["message"]
    assert "Not_A_Name" not in blocked["message"], "what a tenant wrote is not echoed"
    assert not [r for r in harness.sent() if r[1] == "secrets"]
