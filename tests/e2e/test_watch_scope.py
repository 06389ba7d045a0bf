"""The operator's cost follows its own jobs, never the cluster: read from the API server's audit log.

Every LIST and WATCH of a kind that is not the operator's own carries a server-side label selector, so the
API server never sends it anyone else's pods or Jobs; a finished job whose outcome is recorded costs no
request at all, resync after resync.

The operator runs here with a ServiceAccount of its own, so that the audit log tells its requests from the
test's, kubectl's and the control plane's.
"""

from __future__ import annotations

import time
import urllib.parse

import pytest
from catalog import valid_job
from kubehelpers import apply, condition_is, get, wait_for

from hack.localcluster import LocalCluster, metadata_audit_policy
from hack.localcluster.operator_process import OperatorProcess

AUDIT_POLICY = metadata_audit_policy(groups=["system:serviceaccounts"])
RUN = "test.finetune.dev/run-duration"
EXIT = "test.finetune.dev/exit-code"
SELECTED = {"pods", "jobs", "services", "configmaps", "serviceaccounts"}
RESYNC_SECONDS = 1


@pytest.fixture(scope="module")
def audited():
    with LocalCluster(audit_policy=AUDIT_POLICY) as running:
        running.install_crds()
        yield running


class Operator:
    """The operator under its own identity, and its requests from the audit log."""

    def __init__(self, cluster: LocalCluster, namespace: str, tmp_path):
        self.cluster = cluster
        self.user = f"system:serviceaccount:{namespace}:operator"
        kubeconfig = cluster.service_account_kubeconfig(namespace, "operator")
        self.process = OperatorProcess(
            kubeconfig,
            tmp_path / "operator.log",
            f"--namespace={namespace}",
            f"--resync-seconds={RESYNC_SECONDS}",
        )
        self.offset = 0

    def requests(self) -> list[dict]:
        """The operator's requests since the last call."""
        events, self.offset = self.cluster.audit_events(self.offset)
        return [e for e in events if e["user"]["username"] == self.user]


@pytest.fixture
def operator(audited, namespace, tmp_path):
    running = Operator(audited, namespace, tmp_path)
    yield running
    running.process.stop()


@pytest.fixture
def namespace(audited, request):
    name = f"scope-{request.node.name[5:30].replace('_', '-').strip('-')}"
    audited.run_kubectl("create", "namespace", name)
    yield name
    audited.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


def unrelated_pod(name: str, namespace: str) -> dict:
    """Someone else's pod, bound to a node no kubelet serves: it stays as it is."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {"nodeName": "cpu-0", "containers": [{"name": "web", "image": "nginx"}]},
    }


def unrelated_job(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "batch"}},
        "spec": {
            "suspend": True,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        },
    }


def failing_job(name: str, namespace: str) -> dict:
    """A job whose trainer exits with a configuration error at once: Failed, its outcome recorded."""
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 1}
    manifest["spec"]["template"] = {"podAnnotations": {RUN: "1s", EXIT: "78"}}
    return manifest


def selector_of(event: dict) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(event["requestURI"]).query)
    return (query.get("labelSelector") or [""])[0]


def test_pods_jobs_and_children_are_listed_and_watched_only_with_the_operators_selectors(audited, namespace, operator):
    for index in range(3):
        apply(audited, unrelated_pod(f"web-{index}", namespace))
    apply(audited, unrelated_job("nightly", namespace))
    operator.process.start()
    apply(audited, failing_job("scoped", namespace))
    wait_for("Failed", condition_is(audited, namespace, "scoped", "Failed"))

    requests = operator.requests()
    reads = [e for e in requests if e["verb"] in ("list", "watch") and e["objectRef"].get("resource") in SELECTED]
    assert {e["objectRef"]["resource"] for e in reads} == SELECTED, "every child kind is watched"
    for event in reads:
        jobs = event["objectRef"]["resource"] == "jobs"
        expected = "app.kubernetes.io/managed-by=finetune-operator" if jobs else "finetune.dev/job"
        assert selector_of(event) == expected, event["requestURI"]
    conflicts = [e["requestURI"] for e in requests if (e.get("responseStatus") or {}).get("code") == 409]
    assert conflicts == [], "a create is sent only for a child the cache lacks"


def test_an_unrelated_pods_changes_never_reach_the_operator(audited, namespace, operator):
    operator.process.start()
    apply(audited, failing_job("quiet", namespace))
    wait_for("Failed", condition_is(audited, namespace, "quiet", "Failed"))
    time.sleep(2 * RESYNC_SECONDS)
    operator.requests()

    for index in range(5):
        apply(audited, unrelated_pod(f"noise-{index}", namespace))
        audited.run_kubectl("label", "pod", f"noise-{index}", "-n", namespace, "tier=front")
    audited.run_kubectl("delete", "pods", "-l", "app=web", "-n", namespace, "--wait=false")
    time.sleep(3 * RESYNC_SECONDS)

    assert [f"{e['verb']} {e['requestURI']}" for e in operator.requests()] == []


def test_settled_jobs_cost_no_request_resync_after_resync(audited, namespace, operator):
    names = [f"done-{index}" for index in range(3)]
    operator.process.start()
    for name in names:
        apply(audited, failing_job(name, namespace))
    for name in names:
        wait_for(f"{name} Failed", condition_is(audited, namespace, name, "Failed"))
    time.sleep(2 * RESYNC_SECONDS)  # the last status writes and their events
    operator.requests()

    time.sleep(10 * RESYNC_SECONDS)

    requests = [f"{e['verb']} {e['requestURI']}" for e in operator.requests()]
    assert requests == [], f"{len(requests)} requests for settled jobs over 10 resyncs"
    assert get(audited, "ftj", namespace, names[0])["status"]["phase"] == "Failed"
