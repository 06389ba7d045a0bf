"""Start or stop the test control plane for people (make cluster-up / make cluster-down).

    python -m hack.cluster up      start it in the background, install the CRDs, print the KUBECONFIG
    python -m hack.cluster down    stop it
    python -m hack.cluster status  print where it is

(from the repository root, as the Makefile runs it).

The control plane runs under a supervisor process (``serve``) that owns every component, so
``down`` (or killing the supervisor) stops them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .localcluster import LocalCluster
from .localcluster.supervisor import Supervisor, SupervisorError

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "cluster"
SUPERVISOR = Supervisor(STATE_DIR)


def serve() -> int:
    """Run the control plane in the foreground until SIGTERM/SIGINT."""
    workdir = STATE_DIR / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    cluster = LocalCluster(workdir=workdir)
    try:
        cluster.start()
        cluster.install_crds()
        SUPERVISOR.publish(cluster.state())
        SUPERVISOR.serve_until_stopped()
    finally:
        SUPERVISOR.withdraw()
        cluster.stop()
    return 0


def up() -> int:
    state = SUPERVISOR.running()
    if state is None:
        try:
            state = SUPERVISOR.start(__spec__.name, REPO, timeout=1800)  # the first run builds the binaries
        except SupervisorError as error:
            print(f"the control plane did not start: {error}", file=sys.stderr)
            return 1
    print(f"control plane at {state['server']}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def down() -> int:
    print("control plane stopped" if SUPERVISOR.stop() else "no control plane is running")
    return 0


def status() -> int:
    state = SUPERVISOR.running()
    print(json.dumps(state, indent=2) if state else "no control plane is running")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    command = parser.parse_args().command
    return {"up": up, "down": down, "status": status, "serve": serve}[command]()


if __name__ == "__main__":
    sys.exit(main())
