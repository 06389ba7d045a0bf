"""Fixtures shared by every tier: the real control plane and the real S3 server, started once per session
and only when a test asks for them (the e2e and in-process tiers)."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def cluster():
    from hack.localcluster import LocalCluster

    with LocalCluster() as running:
        running.install_crds()
        # The CRDs' OpenAPI is published a moment after they are Established; kubectl explain needs it.
        deadline = time.monotonic() + 60
        while running.run_kubectl("explain", "finetunejob.spec", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the CRDs' OpenAPI schema was never published"
            time.sleep(0.5)
        yield running


@pytest.fixture(scope="session")
def minio():
    """A real S3-compatible server (MinIO built from Go modules), shared by the session."""
    from hack.localcluster.minio import MinioServer

    with MinioServer() as server:
        yield server
