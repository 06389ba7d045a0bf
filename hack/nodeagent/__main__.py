"""Run the local node agent until SIGTERM or Ctrl-C: ``python -m hack.nodeagent --kubeconfig=...`` (repository root)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .agent import DEFAULT_NODE_NAME, LocalNodeAgent

DEFAULT_WORKDIR = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "nodeagent"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nodeagent",
        description="A node of a Kubernetes cluster whose pods run as local processes (development and tests).",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME, help=f"default: {DEFAULT_NODE_NAME}")
    parser.add_argument("--workdir", type=Path, help=f"pod directories and logs (default: {DEFAULT_WORKDIR}/NODE)")
    parser.add_argument("--bin-dir", type=Path, help="first on PATH in every container (default: this Python's)")
    parser.add_argument("--pvc-root", type=Path, help="claims without a hostPath volume (default: WORKDIR/pvc)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for every container (repeatable)"
    )
    parser.add_argument("--max-pods", type=int, default=16)
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="wait this long for the node to be schedulable (0: no wait)"
    )
    parser.add_argument("--no-path-hook", action="store_true", help="do not translate paths inside Python processes")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.kubeconfig:
        parser.error("--kubeconfig is required (or set KUBECONFIG)")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env {item!r}: expected KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = LocalNodeAgent(
        args.kubeconfig,
        args.node_name,
        args.workdir or DEFAULT_WORKDIR / args.node_name,
        bin_dir=args.bin_dir,
        pvc_root=args.pvc_root,
        env=dict(item.split("=", 1) for item in args.env),
        max_pods=args.max_pods,
        path_hook=not args.no_path_hook,
        ready_timeout=args.ready_timeout,
    )
    agent.start()
    try:
        stop.wait()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
