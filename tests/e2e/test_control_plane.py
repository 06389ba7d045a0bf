"""The test control plane is a real one: CRDs, admission, controllers, scheduler, tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from catalog import CATALOG, edited, valid_job

REPO = Path(__file__).resolve().parents[2]


def apply(cluster, manifest, namespace, *extra, check=False):
    return cluster.run_kubectl(
        "apply", "-n", namespace, "--validate=strict", *extra, "-f", "-", input=json.dumps(manifest), check=check
    )


def test_crds_are_established_with_printer_columns(cluster):
    crd = json.loads(cluster.run_kubectl("get", "crd", "finetunejobs.finetune.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Status", "Queue", "Progress", "Loss", "ETA", "EST", "Adapter", "Age"]


def test_kubectl_explain_prints_the_field_descriptions(cluster):
    out = cluster.run_kubectl("explain", "finetunejob.spec.training").stdout
    assert "batchTokens" in out
    assert "Tokens per optimizer step over all ranks" in out


def test_kubectl_get_finetune_lists_both_kinds(cluster, namespace):
    out = cluster.run_kubectl("api-resources", "--categories=finetune", "-o", "name").stdout.split()
    assert sorted(out) == ["finetunejobs.finetune.dev", "modeladapters.finetune.dev"]
    assert cluster.run_kubectl("get", "finetune", "-n", namespace).returncode == 0


def _example_documents():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield pytest.param(document, id=path.name)


@pytest.mark.parametrize("document", list(_example_documents()))
def test_every_example_is_accepted_by_server_side_dry_run(cluster, namespace, document):
    document["metadata"]["namespace"] = namespace
    result = apply(cluster, document, namespace, "--dry-run=server")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", CATALOG, ids=lambda case: case.id)
def test_invalid_spec_is_rejected_by_the_api_server_naming_the_field(cluster, namespace, case):
    result = apply(cluster, case.manifest(), namespace, "--dry-run=server")
    assert result.returncode != 0, f"accepted: {case.id}"
    assert case.field in result.stderr, result.stderr


@pytest.mark.parametrize("cpu", ["1k", "2Ki", "500m", "1e3", "1n"])
def test_positive_quantities_with_any_suffix_are_accepted(cluster, namespace, cpu):
    manifest = edited(valid_job(), {"spec.resources.cpu": cpu, "spec.resources.sharedMemory": "1Gi"})
    result = apply(cluster, manifest, namespace, "--dry-run=server")
    assert result.returncode == 0, result.stderr


def test_a_host_path_volume_sent_without_field_validation_is_pruned_and_then_refused(cluster, namespace):
    # Without strict field validation the API server drops the unknown hostPath instead of refusing it; the
    # volume is then left without a source, which its own rule refuses: hostPath is never stored.
    manifest = edited(valid_job(), {"spec.template.volumes": [{"name": "host", "hostPath": {"path": "/"}}]})
    result = cluster.run_kubectl(
        "create", "-n", namespace, "--validate=false", "--dry-run=server", "-f", "-",
        input=json.dumps(manifest), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "spec.template.volumes[0]" in result.stderr and "needs exactly one source" in result.stderr


def _create(cluster, namespace, manifest):
    apply(cluster, manifest, namespace, "--server-side", check=True)


def _patch(cluster, namespace, name, patch, subresource=None):
    args = ["patch", "finetunejob", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)]
    if subresource:
        args.append(f"--subresource={subresource}")
    return cluster.run_kubectl(*args, check=False)


@pytest.mark.parametrize(
    ("field", "patch"),
    [
        ("spec.model", {"spec": {"model": {"uri": "hf://other/model"}}}),
        ("spec.method", {"spec": {"method": {"lora": {"rank": 64}}}}),
        ("spec.objective", {"spec": {"objective": "pretrain", "data": {"format": "text"}}}),
        ("spec.data", {"spec": {"data": {"maxInvalidFraction": 0.5}}}),
    ],
)
def test_immutable_fields_cannot_change(cluster, namespace, field, patch):
    _create(cluster, namespace, valid_job("frozen"))
    result = _patch(cluster, namespace, "frozen", patch)
    assert result.returncode != 0
    assert f"{field} is immutable" in result.stderr


def test_resources_change_only_while_suspended(cluster, namespace):
    _create(cluster, namespace, valid_job("resizable"))
    refused = _patch(cluster, namespace, "resizable", {"spec": {"resources": {"gpusPerNode": 4}}})
    assert "spec.resources can change only while the job is suspended" in refused.stderr
    assert _patch(cluster, namespace, "resizable", {"spec": {"suspend": True}}).returncode == 0
    accepted = _patch(cluster, namespace, "resizable", {"spec": {"resources": {"gpusPerNode": 4}}})
    assert accepted.returncode == 0, accepted.stderr


def test_defaults_are_applied_by_the_api_server(cluster, namespace):
    _create(cluster, namespace, valid_job("defaults"))
    stored = json.loads(cluster.run_kubectl("get", "ftj", "defaults", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["method"] == {"type": "lora"}
    assert stored["spec"]["training"]["batchTokens"] == 65536
    assert stored["spec"]["evaluation"]["gate"]["mode"] == "enforce"


def test_status_subresource_keeps_spec_and_status_apart(cluster, namespace):
    _create(cluster, namespace, valid_job("generations"))

    def generation():
        got = json.loads(cluster.run_kubectl("get", "ftj", "generations", "-n", namespace, "-o", "json").stdout)
        return got["metadata"]["generation"], got.get("status", {})

    first, _ = generation()
    status = {"status": {"phase": "Pending", "observedGeneration": first}}
    assert _patch(cluster, namespace, "generations", status, subresource="status").returncode == 0
    after_status, stored_status = generation()
    assert after_status == first
    assert stored_status["phase"] == "Pending"
    assert _patch(cluster, namespace, "generations", {"spec": {"backoffLimit": 5}}).returncode == 0
    assert generation()[0] == first + 1


def test_status_conditions_are_validated_as_metav1_conditions(cluster, namespace):
    _create(cluster, namespace, valid_job("conditions"))
    bad = {
        "status": {"conditions": [{"type": "Running", "status": "Maybe", "reason": "x", "lastTransitionTime": "now"}]}
    }
    result = _patch(cluster, namespace, "conditions", bad, subresource="status")
    assert result.returncode != 0
    assert "status.conditions[0].status" in result.stderr


def test_an_indexed_gpu_job_is_scheduled_on_a_kwok_gpu_node_and_completes(cluster, namespace):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "gpu-probe", "namespace": namespace},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/none:latest",
                            "resources": {"limits": {"nvidia.com/gpu": "8"}},
                        }
                    ],
                }
            },
        },
    }
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(job))
    cluster.run_kubectl("wait", "--for=condition=Complete", "job/gpu-probe", "-n", namespace, "--timeout=60s")
    pods = json.loads(cluster.run_kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    nodes = {pod["spec"]["nodeName"] for pod in pods}
    assert len(pods) == 2
    assert all(node.startswith("gpu-") for node in nodes)
    assert len(nodes) == 2, "each pod takes a whole 8-GPU node"


def test_token_request_bound_to_a_pod_and_token_review_work(cluster, namespace, api_client):
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "trainer"}})
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "bound"},
            "spec": {
                "serviceAccountName": "trainer",
                "nodeName": "cpu-0",
                "containers": [{"name": "main", "image": "example.invalid/none:latest"}],
            },
        },
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=["finetune.dev/progress"],
            expiration_seconds=600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name="bound", uid=pod.metadata.uid
            ),
        )
    )
    token = core.create_namespaced_service_account_token("trainer", namespace, request).status.token
    review = client.AuthenticationV1Api(api_client).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=["finetune.dev/progress"]))
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:trainer"
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == ["bound"]
    assert review.status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]

    wrong_audience = client.AuthenticationV1Api(api_client).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=["something-else"]))
    )
    assert not wrong_audience.status.authenticated

    core.delete_namespaced_pod("bound", namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        review = client.AuthenticationV1Api(api_client).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=["finetune.dev/progress"]))
        )
        if not review.status.authenticated:
            break
        time.sleep(0.5)
    assert not review.status.authenticated, "a token bound to a deleted pod must stop authenticating"
