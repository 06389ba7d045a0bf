"""Two operator processes against the real control plane, electing a leader with a Lease: only the holder
reconciles; killed, it is replaced by the standby once its lease runs out; stopped cleanly, it hands the
Lease over at once; frozen past its lease, it finds the Lease taken when it wakes and exits (code 3)
without writing. The leader labels its own pod finetune.dev/role=leader, which the chart's Service selects: the
label moves with the Lease. The operator processes here are not pods, so each gets a Pod object of the name it
is given in FINETUNE_POD_NAME (bound to a simulated node), the object it labels.

The failover times printed here (pytest -rP) are what README.md's "High availability" reports; they are
measurements, not assertions: the bound asserted is only the one that tells a working takeover from none.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime

import pytest
from catalog import valid_job
from finetune_operator.pod_role import LEADER, ROLE_LABEL
from kubehelpers import apply, get, items, wait_for

LEASE = "finetune-operator"
LEASE_DURATION = 15.0  # the default: these tests measure what a default installation does
RUN = "test.finetune.dev/run-duration"


def training_job(name: str, namespace: str) -> dict:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 8, "cpu": "16", "memory": "64Gi"}
    manifest["spec"]["template"] = {"podAnnotations": {RUN: "1h"}}
    return manifest


def lease_spec(cluster, namespace: str) -> dict:
    return (get(cluster, "lease", namespace, LEASE) or {}).get("spec") or {}


def lease_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def holder(cluster, namespace: str) -> str:
    return lease_spec(cluster, namespace).get("holderIdentity") or ""


def pod_of(cluster, namespace: str, name: str) -> None:
    """The Pod object a replica named ``name`` runs as (a kwok node's pod: its process is the test's)."""
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "operator", "image": "finetune-operator:test"}]},
        },
    )


def start_replica(cluster, start_operator, namespace: str, name: str):
    """A replica as the chart runs it: its pod name the identity, its namespace the Lease's."""
    pod_of(cluster, namespace, name)
    return start_operator(env={"FINETUNE_OPERATOR_NAMESPACE": namespace, "FINETUNE_POD_NAME": name})


def two_replicas(cluster, namespace: str, start_operator):
    """op-a leading (it started first, alone), op-b standing by."""
    leader = start_replica(cluster, start_operator, namespace, "op-a")
    assert holder(cluster, namespace) == "op-a"
    standby = start_replica(cluster, start_operator, namespace, "op-b")
    return leader, standby


def marked(cluster, namespace: str) -> list[str]:
    """The pods the Service would send connections to: those labelled as the leader's."""
    return sorted(p["metadata"]["name"] for p in items(cluster, "pods", namespace, f"{ROLE_LABEL}={LEADER}"))


def wait_marked(cluster, namespace: str, pods: list[str], timeout: float = 30.0) -> None:
    wait_for(f"the pods labelled as the leader's to be {pods}", lambda: marked(cluster, namespace) == pods, timeout)


def wait_for_job(cluster, namespace: str, name: str, timeout: float = 60.0) -> float:
    """Seconds until the training Job of FineTuneJob ``name`` exists: the first reconcile that wrote."""
    started = time.monotonic()
    wait_for(f"the Job {name}", lambda: get(cluster, "job", namespace, name), timeout=timeout, interval=0.1)
    return time.monotonic() - started


