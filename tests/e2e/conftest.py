"""e2e tests: the operator as a process against the session's control plane (tests/conftest.py), one
namespace per test."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def api_client(cluster):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster, request):
    """A fresh namespace named after the test; deleted afterwards (without waiting)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]}"
    labels = getattr(request, "param", None) or {}
    cluster.run_kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    )
    yield name
    cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def start_operator(cluster, namespace, tmp_path, request):
    """Start the operator watching the test's namespace; stopped (and its log shown on failure) afterwards.

    In a test that uses MinIO, MinIO is the platform's S3 endpoint (the one a Secret may name), as the
    chart's storage.endpoint makes it in a cluster.
    """
    from hack.localcluster.operator_process import OperatorProcess

    started: list[OperatorProcess] = []
    platform = (
        {"FINETUNE_S3_ENDPOINT": request.getfixturevalue("minio").endpoint} if "minio" in request.fixturenames else {}
    )

    def start(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        process = OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            f"--namespace={namespace}",
            *args,
            env={**platform, **(env or {})},
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def operator(start_operator):
    return start_operator()


@pytest.fixture(scope="session")
def local_node(cluster, tmp_path_factory):
    """The local node agent (hack/nodeagent): pods bound to node local-cpu-0 run as local processes."""
    from hack.nodeagent import LocalNodeAgent

    # The pods run the code under test: a checkout run with PYTHONPATH (a worktree) is what its pods import.
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else None
    with LocalNodeAgent(cluster.kubeconfig, workdir=tmp_path_factory.mktemp("nodeagent"), env=env) as agent:
        yield agent


@pytest.fixture(scope="session")
def kueue(cluster):
    """Kueue's controller manager and CRDs, built from Go modules at the pinned version and shared by the
    session; hack/localcluster/kueue.py says what differs from a production install."""
    from hack.localcluster.kueue import KueueController

    # waitForPodsReady's timeout: simulated pods are ready within a second, so 30s tells a job that can
    # never start from one that is starting, without making the all-or-nothing test wait minutes.
    with KueueController(cluster, pods_ready_timeout_seconds=30) as running:
        yield running
