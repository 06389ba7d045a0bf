"""``python -m benchmarks.operator_scale [--jobs N] [--unrelated-pods M] [--steady-minutes K] [--failover-jobs F]``

The defaults are sized to finish in under 30 minutes on 2 cores (``make bench``). Issue 16's full size:
``--jobs 1000 --unrelated-pods 20000 --steady-minutes 10 --failover-jobs 100``.
``--quick`` is a handful of jobs and pods and no steady minutes: it checks the harness, not the operator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import REPO
from .report import summary_lines
from .run import Options, run, write_results

DEFAULTS = {"jobs": 200, "unrelated_pods": 5000, "steady_minutes": 5.0, "failover_jobs": 20}
QUICK = {"jobs": 3, "unrelated_pods": 20, "steady_minutes": 0.0, "failover_jobs": 2}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operator_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help=f"FineTuneJobs, and as many bare Jobs (default {DEFAULTS['jobs']})")
    parser.add_argument("--unrelated-pods", type=int, help=f"pods not ours (default {DEFAULTS['unrelated_pods']})")
    parser.add_argument(
        "--steady-minutes", type=float, help=f"steady-state window (default {DEFAULTS['steady_minutes']:g})"
    )
    parser.add_argument(
        "--failover-jobs", type=int, help=f"jobs running at the leader's kill (default {DEFAULTS['failover_jobs']})"
    )
    parser.add_argument("--quick", action="store_true", help="a handful of jobs and pods, no steady minutes")
    parser.add_argument("--run-duration", default="5s", help="how long each training pod runs under kwok")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's resync (chart default 30)")
    parser.add_argument(
        "--operator",
        type=Path,
        default=REPO / "operator",
        help="directory holding the finetune_operator package to measure (another checkout's, to compare builds)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory of the JSON results")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not (args.operator / "finetune_operator").is_dir():
        parser.error(f"--operator {args.operator}: no finetune_operator package there")
    if args.jobs < 1 or args.unrelated_pods < 0 or args.steady_minutes < 0 or args.failover_jobs < 1:
        parser.error(
            "--jobs and --failover-jobs must be at least 1; --unrelated-pods and --steady-minutes not negative"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    options = Options(
        jobs=args.jobs,
        unrelated_pods=args.unrelated_pods,
        steady_minutes=args.steady_minutes,
        failover_jobs=args.failover_jobs,
        run_duration=args.run_duration,
        resync_seconds=args.resync_seconds,
        operator_source=str(args.operator.resolve()),
    )
    results = run(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    path = write_results(results, args.out)
    for line in summary_lines(results):
        print(line)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