def test_the_first_replica_holds_the_lease_and_the_standby_writes_nothing(cluster, namespace, start_operator):
    leader, _ = two_replicas(cluster, namespace, start_operator)
    spec = lease_spec(cluster, namespace)
    assert spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    wait_marked(cluster, namespace, ["op-a"])

    apply(cluster, training_job("first", namespace))
    wait_for_job(cluster, namespace, "first")
    wait_for("first's status", lambda: (get(cluster, "ftj", namespace, "first").get("status") or {}).get("phase"))

    # Freeze the leader: nobody renews, and for a lease duration nobody may reconcile. The standby sees the
    # events of the new job and must leave it alone.
    os.killpg(leader.process.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        apply(cluster, training_job("second", namespace))
        while time.monotonic() - frozen < LEASE_DURATION / 2:
            assert get(cluster, "job", namespace, "second") is None, "the standby reconciled while the lease was held"
            assert holder(cluster, namespace) == "op-a"
            time.sleep(0.5)
        # Its lease run out, the standby takes over and reconciles.
        wait_for_job(cluster, namespace, "second", timeout=LEASE_DURATION + 15)
        assert holder(cluster, namespace) == "op-b"
        assert lease_spec(cluster, namespace)["leaseTransitions"] == 1
    finally:
        os.killpg(leader.process.pid, signal.SIGCONT)

    # Woken, the old leader finds its lease renewed by another and exits before writing anything.
    assert leader.process.wait(30) == 3, leader.tail()
    assert '"leadership lost' in leader.log_path.read_text()
    assert len(items(cluster, "jobs", namespace, "finetune.dev/job=second")) == 1

    # Its pod keeps the label (it exited at once); the new leader has marked its own.
    wait_marked(cluster, namespace, ["op-a", "op-b"])
    # Restarted by the kubelet, the container is the same pod: a standby now, it removes its stale label.
    start_replica(cluster, start_operator, namespace, "op-a")
    wait_marked(cluster, namespace, ["op-b"])


def test_a_killed_leader_is_replaced_once_its_lease_runs_out(cluster, namespace, start_operator):
    leader, standby = two_replicas(cluster, namespace, start_operator)
    apply(cluster, training_job("before", namespace))
    wait_for_job(cluster, namespace, "before")

    leader.kill()  # SIGKILL: no release, as when its node dies
    killed, killed_at = time.monotonic(), time.time()
    last_renewal = lease_time(lease_spec(cluster, namespace)["renewTime"])
    apply(cluster, training_job("after", namespace))
    wait_for_job(cluster, namespace, "after", timeout=LEASE_DURATION + 30)
    failover, reconciled_at = time.monotonic() - killed, time.time()
    acquired = lease_time(lease_spec(cluster, namespace)["acquireTime"])
    # The Lease's times are written by processes on this machine: one clock, so they can be compared here.
    print(
        f"failover after SIGKILL: {failover:.1f}s to the new leader's first reconcile (lease {LEASE_DURATION:.0f}s): "
        f"killed {killed_at - last_renewal:.1f}s after the last renewal, taken over "
        f"{acquired - last_renewal:.1f}s after it, first reconcile {reconciled_at - acquired:.1f}s later"
    )

    assert holder(cluster, namespace) == "op-b"
    assert failover > LEASE_DURATION - 2.5, "the standby took over while the lease was still valid"
    # The standby watched while it waited: elected, it had "before" and its children cached already.
    (cached,) = re.findall(r"elected leader as op-b, (\d+) objects already cached", standby.log_path.read_text())
    assert int(cached) >= 4, "the FineTuneJob, its Job, ConfigMap and Service at least"
    # The dead leader's pod keeps its label: harmless, a pod whose process died is not ready (no endpoint).
    wait_marked(cluster, namespace, ["op-a", "op-b"])
    for name in ("before", "after"):
        assert len(items(cluster, "jobs", namespace, f"finetune.dev/job={name}")) == 1
        assert len(items(cluster, "configmaps", namespace, f"finetune.dev/job={name}")) == 1


def test_a_leader_stopped_cleanly_hands_the_lease_over_at_once(cluster, namespace, start_operator):
    leader, _ = two_replicas(cluster, namespace, start_operator)
    wait_marked(cluster, namespace, ["op-a"])
    stopped = time.monotonic()
    leader.stop()  # SIGTERM, as on a rolling update or a drain
    assert leader.process.returncode == 0, leader.tail()
    assert '"released the Lease' in leader.log_path.read_text()
    # Unmarked before the Lease was released: at no moment did the Service send connections to both.
    assert marked(cluster, namespace) in ([], ["op-b"])

    apply(cluster, training_job("handed-over", namespace))
    wait_marked(cluster, namespace, ["op-b"], timeout=LEASE_DURATION)
    labelled = time.monotonic() - stopped
    wait_for_job(cluster, namespace, "handed-over", timeout=LEASE_DURATION)
    handover = time.monotonic() - stopped
    print(
        f"failover after SIGTERM: {handover:.1f}s from the signal to the new leader's first reconcile, "
        f"{labelled:.1f}s to its pod labelled (the Service's only endpoint)"
    )
    assert holder(cluster, namespace) == "op-b"


def test_the_progress_endpoint_writes_only_while_the_lease_is_freshly_held(cluster, namespace):
    """The fencing of reconciles guards progress writes too: a leader frozen past its renew deadline, still
    labelled and ready for a moment when it wakes, refuses (503, which the trainer retries) and writes nothing."""
    from finetune_operator.cache import Caches
    from finetune_operator.kube import FINETUNEJOBS, Kube
    from finetune_operator.leader import ElectionConfig, LeaderElector
    from finetune_operator.metrics import OperatorMetrics
    from finetune_operator.progress.identity import Refusal
    from finetune_operator.progress.server import ProgressService
    from finetune_operator.settings import Settings

    kube = Kube.connect(str(cluster.kubeconfig))
    now = [1000.0]
    config = ElectionConfig(namespace, "op-a", lease_duration=15, renew_deadline=10, retry_period=2)
    elector = LeaderElector(kube, config, clock=lambda: now[0])
    assert elector.try_acquire_or_renew()
    service = ProgressService(kube, Caches(), Settings(), OperatorMetrics(), leading=elector.holds_lease)
    apply(cluster, training_job("reported", namespace))

    def report(step: int) -> None:
        service.accept(namespace, "reported", kube.get(FINETUNEJOBS, namespace, "reported"), b'{"step": %d}' % step)

    def written_step() -> int:
        return ((kube.get(FINETUNEJOBS, namespace, "reported").get("status") or {}).get("progress") or {}).get("step")

    report(120)
    assert written_step() == 120

    now[0] += config.renew_deadline  # no renewal for the renew deadline: a standby may take over any moment
    with pytest.raises(Refusal) as refused:
        report(200)
    assert (refused.value.status, refused.value.reason) == (503, "not_leader")
    assert written_step() == 120
