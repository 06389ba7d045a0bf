"""The trainer on a real GPU, proven and measured by one command: ``python3 -m benchmarks.gpu_check``.

    python3 -m benchmarks.gpu_check --carry .gpu-carry --out $OUT     # on a GPU machine (make gpu-check first)
    python3 -m benchmarks.gpu_check --cpu --out /tmp/check             # the same stages, tiny, on the CPU

Stages, each in processes of its own with its own time limit, so that one failure or overrun still
leaves the others' results (summary.json is rewritten after every stage):

- setup: installs the carried wheels the machine lacks (benchmarks.carry_install) and records the
  GPU, Python and package versions;
- lora-resume: the trainer's own entrypoint (``python -m finetune_trainer``) on a randomly
  initialised Llama-3.2-1B shape in bf16: LoRA SFT for 60 steps with checkpoints, once straight
  through and once with a SIGTERM at step 30 (exit 75) and a rerun that resumes; the two final
  adapters are compared bitwise, and where they differ, with a second straight run (the GPU's own
  run-to-run noise);
- bench-1b: the trainer benchmark (benchmarks.trainer --gpu) on the 1B shape against TRL: tokens/s,
  MFU, peak memory, held-out loss at equal tokens;
- full: full fine-tuning of an 88M-parameter Llama through the entrypoint;
- qlora: QLoRA on the 1B shape through the entrypoint, if bitsandbytes is there;
- bench-8b: the benchmark on the Llama-3.1-8B shape.

On an H100 the stages are sized to end within 8 minutes together (``--deadline``); each stage may
use its own budget plus what the stages before it left unused, never the budgets of those after it.
Results: summary.json (everything), bench-1b.json and bench-8b.json (the benchmark's own records)
and gpu-check.log (this output) in ``--out``; models, runs and logs in ``--work``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import REPO, SOURCE_DIRS
from .carry_install import install, problems

PREEMPTED = 75  # finetune_core.api.ExitCode.PREEMPTED (not imported: pydantic may not be installed yet)
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}


@dataclass(frozen=True)
class Sizes:
    """How big every stage is in one mode."""

    mode: str  # gpu | cpu
    device: str
    dtype: str  # the workload's weights
    precision: str  # the trainer's training.precision
    shape: str  # LoRA and QLoRA
    full_shape: str
    rows: int
    tokenizer_vocab: int
    batch_tokens: int
    lora_steps: int
    stop_at: int  # the step after which the interrupted run gets SIGTERM
    checkpoint_every: int
    full_steps: int
    qlora_steps: int
    eval_rows: int | None  # held-out rows the trainer evaluates on (None: the workload's 64)
    bench_args: tuple[str, ...]
    threads: int | None
    budgets: dict[str, int]  # seconds per stage this mode runs by default, in the order they run


GPU = Sizes(
    mode="gpu",
    device="cuda",
    dtype="bfloat16",
    precision="bf16",
    shape="llama-3.2-1b",
    full_shape="llama-88m",
    rows=3000,  # the benchmark's own workload: built once, used by both
    tokenizer_vocab=8192,
    batch_tokens=8192,
    lora_steps=60,
    stop_at=30,
    checkpoint_every=20,
    full_steps=20,
    qlora_steps=20,
    eval_rows=None,
    # TRL's padded variant is left out to fit the 8 minutes (make bench-trainer GPU=1 runs it).
    bench_args=("--gpu", "--only", "ours,trl-packed"),
    threads=None,
    budgets={"setup": 60, "lora-resume": 120, "bench-1b": 85, "full": 40, "qlora": 40, "bench-8b": 135},
)
CPU = Sizes(
    mode="cpu",
    device="cpu",
    dtype="float32",
    precision="fp32",
    shape="smoke-llama",
    full_shape="smoke-llama",
    rows=64,  # the benchmark's smoke workload
    tokenizer_vocab=512,
    batch_tokens=1024,
    lora_steps=8,
    stop_at=4,
    checkpoint_every=3,
    full_steps=3,
    qlora_steps=0,
    eval_rows=8,
    bench_args=("--gpu", "--smoke", "--threads", "2", "--only", "ours"),
    threads=2,
    # Ceilings against a hang, not a plan: shared test machines are slow by any amount. No bench-8b: on the
    # CPU the benchmark's smoke shape stands in for both shapes, so it would repeat bench-1b.
    budgets={"setup": 120, "lora-resume": 300, "bench-1b": 180, "full": 120, "qlora": 60},
)


class StageTimeout(Exception):
    pass


class StageFailed(Exception):
    """A stage's precondition or result is wrong (one line, with the log to read)."""


