"""The in-process tier: the operator's reconcilers called as functions against the session's real control
plane (tests/conftest.py), envtest style: a real API server, no fake client, no operator process, no
waiting. A test writes what a user would, fills the caches from LISTs of the API server (what the watches
would bring), calls reconcile(), publish(), reconcile_adapter() or the progress service, and reads the API
server's objects (operator_harness.py).

What the cluster's own controllers would do with a training Job (the Job controller creates its pods and
writes its status, the kubelet writes the pods'), the test does itself, at the step it chooses: a
MutatingAdmissionPolicy gives every Job created in this tier's namespaces a ``spec.managedBy`` of its own,
which keeps the Job controller away from them (envtest runs none), and the pods the test creates name no
scheduler that exists, so neither kube-scheduler nor kwok moves them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from operator_harness import TIER_LABEL, Harness

MANAGED_BY = "finetune.dev/inprocess-tests"
POLICY = "finetune-inprocess-jobs"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.inprocess)


def _policy() -> list[dict]:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}
                ]
            },
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "mutations": [
                {
                    "patchType": "ApplyConfiguration",
                    "applyConfiguration": {"expression": f'Object{{spec: Object.spec{{managedBy: "{MANAGED_BY}"}}}}'},
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY},
        "spec": {
            "policyName": POLICY,
            "matchResources": {"namespaceSelector": {"matchLabels": {TIER_LABEL: "true"}}},
        },
    }
    return [policy, binding]


def _labelled_namespace(cluster, name: str, labels: dict[str, str] | None = None) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {TIER_LABEL: "true"}}}
    manifest["metadata"]["labels"].update(labels or {})
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(manifest))


@pytest.fixture(scope="session")
def jobs_left_to_tests(cluster):
    """The policy that keeps the Job controller away from this tier's Jobs, once it is in force: the API
    server loads a new policy a moment after it is created, so a dry-run create is tried until one comes
    back with the field set (set-up only; no test waits)."""
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": _policy()}))
    probe_namespace = "inprocess-policy-probe"
    _labelled_namespace(cluster, probe_namespace)
    probe = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe", "namespace": probe_namespace},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "probe", "image": "probe"}]},
            }
        },
    }
    deadline = time.monotonic() + 60
    while True:
        result = cluster.run_kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe), check=False
        )
        if result.returncode == 0 and json.loads(result.stdout)["spec"].get("managedBy") == MANAGED_BY:
            break
        assert time.monotonic() < deadline, f"the MutatingAdmissionPolicy never took effect: {result.stderr}"
        time.sleep(0.5)
    yield MANAGED_BY
    cluster.run_kubectl("delete", "namespace", probe_namespace, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster, jobs_left_to_tests, request):
    """A fresh namespace of this tier, named after the test; deleted afterwards (without waiting)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]}"
    _labelled_namespace(cluster, name, getattr(request, "param", None))
    yield name
    cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def harness(cluster, namespace, request):
    """The operator's context over the test's namespace (operator_harness.Harness). In a test that uses MinIO,
    MinIO is the platform's S3 endpoint, as the e2e tier's operator has it."""
    platform = {"s3_endpoint": request.getfixturevalue("minio").endpoint} if "minio" in request.fixturenames else {}
    running = Harness(cluster, namespace, platform)
    yield running
    running.close()
