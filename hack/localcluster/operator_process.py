"""The operator under test, run as a real process (python -m finetune_operator) against the control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .cluster import free_port

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.env = env or {}
        self.health_port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        argv = [
            *_python(),
            "-m",
            "finetune_operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--health-port={self.health_port}",
            "--resync-seconds=2",
            "--log-format=json",
            *self.args,
        ]
        defaults = {
            "FINETUNE_METRICS_PORT": "0",
            "FINETUNE_PROGRESS_PORT": "0",
            "FINETUNE_DEFAULT_OUTPUT_URI": "s3://adapters/",
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **defaults, **_coverage_env(), **self.env},
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the operator did not become healthy:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a node dies under the operator."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _measuring() -> Any:
    """The coverage measurement of this process (make test's pytest-cov), or None."""
    try:
        import coverage
    except ImportError:
        return None
    return coverage.Coverage.current()


def _python() -> list[str]:
    """The operator's interpreter: under coverage when this process is measured, so that make test's report of
    the glue modules counts what the e2e tier's operator processes run (handlers.py runs nowhere else)."""
    if _measuring() is None:
        return [sys.executable]
    return [sys.executable, "-m", "coverage", "run", "--parallel-mode", f"--rcfile={REPO / 'pyproject.toml'}"]


def _coverage_env() -> dict[str, str]:
    """Where the operator writes its coverage data: beside the test session's, which pytest-cov combines at its end
    (the operator saves it when it exits after SIGTERM; a SIGKILLed operator's run is not counted)."""
    measuring = _measuring()
    return {"COVERAGE_FILE": os.path.abspath(measuring.config.data_file)} if measuring is not None else {}