@dataclass
class Check:
    sizes: Sizes
    out: Path
    work: Path
    env: dict[str, str]  # every child's: PYTHONPATH with the carry's site first
    output: TextIO
    summary: dict[str, Any] = field(default_factory=dict)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # shape -> built workload

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.output.write(line + "\n")
        self.output.flush()

    def save(self) -> None:
        partial = self.out / "summary.json.partial"
        partial.write_text(json.dumps(self.summary, indent=1, default=str))
        partial.replace(self.out / "summary.json")


class Clock:
    """A stage's time limit, handed to each process it starts."""

    def __init__(self, seconds: float):
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise StageTimeout("out of time")
        return left


# ---------------------------------------------------------------------------------------------
# processes


def run_logged(
    command: list[str],
    check: Check,
    log: Path,
    clock: Clock,
    *,
    env: dict[str, str] | None = None,
    on_line: Callable[[str, subprocess.Popen], None] | None = None,
) -> tuple[int, list[str]]:
    """Run ``command`` with its output appended to ``log``; returns its exit code and last lines.

    The process gets a session of its own, so that a timeout ends it with everything it started.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    timed_out = threading.Event()
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env or check.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def stop() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(clock.left(), stop)
        timer.start()
        try:
            for line in process.stdout:
                sink.write(line)
                tail.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line, process)
            code = process.wait()
        finally:
            timer.cancel()
    if timed_out.is_set():
        raise StageTimeout(f"{command[2] if len(command) > 2 else command[0]} ran out of time (log: {log})")
    return code, list(tail)


def python_json(check: Check, code: str, log: Path, clock: Clock) -> dict[str, Any]:
    """The JSON object a short Python program prints last (run with the stages' environment)."""
    status, tail = run_logged([sys.executable, "-c", code], check, log, clock)
    lines = [line for line in tail if line.startswith("{")]
    if status != 0 or not lines:
        raise StageFailed(f"python -c failed ({status}): {tail[-3:]}")
    return json.loads(lines[-1])


class GpuMemory:
    """The device's peak used memory while a stage runs, from nvidia-smi (the CUDA contexts included)."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._done.wait(0.5):
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],  # noqa: S607 the driver's own tool
                capture_output=True,
                text=True,
                check=False,
            )
            with contextlib.suppress(ValueError, IndexError):
                used = int(result.stdout.split()[0])
                self.peak_mib = max(self.peak_mib or 0, used)


# ---------------------------------------------------------------------------------------------
# workloads and trainer runs


def build_workload(check: Check, shape: str, clock: Clock) -> dict[str, Any]:
    """The benchmark's workload (model, tokenizer, rows) under work/workloads, shared with benchmarks.trainer."""
    if shape in check.workloads:
        return check.workloads[shape]
    sizes = check.sizes
    command = [sys.executable, "-m", "benchmarks.workloads", "--root", str(check.work / "workloads"), "--shape", shape]
    command += ["--rows", str(sizes.rows), "--tokenizer-vocab", str(sizes.tokenizer_vocab)]
    command += ["--device", sizes.device, "--dtype", sizes.dtype]
    code, tail = run_logged(command, check, check.work / "logs" / f"workload-{shape}.log", clock)
    described = [line for line in tail if line.startswith("{")]
    if code != 0 or not described:
        raise StageFailed(f"building the {shape} workload failed (exit {code}): {tail[-3:]}")
    workload = json.loads(described[-1])
    if sizes.eval_rows is not None:
        rows = Path(workload["heldout_jsonl"]).read_text().splitlines(keepends=True)[: sizes.eval_rows]
        workload["heldout_jsonl"] = str(check.work / f"eval-{shape}.jsonl")
        Path(workload["heldout_jsonl"]).write_text("".join(rows))
    check.workloads[shape] = workload
    return workload


def trainer_config(run_dir: Path, workload: dict[str, Any], method: dict[str, Any], steps: int, sizes: Sizes):
    """A resolved trainer configuration (what the operator writes into the job's ConfigMap)."""
    return {
        "job": {"namespace": "gpu-check", "name": run_dir.name, "uid": f"gpu-check-{run_dir.name}"},
        "model": {"uri": f"file://{workload['model_dir']}"},
        "method": method,
        "objective": "sft",
        "data": {
            "train": [{"uri": f"file://{workload['train_jsonl']}"}],
            "eval": {"uri": f"file://{workload['heldout_jsonl']}"},
        },
        "training": {
            "learningRate": 1e-3,
            "maxSteps": steps,
            "batchTokens": sizes.batch_tokens,
            "maxSeqLength": 1024,
            "warmupRatio": 0.1,
            "precision": sizes.precision,
            "checkpointEverySteps": sizes.checkpoint_every,
            "keepCheckpoints": 2,
            "seed": 0,
        },
        "evaluation": {"gate": {"mode": "off"}},
        "output": {
            "checkpointsUri": f"file://{run_dir / 'checkpoints'}",
            "artifactUri": f"file://{run_dir / 'artifact'}",
            "adapterName": run_dir.name,
            "version": "v1",
        },
    }


@dataclass
class TrainerRun:
    """One attempt of ``python -m finetune_trainer`` and what it reported."""

    exit_code: int
    seconds: float
    preempted_at_step: int | None = None
    report: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)


