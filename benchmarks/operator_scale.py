"""The operator at scale, on the project's own control plane: what it costs with many pods that are not its
own and many jobs that are finished. Not a test: numbers, side by side for two checkouts of the operator.

For each checkout (``--operator`` NAME=PATH, PATH the directory that holds the ``finetune_operator``
package), in one namespace that already holds ``--pods`` ordinary pods of someone else's:
- ``requests_per_minute``: the operator's API requests (from the audit log, by its own ServiceAccount)
  over ``--window`` seconds, once ``--jobs`` FineTuneJobs have failed and their outcome is recorded;
- ``startup_seconds``: from starting a fresh operator process to the first reconcile's effect (the
  training Job of a FineTuneJob created while it was down);
- ``peak_rss_mib``: the operator's peak resident memory (VmHWM) after that start-up and the window.

    python -m benchmarks.operator_scale --operator branch=operator --operator main=/work/main/operator

Prints one summary line per figure and writes bench-results/operator-scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "tests")]

from catalog import valid_job  # noqa: E402
from localcluster import LocalCluster  # noqa: E402
from localcluster.operator_process import OperatorProcess  # noqa: E402

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
NAMESPACE = "bench"
BULK_NODE = "bulk-0"


def kubectl_create(cluster: LocalCluster, items: list[dict]) -> None:
    cluster.run_kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def ordinary_pod(index: int) -> dict:
    """A pod as a platform's workloads have them (labels, env, resources), on a node no kubelet serves: it
    stays Pending as it is, and its tolerations keep the node lifecycle controller from evicting it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"web-{index}",
            "namespace": NAMESPACE,
            "labels": {"app": "web", "tier": "frontend", "release": f"r{index % 7}"},
            "annotations": {"example.com/owner": "team-web", "example.com/build": f"{index:08d}"},
        },
        "spec": {
            "nodeName": BULK_NODE,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example.com/web/frontend:1.2.3",
                    "env": [{"name": f"SETTING_{n}", "value": f"value-{n}-{index}"} for n in range(20)],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ],
        },
    }


def failing_job(name: str) -> dict:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = NAMESPACE
    manifest["spec"]["resources"] = {"gpusPerNode": 1}
    manifest["spec"]["template"] = {
        "podAnnotations": {"test.finetune.dev/run-duration": "1s", "test.finetune.dev/exit-code": "78"}
    }
    return manifest


def wait(what: str, probe, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def phases(cluster: LocalCluster, prefix: str) -> list[str]:
    out = cluster.run_kubectl("get", "ftj", "-n", NAMESPACE, "-o", "json").stdout
    return [
        (item.get("status") or {}).get("phase", "")
        for item in json.loads(out)["items"]
        if item["metadata"]["name"].startswith(prefix)
    ]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(cluster: LocalCluster, kubeconfig: Path, user: str, name: str, path: Path, args, workdir: Path) -> dict:
    env = {"PYTHONPATH": os.pathsep.join([str(path), str(REPO / "trainer-image"), str(REPO)])}
    flags = [f"--namespace={NAMESPACE}", f"--resync-seconds={args.resync}"]
    operator = OperatorProcess(kubeconfig, workdir / f"{name}-1.log", *flags, env=env).start()
    jobs = [f"{name}-{index}" for index in range(args.jobs)]
    kubectl_create(cluster, [failing_job(job) for job in jobs])
    wait(f"{args.jobs} jobs Failed", lambda: phases(cluster, f"{name}-").count("Failed") == args.jobs, 300)
    time.sleep(args.resync + 5)  # the last writes of the reconciles that recorded the outcomes

    _, offset = cluster.audit_events()
    time.sleep(args.window)
    events, _ = cluster.audit_events(offset)
    mine = [e for e in events if e["user"]["username"] == user]
    verbs: dict[str, int] = {}
    for event in mine:
        verbs[event["verb"]] = verbs.get(event["verb"], 0) + 1
    first_rss = peak_rss_mib(operator.process.pid)
    operator.stop()

    # Start-up: a job created while the operator is down; its Job appears after the first reconcile.
    probe = f"{name}-probe"
    kubectl_create(cluster, [failing_job(probe)])
    started = time.monotonic()
    operator = OperatorProcess(kubeconfig, workdir / f"{name}-2.log", *flags, env=env).start()
    healthy = time.monotonic() - started
    wait(
        "the probe's Job",
        lambda: cluster.run_kubectl("get", "job", probe, "-n", NAMESPACE, check=False).returncode == 0,
        300,
    )
    startup = time.monotonic() - started
    time.sleep(args.resync + 5)
    rss = max(first_rss, peak_rss_mib(operator.process.pid))
    operator.stop()
    cluster.run_kubectl("delete", "ftj", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=120s")
    return {
        "requests_in_window": len(mine),
        "requests_per_minute": round(len(mine) * 60 / args.window, 1),
        "requests_by_verb": verbs,
        "startup_seconds": round(startup, 2),
        "healthy_seconds": round(healthy, 2),
        "peak_rss_mib": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operator", action="append", default=[], help="NAME=PATH of a finetune_operator checkout")
    parser.add_argument("--pods", type=int, default=2000, help="unrelated pods in the operator's namespace")
    parser.add_argument("--jobs", type=int, default=20, help="FineTuneJobs that finish before the window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of steady state counted")
    parser.add_argument("--resync", type=float, default=30.0, help="the operator's --resync-seconds")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "operator-scale.json")
    args = parser.parse_args(argv)
    operators = [item.split("=", 1) for item in args.operator] or [["branch", str(REPO / "operator")]]

    results: dict = {"pods": args.pods, "jobs": args.jobs, "window_seconds": args.window, "operators": {}}
    with LocalCluster(audit_policy=AUDIT_POLICY) as cluster:
        cluster.run_kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.run_kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s")
        cluster.run_kubectl("create", "namespace", NAMESPACE)
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": BULK_NODE, "labels": {"type": "bulk"}}}
        kubectl_create(cluster, [node])
        for start in range(0, args.pods, 250):
            kubectl_create(cluster, [ordinary_pod(i) for i in range(start, min(start + 250, args.pods))])
        kubeconfig = cluster.service_account_kubeconfig(NAMESPACE, "operator")
        user = f"system:serviceaccount:{NAMESPACE}:operator"
        for name, path in operators:
            found = measure(cluster, kubeconfig, user, name, Path(path).resolve(), args, cluster.workdir)
            results["operators"][name] = found
            print(
                f"{name}: {found['requests_in_window']} requests in {args.window:.0f}s with {args.jobs} finished jobs "
                f"{found['requests_by_verb']}; start-up to the first reconcile {found['startup_seconds']}s; "
                f"peak RSS {found['peak_rss_mib']} MiB with {args.pods} unrelated pods",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
