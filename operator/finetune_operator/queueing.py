"""Reads what Kueue says about a queued job: the Workload of its training Job, and while it waits,
the LocalQueue it names (for the ClusterQueue, once). Reads only for jobs that carry the queue label, by
the Workload's job-uid label: the cost follows our queued jobs, never the cluster's Workloads; and only
while the Workload can say something new (status/kueue.py workload_may_have_changed): an admitted job
that runs costs nothing.

No watch: Kueue labels a Workload with its Job's UID and name, never with ours, so no server-side
selector picks out the operator's Workloads from the cluster's."""

from __future__ import annotations

import logging
from typing import Any

from finetune_core.api.finetunejob import QueueStatus

from .kube import InvalidApiPath, Kind, Kube, KubeError
from .naming import KUEUE_LABELS
from .status import kueue

log = logging.getLogger(__name__)

WORKLOADS = Kind("kueue.x-k8s.io", "v1beta2", "workloads")
LOCALQUEUES = Kind("kueue.x-k8s.io", "v1beta2", "localqueues")


def observe_queue(
    kube: Kube, training_job: dict[str, Any] | None, previous: QueueStatus | None
) -> kueue.QueueState | None:
    """Kueue's view of the training Job; None when it has no Workload yet (or Kueue is not installed), and
    when nothing is read because ``previous`` (status.queue) still says all there is."""
    if training_job is None or not training_job["metadata"].get("uid"):
        return None
    local_queue = (training_job["metadata"].get("labels") or {}).get(KUEUE_LABELS[0])
    if not local_queue or not kueue.workload_may_have_changed(training_job, local_queue, previous):
        return None
    namespace = training_job["metadata"]["namespace"]
    try:
        workloads = kube.list(WORKLOADS, namespace, kueue.workload_selector(training_job))
    except KubeError as error:
        # 404: Kueue's CRDs are not installed. 403: an RBAC without the chart's Kueue rules. Either way the
        # job's own status must still be written; it says it waits for Kueue.
        if error.status in (403, 404):
            log.warning(
                "cannot read Kueue Workloads in %s (%s): showing queued jobs as waiting", namespace, error.status
            )
            return None
        raise
    workload = kueue.workload_of(training_job, workloads)
    if workload is None:
        return None
    state = kueue.queue_state(workload)
    known = previous is not None and previous.local_queue == local_queue and previous.cluster_queue
    if state.cluster_queue is None and state.state != "Inadmissible" and not known:
        state = kueue.with_cluster_queue(state, _cluster_queue(kube, namespace, local_queue))
    return state


def _cluster_queue(kube: Kube, namespace: str, local_queue: str) -> str | None:
    try:
        found = kube.get(LOCALQUEUES, namespace, local_queue)
    except InvalidApiPath:  # a label value that cannot name a LocalQueue; Kueue says so in the Workload
        return None
    except KubeError as error:
        if error.status == 403:  # an RBAC without the chart's Kueue rules: the ClusterQueue stays unknown
            return None
        raise
    return ((found or {}).get("spec") or {}).get("clusterQueue")
