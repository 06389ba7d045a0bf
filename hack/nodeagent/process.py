"""A container as a local process: its own process group, its log in a file, gone when the agent goes.

PR_SET_PDEATHSIG delivers SIGKILL to the process when the *thread* that started it ends, so each
container is started by the pod worker thread that waits for it, which outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .node import now

_PR_SET_PDEATHSIG = 1
# Resolved once here: a forked child of a threaded process must not load libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class StartError(Exception):
    """The command could not be executed (the runtime's StartError, exit code 128)."""


@dataclass
class ContainerProcess:
    popen: subprocess.Popen
    started_at: str

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> ContainerProcess:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise StartError(f"exec: {argv[0]!r}: {error.strerror or error}") from None
        return cls(popen, now())

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        """None while it runs; else its status as a container runtime reports it (128 + signal when killed)."""
        code = self.popen.poll()
        if code is None:
            return None
        self.signal_group(signal.SIGKILL)  # what it left behind dies with it, as with a container's cgroup
        return 128 - code if code < 0 else code

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)
