#!/usr/bin/env python3
"""Start or stop the test control plane for people (make cluster-up / make cluster-down).

    hack/cluster.py up      start it in the background, install the CRDs, print the KUBECONFIG
    hack/cluster.py down    stop it
    hack/cluster.py status  print where it is

The control plane runs under a supervisor process (``serve``) that owns every component, so
``down`` (or killing the supervisor) stops them all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "cluster"
STATE = STATE_DIR / "state.json"


def serve() -> int:
    """Run the control plane in the foreground until SIGTERM/SIGINT."""
    stop = False

    def request_stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workdir = STATE_DIR / "run"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    cluster = LocalCluster(workdir=workdir)
    try:
        cluster.start()
        cluster.run_kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.run_kubectl(
            "wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "crd/modeladapters.finetune.dev"
        )
        STATE.write_text(json.dumps({**cluster.state(), "supervisor": os.getpid()}, indent=2))
        while not stop:
            time.sleep(0.5)
    finally:
        cluster.stop()
        STATE.unlink(missing_ok=True)
    return 0


def _running() -> dict | None:
    if not STATE.exists():
        return None
    state = json.loads(STATE.read_text())
    try:
        os.kill(state["supervisor"], 0)
    except ProcessLookupError:
        STATE.unlink(missing_ok=True)
        return None
    return state


def up() -> int:
    state = _running()
    if state is None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        log = (STATE_DIR / "supervisor.log").open("ab")
        supervisor = subprocess.Popen(
            [sys.executable, __file__, "serve"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600  # the first run builds the binaries
        while (state := _running()) is None:
            if supervisor.poll() is not None:
                print((STATE_DIR / "supervisor.log").read_text()[-4000:], file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print("the control plane did not start in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
    print(f"control plane at {state['server']}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def down() -> int:
    state = _running()
    if state is None:
        print("no control plane is running")
        return 0
    os.kill(state["supervisor"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _running() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    print("control plane stopped")
    return 0


def status() -> int:
    state = _running()
    print(json.dumps(state, indent=2) if state else "no control plane is running")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    command = parser.parse_args().command
    return {"up": up, "down": down, "status": status, "serve": serve}[command]()


if __name__ == "__main__":
    sys.exit(main())
