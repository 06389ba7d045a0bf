"""Entry point: ``python -m finetune_trainer --config config.json`` (alone, or under ``accelerate launch``).

The exit status is an API (finetune_core.api.ExitCode): 0 success, 78 configuration error,
65 data error, 79 evaluation gate failed (none of them retried), 75 preempted after a checkpoint
(retried, resumes), 1 anything else. A failure's one-line reason goes to the container's termination message, where the
operator reads it for the job's conditions; a success leaves the final summary there (termination.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from finetune_core.api import ExitCode

from . import log
from .errors import exit_code_of
from .termination import write_termination_message

DEFAULT_CONFIG = Path("/etc/finetune/config.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer",
        description="Fine-tune a causal language model (LoRA, QLoRA or full; SFT, chat, continued "
        "pre-training or DPO) as the resolved trainer configuration of a FineTuneJob describes, then "
        "evaluate it against its base and publish the artifact.",
        epilog="Exit codes: 0 success, 1 unexpected failure, 65 data error, 75 preempted (checkpoint "
        "saved), 78 configuration error, 79 evaluation gate failed. Run several processes with accelerate "
        "launch, through python -m finetune_trainer.launch.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the resolved trainer configuration, JSON (default: {DEFAULT_CONFIG})",
    )
    return parser.parse_args(argv)


def parse_preflight_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer preflight",
        description="On CPU, before any GPU is claimed: resolve the model revision, load its tokenizer, validate, "
        "tokenize and count every data row as training would, and plan the run's steps for the training pods' "
        "layout. The plan (JSON) goes to the termination message.",
        epilog="Exit codes: 0 planned, 65 data error (the invalid rows' file:line in the termination message), "
        "78 configuration error, 1 anything else.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the resolved trainer configuration")
    parser.add_argument("--processes", type=int, default=1, help="training processes (ranks) the plan is for")
    parser.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu", help="where training will run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """``own_process``: this process runs one training and ends (``python -m finetune_trainer``), so the run may
    shape the process for itself (model.skip_unused_quantization); tests calling main() in theirs leave it False."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["preflight"]:
        return preflight_main(argv[1:])
    args = parse_args(argv)
    log.configure()
    register_with_launcher()
    try:
        from .run import run  # torch and transformers load here, after --help has had its chance

        run(args.config, own_process=own_process)
        code = ExitCode.SUCCESS
    except Exception as error:
        code = exit_code_of(error)
        if code == ExitCode.FAILURE:
            log.error("failed", exc_info=True, error=f"{type(error).__name__}: {error}", exit_code=int(code))
        else:
            log.error("stopped", reason=code.name.lower(), message=str(error), exit_code=int(code))
        write_termination_message(f"{code.meaning}: {error}")
    record_exit_code(code)
    return int(code)


def preflight_main(argv: list[str]) -> int:
    args = parse_preflight_args(argv)
    log.configure()
    try:
        from .errors import DataError
        from .preflight import TrainingTopology, preflight, report_data_error, report_plan

        plan = preflight(
            args.config, TrainingTopology(processes=max(1, args.processes), on_gpu=args.accelerator == "gpu")
        )
    except Exception as error:
        code = exit_code_of(error)
        log.error("preflight_stopped", reason=code.name.lower(), message=str(error), exit_code=int(code))
        if isinstance(error, DataError):
            report_data_error(error)
        else:
            write_termination_message(f"{code.meaning}: {error}")
        return int(code)
    log.info("preflight_planned", **plan.model_dump(exclude={"sources"}, exclude_none=True))
    report_plan(plan)
    return int(ExitCode.SUCCESS)


def register_with_launcher() -> None:
    """Tell the launcher wrapper (finetune_trainer.launch) which process to send SIGTERM to."""
    _tell_launcher("pid", str(os.getpid()))


def record_exit_code(code: ExitCode) -> None:
    """Tell the launcher wrapper this rank's exit code (accelerate launch does not pass it on)."""
    _tell_launcher("rank", str(int(code)))


def _tell_launcher(kind: str, value: str) -> None:
    directory = os.environ.get("FINETUNE_EXIT_CODE_DIR")
    if not directory:
        return
    rank = os.environ.get("RANK", "0")
    with contextlib.suppress(OSError):
        Path(directory, f"{kind}-{rank}").write_text(value, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(own_process=True))