def run_trainer(
    check: Check,
    name: str,
    workload: dict[str, Any],
    method: dict[str, Any],
    steps: int,
    clock: Clock,
    *,
    stop_at: int | None = None,
) -> TrainerRun:
    """An attempt of the run ``name`` (a second attempt of the same name resumes from its checkpoint)."""
    run_dir = check.work / "runs" / name
    config = run_dir / "config.json"
    if not config.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(trainer_config(run_dir, workload, method, steps, check.sizes), indent=1))
    env = {key: value for key, value in check.env.items() if not key.startswith(("FINETUNE_", "RANK", "WORLD_SIZE"))}
    for variable, directory in (
        ("FINETUNE_SCRATCH_DIR", "scratch"),
        ("FINETUNE_CACHE_DIR", "cache"),
        ("FINETUNE_CREDENTIALS_DIR", "credentials"),
        ("FINETUNE_PVC_ROOT", "pvc"),
    ):
        (run_dir / directory).mkdir(exist_ok=True)
        env[variable] = str(run_dir / directory)
    env.update(FINETUNE_TERMINATION_LOG=str(run_dir / "termination-log"), FINETUNE_METRICS_PORT="0")
    env["FINETUNE_LOG_LEVEL"] = "INFO"
    if check.sizes.threads:
        env["OMP_NUM_THREADS"] = str(check.sizes.threads)

    preempted: list[int] = []
    signalled = threading.Event()

    def watch(line: str, process: subprocess.Popen) -> None:
        if not line.startswith("{"):
            return
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("msg") == "preempted":
                preempted.append(int(event["step"]))
            elif (
                stop_at is not None
                and event.get("msg") == "step"
                and event.get("step", 0) >= stop_at
                and not signalled.is_set()
            ):
                signalled.set()
                process.send_signal(signal.SIGTERM)  # what the kubelet sends a preempted pod's container

    started = time.monotonic()
    command = [sys.executable, "-m", "finetune_trainer", "--config", str(config)]
    code, tail = run_logged(command, check, check.work / "logs" / f"{name}.log", clock, env=env, on_line=watch)
    attempt = TrainerRun(code, round(time.monotonic() - started, 1), preempted[0] if preempted else None, log_tail=tail)
    if code == 0:
        artifact = run_dir / "artifact"
        attempt.report = json.loads((artifact / "training_report.json").read_text())
        attempt.throughput = step_throughput(artifact / "metrics.jsonl", attempt.report.get("resumed_from_step"))
    return attempt


