"""The container's entrypoint: runs the launch command and keeps the trainer's exit code and signals intact.

    python -m finetune_trainer.launch -- accelerate launch [...] -m finetune_trainer --config /etc/finetune/config.json

``accelerate launch`` is what starts one trainer process per GPU, but two of its habits break the
trainer's contract with the Job: it turns every non-zero exit of a worker into 1 (the
podFailurePolicy needs 65, 75 and 78 as they are), and it neither passes SIGTERM on (one process)
nor gives workers more than 30 s after it (torch elastic) to save a checkpoint. This wrapper:

- runs the command in a process group of its own;
- on SIGTERM or SIGINT, sends SIGTERM to the trainer processes themselves (each registers its pid
  in FINETUNE_EXIT_CODE_DIR as it starts), or to the whole group before any has registered;
- exits with the most significant code the trainer processes recorded: configuration error, data
  error, gate failed, failure, preempted, success, in that order; else with the command's own status;
- reaps orphans, as the first process of a container must.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_core.api import ExitCode

# Which code wins when ranks disagree: a rank that failed makes the launcher stop the others, which
# then report preempted; the cause is the one to keep.
_PRECEDENCE = [
    ExitCode.CONFIG_ERROR,
    ExitCode.DATA_ERROR,
    ExitCode.GATE_FAILED,
    ExitCode.FAILURE,
    ExitCode.PREEMPTED,
    ExitCode.SUCCESS,
]


def worker_pids(exit_dir: Path) -> list[int]:
    pids = []
    for path in exit_dir.glob("pid-*"):
        try:
            pids.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def recorded_exit_code(exit_dir: Path) -> ExitCode | None:
    codes = set()
    for path in exit_dir.glob("rank-*"):
        try:
            codes.add(ExitCode(int(path.read_text().strip())))
        except (OSError, ValueError):
            codes.add(ExitCode.FAILURE)
    for code in _PRECEDENCE:
        if code in codes:
            return code
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command or command[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if command else 2
    exit_dir = Path(tempfile.mkdtemp(prefix="finetune-exit-"))
    env = {**os.environ, "FINETUNE_EXIT_CODE_DIR": str(exit_dir)}
    child = subprocess.Popen(command, env=env, start_new_session=True)  # noqa: S603 the pod's own command line, from the rendered Job
    forwarded = False

    def forward(signum: int, _frame) -> None:
        nonlocal forwarded
        forwarded = True
        targets = [pid for pid in worker_pids(exit_dir) if _alive(pid)]
        if targets:
            for pid in targets:
                os.kill(pid, signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    status = _wait(child)
    # The launcher may end before its workers (torch elastic on SIGTERM): wait for them too.
    while any(_alive(pid) for pid in worker_pids(exit_dir)):
        _reap_orphans()
        time.sleep(0.2)
    code = recorded_exit_code(exit_dir)
    if code is None:
        code = ExitCode.PREEMPTED if forwarded else None
    return int(code) if code is not None else _shell_status(status)


def _wait(child: subprocess.Popen) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:
            continue
        finally:
            _reap_orphans()


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _shell_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(main())
