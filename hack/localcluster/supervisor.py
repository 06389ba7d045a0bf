"""A background process that owns long-lived test processes for people (make cluster-up, make demo).

The supervisor runs ``<script> serve`` in a session of its own and writes a state file once its
processes are up; everything it starts dies with it, so stopping it (SIGTERM) stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class SupervisorError(RuntimeError):
    pass


class Supervisor:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.state_file = state_dir / "state.json"
        self.log = state_dir / "supervisor.log"

    def running(self) -> dict | None:
        """The state of the running supervisor, or None (a stale state file is removed)."""
        if not self.state_file.exists():
            return None
        state = json.loads(self.state_file.read_text())
        try:
            os.kill(state["supervisor"], 0)
        except ProcessLookupError:
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    def start(self, module: str, cwd: Path, timeout: float) -> dict:
        """Start ``python -m module serve`` in ``cwd`` (the repository root) and wait until it has written its state."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=cwd,
            )
        deadline = time.monotonic() + timeout
        while (state := self.running()) is None:
            if process.poll() is not None:
                raise SupervisorError(f"it exited with {process.returncode}:\n{self.log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise SupervisorError(f"it did not start within {timeout:.0f}s (log: {self.log})")
            time.sleep(0.5)
        return state

    def stop(self, timeout: float = 60) -> bool:
        """SIGTERM the supervisor and wait until it has exited, so that what it started is stopped when this
        returns (its state file goes first); False when none was running."""
        state = self.running()
        if state is None:
            return False
        os.kill(state["supervisor"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(state["supervisor"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        return True

    def publish(self, state: dict) -> None:
        """Called by the serving side once its processes are up."""
        self.state_file.write_text(json.dumps({**state, "supervisor": os.getpid()}, indent=2))

    def serve_until_stopped(self) -> None:
        """Block the serving side until SIGTERM or SIGINT."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass

    def withdraw(self) -> None:
        self.state_file.unlink(missing_ok=True)