def step_throughput(metrics: Path, resumed_from_step: int | None) -> dict[str, Any]:
    """Tokens per second of this attempt's steps from the trainer's own metrics, the first tenth (warm-up) left out."""
    steps = [
        record
        for record in map(json.loads, metrics.read_text().splitlines())
        if record.get("kind") == "step" and record["step"] > (resumed_from_step or 0)
    ]
    timed = steps[max(1, len(steps) // 10) :] if len(steps) > 2 else steps
    seconds = sum(record["step_seconds"] for record in timed)
    tokens = sum(record["tokens"] for record in timed)
    return {
        "steps_timed": len(timed),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "median_step_seconds": round(statistics.median(r["step_seconds"] for r in timed), 4) if timed else None,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
    }


def run_facts(attempt: TrainerRun) -> dict[str, Any]:
    """What a summary keeps of a finished attempt."""
    facts: dict[str, Any] = {"exit_code": attempt.exit_code, "seconds": attempt.seconds}
    if attempt.report is None:
        return {**facts, "log_tail": attempt.log_tail[-12:]}
    report = attempt.report
    task = (report.get("evaluation") or {}).get("task") or {}
    return {
        **facts,
        "steps": report["steps"],
        "tokens_seen": report["tokens_seen"],
        "resumed_from_step": report.get("resumed_from_step"),
        "final_train_loss": report.get("final_train_loss"),
        "eval_loss_base": task.get("base_loss"),
        "eval_loss_trained": task.get("adapter_loss"),
        "device": report.get("device"),
        **(attempt.throughput or {}),
    }


def compare_adapters(check: Check, first: str, second: str, clock: Clock) -> dict[str, Any]:
    paths = [check.work / "runs" / name / "artifact" / "adapter_model.safetensors" for name in (first, second)]
    command = [sys.executable, "-m", "benchmarks.compare_weights", *map(str, paths)]
    code, tail = run_logged(command, check, check.work / "logs" / f"compare-{first}-{second}.log", clock)
    described = [line for line in tail if line.startswith("{")]
    if code != 0 or not described:
        raise StageFailed(f"comparing {first} with {second} failed: {tail[-3:]}")
    return json.loads(described[-1])


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StageFailed(message)


# ---------------------------------------------------------------------------------------------
# stages: each returns its results (a failure raises, after what it measured went into ``results``)


# Versions, the GPU, what imports, and the trainer itself importing: in one process (imports take seconds).
PROBE = """
import importlib.util, json, platform
import torch, transformers, peft, accelerate
import finetune_trainer.run, finetune_core.api
cuda = torch.cuda.is_available()
print(json.dumps({
    "versions": {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "bf16": torch.cuda.is_bf16_supported() if cuda else None,
    },
    "importable": {m: importlib.util.find_spec(m) is not None for m in ("trl", "datasets", "bitsandbytes", "flash_attn")},
}))
"""


def stage_setup(check: Check, clock: Clock, carry: Path | None, prefer_carried: bool, results: dict[str, Any]) -> None:
    site = check.work / "site"
    if carry is not None:
        results["carry"] = install(carry, site, prefer_carried=prefer_carried)
        check.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), check.env.get("PYTHONPATH")]))
    results["environment_problems"] = problems(carry, site if carry is not None else None)
    results.update(python_json(check, PROBE, check.work / "logs" / "setup.log", clock))
    if check.sizes.mode == "gpu":
        expect(results["versions"]["gpu"] is not None, "torch sees no CUDA device")


