"""The operator-scale benchmark (``make bench-operator``): its pure parts, and one quick run end to end.

The quick run checks that every figure is produced and that the audit log attributes requests to
the operator, never how fast anything was: timings on shared test machines mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.operator_scale.audit import (
    Request,
    categorise,
    per_minute_series,
    read_requests,
    requests_of,
    summarise,
)
from benchmarks.operator_scale.failover import holder_of
from benchmarks.operator_scale.figures import latency_summary
from benchmarks.operator_scale.manifests import OPERATOR_USER, bare_job, bound_job, finetune_job
from benchmarks.operator_scale.report import NOT_SUPPORTED, summary_lines

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def audit_line(audit_id: str, verb: str, resource: str, at: str, user: str = OPERATOR_USER, **extra) -> str:
    group, _, plural = resource.rpartition("/")
    event = {
        "kind": "Event",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "verb": verb,
        "user": {"username": user},
        "userAgent": "kopf/1.45",
        "objectRef": {"resource": plural, "apiGroup": group, "namespace": "ns", **extra},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": at,
    }
    return json.dumps(event)


def request(verb: str, resource: str, at: float, user_agent: str = "kopf") -> Request:
    return Request(time=at, verb=verb, resource=resource, namespace="ns", code=200, user_agent=user_agent)


def test_the_audit_log_yields_one_request_per_audit_id_of_the_operator_only():
    lines = [
        audit_line("a", "watch", "batch/jobs", "2024-01-01T00:00:01.000000Z"),
        audit_line("a", "watch", "batch/jobs", "2024-01-01T00:00:01.000000Z"),  # its ResponseComplete stage
        audit_line("b", "get", "batch/jobs", "2024-01-01T00:00:00.500000Z", subresource="status"),
        audit_line("c", "get", "batch/jobs", "2024-01-01T00:00:02Z", user="admin"),
        "",
    ]

    found = requests_of(lines, OPERATOR_USER)

    assert [(r.verb, r.resource) for r in found] == [("get", "batch/jobs/status"), ("watch", "batch/jobs")]
    assert found[0].time == pytest.approx(1704067200.5)


def test_the_backups_kube_apiserver_rotated_the_log_into_are_read_too(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(audit_line("b", "get", "batch/jobs", "2024-01-01T00:00:02Z") + "\n")
    (tmp_path / "audit-2024-01-01T00-00-01.000.log").write_text(
        audit_line("a", "get", "core/pods", "2024-01-01T00:00:01Z") + "\n"
    )

    assert [r.resource for r in read_requests(log, OPERATOR_USER)] == ["core/pods", "batch/jobs"]


def test_leases_watches_and_the_list_that_opens_a_watch_are_set_apart_from_work():
    requests = [
        request("list", "core/pods", T0),
        request("list", "core/pods", T0, user_agent="reconciler"),  # another client's: work
        request("watch", "core/pods", T0 + 1),
        request("list", "core/pods", T0 + 100),  # no watch follows: work
        request("update", "coordination.k8s.io/leases", T0 + 101),
        request("get", "finetune.dev/finetunejobs", T0 + 102),
    ]

    assert categorise(requests) == ["relist", "work", "watch", "work", "lease", "work"]


def test_rates_are_per_minute_of_the_window_and_only_count_requests_inside_it():
    requests = [request("get", "batch/jobs", T0 + s) for s in (-1, 0, 30, 90, 120)]

    summary = summarise(requests, T0, T0 + 120)

    assert summary["requests"]["work"] == 3
    assert summary["per_minute"]["work"] == 1.5
    assert summary["work_by_request"] == {"get batch/jobs 200": 3}
    assert summary["per_minute_series"] == [2, 1]


def test_a_window_a_hair_over_a_minute_is_one_bucket():
    assert per_minute_series([request("get", "batch/jobs", T0 + 59)], T0, T0 + 60.004) == [1]


def test_an_empty_window_has_no_rate():
    assert summarise([], T0, T0)["per_minute"]["work"] is None
    assert per_minute_series([], T0, T0) == []


def test_a_pod_counts_for_its_job_once_it_is_bound():
    pod = {"metadata": {"labels": {"batch.kubernetes.io/job-name": "bare-00001"}}, "spec": {}}
    assert bound_job(pod) is None
    pod["spec"]["nodeName"] = "gpu-0"
    assert bound_job(pod) == "bare-00001"


def test_both_workloads_ask_for_the_same_pod():
    ours = finetune_job("a", "5s")["spec"]
    bare = bare_job("a", "5s")["spec"]["template"]
    (container,) = bare["spec"]["containers"]
    assert container["resources"]["limits"] == {
        "nvidia.com/gpu": str(ours["resources"]["gpusPerNode"]),
        "cpu": ours["resources"]["cpu"],
        "memory": ours["resources"]["memory"],
    }
    assert bare["metadata"]["annotations"] == ours["template"]["podAnnotations"]


def test_batch_time_runs_from_the_first_request_to_the_last_bound_pod():
    sent = {"a": 10.0, "b": 11.0, "c": 12.0}
    bound = {"a": 13.0, "b": 20.0, "c": 14.0}

    summary = latency_summary(sent, bound)

    assert summary["all_bound_seconds"] == 10.0
    assert summary["per_job_seconds"] == {"p50": 3.0, "p90": 3.0, "max": 9.0}


def test_a_lease_holder_is_matched_to_the_replica_it_names():
    names = ["opbench-operator-0", "opbench-operator-1"]
    assert holder_of("opbench-operator-1_3f2a", names) == "opbench-operator-1"
    assert holder_of("someone-else", names) is None


def test_the_summary_has_one_line_per_figure_and_says_when_failover_is_unsupported():
    results = {
        "figures": {
            "bind": {
                "jobs": 10,
                "ratio": 1.25,
                "bare": {"all_bound_seconds": 8.0},
                "finetunejobs": {"all_bound_seconds": 10.0},
            },
            "memory": {
                "unrelated_pods": 100,
                "peak_rss_bytes": 120_000_000,
                "startup": {"to_first_reconcile_seconds": 3.2},
            },
            "steady": {"minutes": 1.0, "per_minute": {"work": 0.0, "lease": 0.0, "watch": 0.0, "relist": 0.0}},
            "failover": {"supported": False, "reason": "no Lease"},
        }
    }

    lines = summary_lines(results)

    assert [line.split(":")[0] for line in lines] == ["bind", "memory", "steady", "failover"]
    assert "ratio 1.25x" in lines[0] and "120 MB" in lines[1] and "0.00 operator API requests/min" in lines[2]
    assert lines[3] == NOT_SUPPORTED


@pytest.mark.e2e
def test_a_quick_run_produces_every_figure(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.operator_scale", "--quick", "--steady-minutes", "0.1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (path,) = out.glob("operator-scale-*.json")
    results = json.loads(path.read_text())
    figures = results["figures"]
    jobs = results["options"]["jobs"]

    bind = figures["bind"]
    for side in ("bare", "finetunejobs"):
        assert bind[side]["bound"] == jobs and not bind[side]["timed_out"]
        assert bind[side]["all_bound_seconds"] > 0
    assert bind["ratio"] > 0

    memory = figures["memory"]
    assert memory["peak_rss_bytes"] >= memory["rss_after_first_reconcile_bytes"] > 0
    assert memory["startup"]["to_first_reconcile_seconds"] > 0 and memory["startup"]["to_healthy_seconds"] > 0
    assert memory["unrelated_pods"] == results["options"]["unrelated_pods"]

    steady = figures["steady"]
    assert steady["jobs_by_phase"].get("Succeeded") == jobs
    assert steady["per_minute"]["work"] >= 0 and set(steady["requests"]) == {"work", "lease", "watch", "relist"}

    # The audit log attributes the operator's own writes to it: one training Job per FineTuneJob (and the probe's).
    created = results["operator_requests_whole_run"]["work_by_request"]
    assert created.get("create batch/jobs 201", 0) >= jobs + 1

    # This checkout's operator elects a leader: a failover figure missing (its Lease renamed, say) is a failure.
    failover = figures["failover"]
    assert failover["supported"] and "error" not in failover, failover
    assert failover["to_reconcile_seconds"] > 0
    assert failover["duplicates"] == 0 and failover["orphans"] == 0 and failover["missing_jobs"] == 0

    summary = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert summary[:4] == ["bind", "memory", "steady", "failover"]
