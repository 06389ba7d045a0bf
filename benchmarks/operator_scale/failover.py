"""Figure 4, leader failover: two operators, the leader SIGKILLed while jobs run; how long until the
standby reconciles a new job, and whether any child was duplicated or orphaned.

Runs only against an operator build that elects a leader: one that holds a Lease named
``finetune-operator`` in its namespace. Replicas tell themselves apart by FINETUNE_POD_NAME.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from hack.localcluster.operator_process import OperatorProcess

from .api import Api
from .binding import create_all, wait_until
from .environment import FINETUNEJOBS, lease_holder
from .figures import finished_jobs, reconciled
from .manifests import finetune_job

NAMESPACE = "opbench-failover"
CHILD_KINDS = {
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
}
JOB_LABEL = "finetune.dev/job"
SETTLE_SECONDS = 10.0


def unsupported(reason: str) -> dict[str, Any]:
    return {"supported": False, "reason": reason}


def holder_of(holder: str, names: list[str]) -> str | None:
    """Which replica a Lease's holderIdentity names (client-go style identities may add a suffix)."""
    matches = [name for name in names if name in holder]
    return max(matches, key=len) if matches else None


def children_check(api: Api, namespace: str) -> dict[str, int]:
    """Duplicated children (more than one of a kind under one FineTuneJob), orphans (ours by label, owned
    by no live FineTuneJob) and jobs missing a training Job."""
    jobs, _ = api.list(FINETUNEJOBS.format(namespace=namespace))
    uids = {job["metadata"]["uid"] for job in jobs}
    duplicates = orphans = 0
    with_a_job: set[str] = set()
    for kind, path in CHILD_KINDS.items():
        children, _ = api.list(path.format(namespace=namespace), labelSelector=JOB_LABEL)
        per_owner: Counter[str] = Counter()
        for child in children:
            owners = [o for o in child["metadata"].get("ownerReferences") or [] if o.get("controller")]
            owner = owners[0]["uid"] if owners else None
            if owner not in uids:
                orphans += 1
                continue
            per_owner[owner] += 1
            if kind == "Job":
                with_a_job.add(owner)
        duplicates += sum(count - 1 for count in per_owner.values() if count > 1)
    return {"duplicates": duplicates, "orphans": orphans, "missing_jobs": len(uids - with_a_job)}


def failover(
    api: Api, leader: OperatorProcess, standby: OperatorProcess, names: list[str], jobs: int, timeout: float
) -> dict[str, Any]:
    """``leader`` runs and holds the Lease; ``standby`` (not started) is started, ``jobs`` FineTuneJobs are
    brought to Running, then the replica holding the Lease is SIGKILLed."""
    standby.start()
    create_all(api, FINETUNEJOBS.format(namespace=NAMESPACE), [finetune_job(f"run-{i:05d}", "1h") for i in range(jobs)])
    wait_until(
        f"{jobs} FineTuneJobs Running",
        lambda: finished_jobs(api, NAMESPACE).get("Running", 0) >= jobs,
        timeout=timeout,
        interval=1.0,
    )
    holder = lease_holder(api) or ""
    replicas = dict(zip(names, (leader, standby), strict=True))
    victim = holder_of(holder, names)
    if victim is None:
        return {"supported": True, "error": f"the Lease's holder {holder!r} is neither replica"}
    replicas[victim].kill()
    killed = time.monotonic()
    create_all(api, FINETUNEJOBS.format(namespace=NAMESPACE), [finetune_job("after-failover", "1h")])
    wait_until(
        "the standby to reconcile a new job",
        lambda: reconciled(api, NAMESPACE, "after-failover"),
        timeout=timeout,
        interval=0.1,
    )
    reconciled_after = time.monotonic() - killed
    new_holder = lease_holder(api) or ""
    time.sleep(SETTLE_SECONDS)  # a duplicate would come from the new leader's first passes over the running jobs
    return {
        "supported": True,
        "jobs": jobs,
        "killed": victim,
        "new_holder": holder_of(new_holder, names),
        "to_reconcile_seconds": reconciled_after,
        **children_check(api, NAMESPACE),
    }