def stage_lora_resume(check: Check, clock: Clock, results: dict[str, Any]) -> None:
    sizes = check.sizes
    workload = build_workload(check, sizes.shape, clock)
    results["model"] = {"shape": sizes.shape, "parameters": workload["parameters"], "dtype": sizes.dtype}
    method = {"type": "lora", "lora": LORA}
    straight = run_trainer(check, "lora-straight", workload, method, sizes.lora_steps, clock)
    results["straight"] = run_facts(straight)
    expect(straight.exit_code == 0, f"the straight run exited {straight.exit_code}")

    stopped = run_trainer(check, "lora-resumed", workload, method, sizes.lora_steps, clock, stop_at=sizes.stop_at)
    results["interrupted"] = {
        "exit_code": stopped.exit_code,
        "preempted_at_step": stopped.preempted_at_step,
        "seconds": stopped.seconds,
    }
    expect(stopped.exit_code == PREEMPTED, f"SIGTERM after step {sizes.stop_at}: exit {stopped.exit_code}, not 75")
    resumed = run_trainer(check, "lora-resumed", workload, method, sizes.lora_steps, clock)
    results["resumed"] = run_facts(resumed)
    expect(resumed.exit_code == 0, f"the resumed run exited {resumed.exit_code}")
    expect(
        results["resumed"]["resumed_from_step"] == stopped.preempted_at_step,
        f"resumed from step {results['resumed']['resumed_from_step']}, preempted at {stopped.preempted_at_step}",
    )
    expect(results["resumed"]["steps"] == sizes.lora_steps, f"the resumed run ended at {results['resumed']['steps']}")

    results["resumed_vs_straight"] = same = compare_adapters(check, "lora-straight", "lora-resumed", clock)
    if same["bitwise_equal"]:
        results["verdict"] = "the resumed adapter equals the uninterrupted one bitwise"
        return
    # Not bitwise: a GPU's kernels (attention backward, split-K matrix products) may not be deterministic.
    # A second uninterrupted run measures that noise; resumption must not add more than its order.
    again = run_trainer(check, "lora-straight-again", workload, method, sizes.lora_steps, clock)
    expect(again.exit_code == 0, f"the second straight run exited {again.exit_code}")
    results["straight_vs_straight"] = noise = compare_adapters(check, "lora-straight", "lora-straight-again", clock)
    if noise["bitwise_equal"]:
        raise StageFailed(
            f"two straight runs are bitwise equal but the resumed one differs by {same['max_abs_diff']:.3g}: "
            "resumption is not exact"
        )
    within = same["max_abs_diff"] <= 10 * noise["max_abs_diff"]
    results["verdict"] = (
        f"resumed vs straight differ by {same['max_abs_diff']:.3g} (max abs), two straight runs by "
        f"{noise['max_abs_diff']:.3g}: " + ("within the GPU's run-to-run noise" if within else "MORE than that noise")
    )
    expect(within, results["verdict"])


def stage_full(check: Check, clock: Clock, results: dict[str, Any]) -> None:
    workload = build_workload(check, check.sizes.full_shape, clock)
    results["model"] = {"shape": check.sizes.full_shape, "parameters": workload["parameters"]}
    attempt = run_trainer(check, "full", workload, {"type": "full"}, check.sizes.full_steps, clock)
    results["run"] = run_facts(attempt)
    expect(attempt.exit_code == 0, f"full fine-tuning exited {attempt.exit_code}")


def stage_qlora(check: Check, clock: Clock, results: dict[str, Any]) -> None:
    if check.sizes.device != "cuda":
        results["skipped"] = "QLoRA needs a CUDA GPU (bitsandbytes 4-bit NF4)"
        return
    if not check.summary["stages"].get("setup", {}).get("importable", {}).get("bitsandbytes"):
        results["skipped"] = "bitsandbytes is not installed (not carried: see carry.skipped_by_carry)"
        return
    workload = build_workload(check, check.sizes.shape, clock)
    method = {"type": "qlora", "lora": LORA}
    attempt = run_trainer(check, "qlora", workload, method, check.sizes.qlora_steps, clock)
    results["run"] = run_facts(attempt)
    expect(attempt.exit_code == 0, f"QLoRA exited {attempt.exit_code}")


def stage_bench(shape: str) -> Callable[[Check, Clock, dict[str, Any]], None]:
    def bench(check: Check, clock: Clock, results: dict[str, Any]) -> None:
        out = check.work / f"bench-{shape}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "benchmarks.trainer", *check.sizes.bench_args, "--shape", shape]
        command += ["--out", str(out), "--work", str(check.work)]
        code, tail = run_logged(command, check, check.work / "logs" / f"bench-{shape}.log", clock)
        recorded = sorted(out.glob("trainer-*.json"))
        expect(code == 0 and bool(recorded), f"the benchmark exited {code}: {tail[-5:]}")
        record = json.loads(recorded[-1].read_text())
        shutil.copy(recorded[-1], check.out / f"bench-{shape.split('-')[-1]}.json")
        results.update(bench_facts(record))
        failed = [name for suite in record["suites"] for name, run in suite["runs"].items() if "error" in run]
        expect(not failed, f"benchmark runs failed: {failed}")

    return bench


