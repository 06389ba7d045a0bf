"""One benchmark run, in order: the cluster and the unrelated pods; the operator's start-up (figure 2);
bare Jobs, then FineTuneJobs (figure 1); the steady state after they finished (figure 3); memory
over all of it (figure 2); then, if the build elects a leader, the failover (figure 4)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import REPO
from .audit import read_requests, summarise
from .binding import create_all
from .environment import (
    FINETUNEJOBS,
    add_unrelated_pods,
    create_namespaces,
    lease_holder,
    operator,
    operator_kubeconfig,
    start_cluster,
)
from .failover import NAMESPACE as FAILOVER_NAMESPACE
from .failover import failover, unsupported
from .figures import bound_pods, start_operator, steady_state
from .manifests import OPERATOR_USER, finetune_job
from .memory import PeakMemory

PROBE = ("opbench-probe", "probe")
REPLICAS = ["opbench-operator-0", "opbench-operator-1"]
LEASE_GRACE_SECONDS = 5.0  # after its first reconcile, how long an electing operator may take to show its Lease


@dataclass(frozen=True)
class Options:
    jobs: int
    unrelated_pods: int
    steady_minutes: float
    failover_jobs: int
    run_duration: str = "5s"
    resync_seconds: float = 30.0  # the chart's default (values.yaml: operator.resyncSeconds)
    operator_source: str = str(REPO / "operator")  # the directory holding the finetune_operator package measured

    @property
    def timeout(self) -> float:
        """Seconds any one wait may take: generous, and growing with the sizes."""
        return 300 + 2.0 * max(self.jobs, self.failover_jobs) + 0.05 * self.unrelated_pods


def git_revision(directory: Path) -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    result = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def detect_leader_election(api) -> bool:
    deadline = time.monotonic() + LEASE_GRACE_SECONDS
    while time.monotonic() < deadline:
        if lease_holder(api) is not None:
            return True
        time.sleep(0.5)
    return False


def run(options: Options, log=print) -> dict[str, Any]:
    started = time.time()
    cluster, api = start_cluster(gpu_pods=max(options.jobs, options.failover_jobs + 1))
    processes = []
    log(f"control plane up ({time.time() - started:.0f}s); {cluster.gpu_nodes} GPU nodes")
    try:
        kubeconfig = operator_kubeconfig(cluster, api)
        create_namespaces(api, ["opbench-bare", "opbench-ftj", PROBE[0], FAILOVER_NAMESPACE])
        unrelated = add_unrelated_pods(api, options.unrelated_pods, options.timeout)
        log(f"{options.unrelated_pods} unrelated pods Running ({unrelated['running_seconds']:.0f}s)")
        create_all(api, FINETUNEJOBS.format(namespace=PROBE[0]), [finetune_job(PROBE[1], "1s")])

        source = Path(options.operator_source)
        first = operator(cluster, kubeconfig, REPLICAS[0], options.resync_seconds, source)
        processes.append(first)
        startup = start_operator(first, api, PROBE, options.timeout)
        memory = PeakMemory(first.process.pid).start()
        rss_after_start = memory.sample() * 1024
        electing = detect_leader_election(api)
        log(f"operator reconciling after {startup['to_first_reconcile_seconds']:.1f}s")

        rss_before_jobs = memory.sample() * 1024  # the unrelated objects' share, before any job of ours
        bind = bound_pods(api, options.jobs, options.run_duration, options.timeout)
        log("figure 1 measured")
        steady, steady_end = steady_state(
            api, cluster.audit_log, options.jobs, options.steady_minutes, memory, options.timeout
        )
        memory.stop()
        whole_run = summarise(read_requests(cluster.audit_log, OPERATOR_USER), started, steady_end, top=None)

        if electing:
            second = operator(cluster, kubeconfig, REPLICAS[1], options.resync_seconds, source)
            processes.append(second)
            handover = failover(api, first, second, REPLICAS, options.failover_jobs, options.timeout)
        else:
            handover = unsupported(
                "no Lease named finetune-operator in the operator's namespace after its first reconcile"
            )
    except BaseException:
        for process in processes:
            if process.log_path.exists():
                log(f"--- {process.log_path.name} (last lines)\n{process.tail(30)}")
        raise
    finally:
        for process in processes:
            process.stop()
        cluster.stop()

    return {
        "benchmark": "operator-scale",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": time.time() - started,
        "revision": git_revision(REPO),
        "operator_revision": git_revision(Path(options.operator_source)),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
        "options": asdict(options),
        "figures": {
            "bind": bind,
            "memory": {
                "unrelated_pods": options.unrelated_pods,
                "peak_rss_bytes": memory.peak_kib * 1024,
                "rss_after_first_reconcile_bytes": rss_after_start,
                "rss_before_jobs_bytes": rss_before_jobs,
                "startup": startup,
                "unrelated_setup": unrelated,
            },
            "steady": steady,
            "failover": handover,
        },
        "operator_requests_whole_run": {
            "requests": whole_run["requests"],
            "work_by_request": whole_run["work_by_request"],
            "user_agents": whole_run["user_agents"],
        },
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def write_results(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = out / f"operator-scale-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path
