"""One summary line per figure, from the results (pure), with the goals of issue 16 beside them."""

from __future__ import annotations

from typing import Any

RATIO_GOAL = 1.3
RSS_GOAL_MB = 150
REQUESTS_GOAL_PER_MINUTE = 1.0
FAILOVER_GOAL_SECONDS = 15.0
NOT_SUPPORTED = "failover: not supported by this operator build"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def bind_line(figure: dict[str, Any]) -> str:
    ratio = figure.get("ratio")
    shown = "n/a (a batch timed out)" if ratio is None else f"{ratio:.2f}x"
    return (
        f"bind: {figure['jobs']} FineTuneJobs {_seconds(figure['finetunejobs']['all_bound_seconds'])} vs "
        f"{figure['jobs']} bare Jobs {_seconds(figure['bare']['all_bound_seconds'])} until every pod is bound: "
        f"ratio {shown} (goal <= {RATIO_GOAL}x)"
    )


def memory_line(figure: dict[str, Any]) -> str:
    peak_mb = figure["peak_rss_bytes"] / 1e6
    return (
        f"memory: operator peak RSS {peak_mb:.0f} MB ({figure['peak_rss_bytes'] / 2**20:.0f} MiB) with "
        f"{figure['unrelated_pods']} unrelated pods (goal <= {RSS_GOAL_MB} MB); start-up to first reconcile "
        f"{_seconds(figure['startup']['to_first_reconcile_seconds'])}"
    )


def steady_line(figure: dict[str, Any]) -> str:
    rates = figure["per_minute"]
    if rates["work"] is None:
        return f"steady: not measured ({figure['minutes']:g} minutes asked)"
    return (
        f"steady: {rates['work']:.2f} operator API requests/min over {figure['minutes']:g} min after every job "
        f"finished (goal <= {REQUESTS_GOAL_PER_MINUTE:g}/min); apart: leases {rates['lease']:.2f}/min, "
        f"watch reconnections {rates['watch'] + rates['relist']:.2f}/min"
    )


def failover_line(figure: dict[str, Any]) -> str:
    if not figure.get("supported"):
        return NOT_SUPPORTED
    if "error" in figure:
        return f"failover: failed: {figure['error']}"
    return (
        f"failover: standby reconciled a new job {_seconds(figure['to_reconcile_seconds'])} after the leader's "
        f"SIGKILL with {figure['jobs']} jobs running (goal <= {FAILOVER_GOAL_SECONDS:g} s); "
        f"{figure['duplicates']} duplicate, {figure['orphans']} orphaned children (goal 0)"
    )


def summary_lines(results: dict[str, Any]) -> list[str]:
    figures = results["figures"]
    return [
        bind_line(figures["bind"]),
        memory_line(figures["memory"]),
        steady_line(figures["steady"]),
        failover_line(figures["failover"]),
    ]