def bench_facts(record: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's numbers that matter, per run."""
    (suite,) = record["suites"]
    runs = {}
    for name, run in suite["runs"].items():
        if "error" in run:
            runs[name] = {"error": run["error"], "log_tail": run.get("log_tail", [])[-5:]}
            continue
        runs[name] = {
            "tokens_per_second": run["tokens_per_second"],
            "mfu": (run.get("mfu") or {}).get("mfu"),
            "peak_gpu_mib": run.get("peak_gpu_mib"),
            "peak_rss_mib": run.get("peak_rss_mib"),
            "heldout_loss": run["heldout_loss"],
            "tokens": run["tokens"],
            "steps": run["steps"],
            "note": run.get("note"),
        }
    return {
        "shape": suite["shape"],
        "device": suite["device"],
        "parameters": suite["model"]["parameters"],
        "runs": runs,
        "baseline": suite["baseline"],
        "ours_vs_baseline": suite["comparison"],
    }


STAGES: dict[str, Callable[..., None]] = {
    "lora-resume": stage_lora_resume,
    "bench-1b": stage_bench("llama-3.2-1b"),
    "full": stage_full,
    "qlora": stage_qlora,
    "bench-8b": stage_bench("llama-3.1-8b"),
}


# ---------------------------------------------------------------------------------------------
# the run


def run_check(
    check: Check, names: list[str], carry: Path | None, deadline: float, prefer_carried: bool = False
) -> bool:
    """Every stage in ``names`` (setup first); True when none failed."""
    budgets = {**GPU.budgets, **check.sizes.budgets}
    ends = time.monotonic() + deadline
    order = ["setup", *names]
    check.say(
        f"GPU check ({check.sizes.mode}): {deadline:.0f} s in all; budgets "
        + ", ".join(f"{name} {budgets[name]} s" for name in order)
    )
    stages: dict[str, Any] = check.summary.setdefault("stages", {})
    for index, name in enumerate(order):
        later = sum(budgets[n] for n in order[index + 1 :])
        limit = ends - time.monotonic() - later
        results: dict[str, Any] = {"budget_seconds": budgets[name]}
        stages[name] = results
        started = time.monotonic()
        if limit < min(10, budgets[name]):
            results.update(status="skipped", reason=f"no time left ({limit:.0f} s)")
        else:
            with GpuMemory() as memory:
                try:
                    if name == "setup":
                        stage_setup(check, Clock(limit), carry, prefer_carried, results)
                    else:
                        STAGES[name](check, Clock(limit), results)
                    results["status"] = "skipped" if "skipped" in results else "passed"
                except StageTimeout as error:
                    results.update(status="timed out", error=str(error))
                except Exception as error:
                    results.update(status="failed", error=f"{type(error).__name__}: {error}")
            if memory.peak_mib is not None:
                results["peak_gpu_used_mib"] = memory.peak_mib
        results["seconds"] = round(time.monotonic() - started, 1)
        check.say(f"[{name}] {results['status']} in {results['seconds']:.0f} s (budget {budgets[name]} s)")
        if "error" in results:
            check.say(f"    {results['error']}")
        check.save()
        if name == "setup" and results["status"] != "passed":
            check.say("setup failed: the other stages need it")
            break
    check.summary["seconds"] = round(sum(stage.get("seconds", 0) for stage in stages.values()), 1)
    check.save()
    check.say()
    check.say(describe(check.summary))
    return all(stage.get("status") in ("passed", "skipped") for stage in stages.values())


def describe(summary: dict[str, Any]) -> str:
    """The summary for a person: one block per stage."""
    lines = [f"GPU check, {summary['mode']} mode, {summary.get('seconds', 0):.0f} s"]
    stages = summary.get("stages", {})
    setup = stages.get("setup", {})
    versions = setup.get("versions", {})
    if versions:
        lines.append(
            f"  {versions.get('gpu') or 'no GPU'}; Python {versions['python']}, torch {versions['torch']} "
            f"(CUDA {versions['cuda']}), transformers {versions['transformers']}, peft {versions['peft']}"
        )
    for problem in setup.get("environment_problems", []):
        lines.append(f"  environment: {problem}")
    for skipped in setup.get("carry", {}).get("skipped_by_carry", []):
        lines.append(f"  carry: {skipped}")
    for name, stage in stages.items():
        if name == "setup":
            continue
        lines.append(f"{name}: {stage['status']} ({stage['seconds']:.0f} s of {stage['budget_seconds']} s)")
        lines += [f"  {line}" for line in _stage_lines(stage, gpu=summary["mode"] == "gpu")]
    return "\n".join(lines)


def _stage_lines(stage: dict[str, Any], gpu: bool) -> list[str]:
    lines = []
    for key in ("error", "reason", "skipped", "verdict"):
        if stage.get(key):
            lines.append(str(stage[key]))
    for key in ("straight", "resumed", "run"):
        run = stage.get(key)
        if run and run.get("tokens_per_second"):
            lines.append(
                f"{key}: {run['steps']} steps, {run['tokens_per_second']:,.0f} tokens/s, train loss "
                f"{run['first_loss']:.3f} -> {run['last_loss']:.3f}, eval loss {run['eval_loss_base']:.3f} -> "
                f"{run['eval_loss_trained']:.3f}"
            )
    if "interrupted" in stage:
        lines.append(
            f"SIGTERM: exit {stage['interrupted']['exit_code']} at step {stage['interrupted']['preempted_at_step']}"
        )
    for name, run in stage.get("runs", {}).items():
        if "error" in run:
            lines.append(f"{name}: FAILED {run['error']}")
            continue
        mfu = f", MFU {run['mfu']:.1%}" if gpu and run.get("mfu") is not None else ""
        memory = f", peak {run['peak_gpu_mib']:,.0f} MiB" if run.get("peak_gpu_mib") is not None else ""
        lines.append(
            f"{name}: {run['tokens_per_second']:,.0f} tokens/s{mfu}{memory}, held-out loss {run['heldout_loss']}"
        )
    comparison = stage.get("ours_vs_baseline")
    if comparison and comparison.get("ratio") is not None:
        lines.append(f"ours / {stage['baseline']} = {comparison['ratio']:.2f}x: {comparison['quality']}")
    if stage.get("peak_gpu_used_mib") is not None:
        lines.append(f"peak GPU memory used (nvidia-smi): {stage['peak_gpu_used_mib']:,} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="summary.json, bench-*.json and the log go here")
    parser.add_argument("--carry", type=Path, default=None, help="the folder make gpu-check built (default: none)")
    parser.add_argument(
        "--prefer-carried",
        action="store_true",
        help="install every carried wheel, even where the machine's own version meets the requirement",
    )
    parser.add_argument("--cpu", action="store_true", help="every stage tiny, on the CPU (the test suite's smoke)")
    parser.add_argument("--work", type=Path, default=None, help="models and runs (default: a folder under /tmp)")
    parser.add_argument("--stages", default=None, help=f"comma-separated, of {', '.join(STAGES)} (default: the mode's)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds for all stages (default: their budgets)")
    args = parser.parse_args(argv)
    sizes = CPU if args.cpu else GPU
    chosen = args.stages.split(",") if args.stages else [name for name in sizes.budgets if name != "setup"]
    names = [name.strip() for name in chosen if name.strip()]
    if unknown := set(names) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    path = [*map(str, SOURCE_DIRS), str(REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), "PYTHONUNBUFFERED": "1"}
    deadline = args.deadline or sum(sizes.budgets.get(name, GPU.budgets[name]) for name in ["setup", *names])
    with (args.out / "gpu-check.log").open("a") as output:
        check = Check(sizes, args.out, work.resolve(), env, output)
        check.summary.update(
            mode=sizes.mode,
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            host=platform.node(),
            work=str(check.work),
            sizes={key: value for key, value in asdict(sizes).items() if key != "budgets"},
        )
        carry = args.carry.resolve() if args.carry else None
        passed = run_check(check, names, carry, deadline, args.prefer_carried)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
