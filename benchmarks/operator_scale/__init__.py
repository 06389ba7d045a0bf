"""The operator at scale: ``python -m benchmarks.operator_scale`` (``make bench-operator``).

On the project's own control plane (hack/localcluster) with kwok GPU nodes, in one run:

1. N FineTuneJobs vs N bare Indexed Jobs of one 1-GPU pod: time until every pod is bound, and the ratio;
2. with M unrelated pods on the cluster: the operator's peak RSS and its start-up time to a first reconcile;
3. after every job finished: the operator's API requests per minute (from the audit log), apart from
   lease renewals and watch reconnections;
4. leader failover, when the operator build elects a leader: time until the standby reconciles a new job
   after the leader's SIGKILL, and duplicate or orphaned children.

One summary line per figure on stdout; the raw numbers in ``<out>/operator-scale-<time>.json``.
"""

from __future__ import annotations

from .. import REPO

__all__ = ["REPO"]
