"""Our trainer against TRL's SFTTrainer + PEFT, side by side in one run: ``make bench-trainer [GPU=1]``.

Same model (fixed seed), same synthetic SFT rows with long-tailed lengths (20-1000 tokens), same
LoRA (r=16, alpha=32, dropout 0.05, all-linear), same optimizer and schedule, and the same token
budget per optimizer step. Every run is a process of its own (benchmarks/runners.py); the results
go to ``bench-results/trainer-<mode>-<time>.json`` and a table on stdout.

CPU mode (default): a 7M-parameter Llama with an 8192-token vocabulary. TRL runs with its best
settings for a CPU (no gradient checkpointing), with packing off (random padded batches), off
with length-grouped batches, and on (padding-free); the fastest that keeps the step's token
budget is the baseline. ``--ablations`` adds runs of our trainer with one speed-up off at a time.

GPU mode (``--gpu``): randomly initialised Llama-3.2-1B and Llama-3.1-8B shapes in bf16, sequences
packed into 4096-token rows, sized for one H100 in under 8 minutes; adds MFU against a bf16 dense
peak (989 TFLOP/s, H100 SXM; ``--peak-tflops`` for another card).

``--smoke`` runs either mode with tiny shapes and a few steps on the CPU (the test suite does).

A speed ratio counts only at equal quality: after the same number of training tokens the
held-out loss of both adapters must agree within ``--loss-tolerance`` (3%).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO, SOURCE_DIRS
from .workloads import SHAPES, Workload

H100_SXM_BF16_DENSE_TFLOPS = 989.0
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}
NEEDED = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "numpy")
NEEDED_BY_TRL = ("trl", "datasets")
# A baseline must train on about the step budget every step: mean within 25%, spread (sd/mean) at most 0.5.
STEP_BUDGET_MEAN_TOLERANCE = 0.25
STEP_BUDGET_MAX_SPREAD = 0.5


@dataclass
class Suite:
    """One benchmark: a workload and the trainer runs that share it."""

    mode: str  # cpu | gpu
    shape: str
    device: str
    dtype: str
    rows: int
    tokenizer_vocab: int
    batch_tokens: int
    target_tokens: int
    learning_rate: float
    trl_variants: list[dict[str, Any]]
    max_seq_length: int = 1024
    ours_env: dict[str, str] = field(default_factory=dict)
    ablations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # name, spec changes (env: knobs)


def cpu_suite(smoke: bool, ablations: bool) -> Suite:
    return Suite(
        mode="cpu",
        shape="smoke-llama" if smoke else "tiny-llama-7m",
        device="cpu",
        dtype="float32",
        rows=64 if smoke else 2000,
        tokenizer_vocab=512 if smoke else 8192,
        batch_tokens=1024 if smoke else 8192,
        target_tokens=3 * 1024 if smoke else 160_000,
        learning_rate=2e-3,
        trl_variants=[
            {"name": "trl-padded", "packing": False, "sampling": "random", "micro_batch": 8},
            {"name": "trl-grouped", "packing": False, "sampling": "group_by_length", "micro_batch": 8},
            {"name": "trl-packed", "packing": True, "pack_length": 2048},
        ],
        ablations=[
            ("ours-no-fused-lora", {"env": {"FINETUNE_DISABLE_SPEEDUPS": "fused_lora"}}),
            ("ours-no-chunked-loss", {"env": {"FINETUNE_DISABLE_SPEEDUPS": "chunked_loss"}}),
            ("ours-no-speedups", {"env": {"FINETUNE_DISABLE_SPEEDUPS": "fused_lora,chunked_loss"}}),
            ("ours-packing-on", {"env": {"FINETUNE_PACKING": "on"}}),
            ("ours-micro-1024", {"env": {"FINETUNE_MICRO_BATCH_TOKENS": "1024"}}),
            ("ours-micro-4096", {"env": {"FINETUNE_MICRO_BATCH_TOKENS": "4096"}}),
            ("ours-checkpointing-on", {"gradient_checkpointing": "on"}),
        ]
        if ablations
        else [],
    )


GPU_SHAPES = ("llama-3.2-1b", "llama-3.1-8b")


def gpu_suites(smoke: bool, shapes: Sequence[str] = GPU_SHAPES) -> list[Suite]:
    """Llama-3.2-1B and Llama-3.1-8B shapes; the smoke version runs the same code with a tiny shape on the CPU."""
    suites = []
    for shape, tokens, padded_rows in (("llama-3.2-1b", 400_000, 8), ("llama-3.1-8b", 128_000, None)):
        if shape not in shapes:
            continue
        variants: list[dict[str, Any]] = [{"name": "trl-packed", "packing": True, "pack_length": 4096}]
        if padded_rows:
            variants.append({"name": "trl-padded", "packing": False, "sampling": "random", "micro_batch": padded_rows})
        suites.append(
            Suite(
                mode="gpu",
                shape="smoke-llama" if smoke else shape,
                device="cpu" if smoke else "cuda",
                dtype="float32" if smoke else "bfloat16",
                rows=64 if smoke else 3000,
                tokenizer_vocab=512 if smoke else 8192,
                batch_tokens=1024 if smoke else 16384,
                target_tokens=3 * 1024 if smoke else tokens,
                learning_rate=1e-3,
                # One 4096-token row per forward/backward pass for both (sequence 4096, packed).
                ours_env={"FINETUNE_MICRO_BATCH_TOKENS": "1024" if smoke else "4096"},
                trl_variants=variants,
            )
        )
        if smoke:
            break
    return suites


# ---------------------------------------------------------------------------------------------
# running


def run_suite(
    suite: Suite,
    work: Path,
    *,
    rounds: int = 1,
    threads: int | None = None,
    windows: int = 8,
    only: set[str] | None = None,
    tolerance: float = 0.03,
    peak_tflops: float = H100_SXM_BF16_DENSE_TFLOPS,
) -> dict[str, Any]:
    started = time.monotonic()
    workload = _build_workload(suite, work / "workloads")
    lengths = workload.row_tokens
    print(
        f"[{suite.shape}] {workload.parameters / 1e6:,.1f}M parameters, vocabulary {workload.vocab_size}; "
        f"{workload.rows} rows of {lengths['min']}-{lengths['max']} tokens (mean {lengths['mean']}, "
        f"median {lengths['median']}); {suite.batch_tokens} tokens per step, {suite.target_tokens:,} per run",
        flush=True,
    )
    base = {
        "device": suite.device,
        "threads": threads,
        "windows": windows,
        "model_dir": str(workload.model_dir),
        "train_jsonl": str(workload.train_jsonl),
        "heldout_jsonl": str(workload.heldout_jsonl),
        "train_tokens_json": str(workload.train_tokens_json),
        "heldout_tokens_json": str(workload.heldout_tokens_json),
        "lora": LORA,
        "learning_rate": suite.learning_rate,
        "batch_tokens": suite.batch_tokens,
        "max_seq_length": suite.max_seq_length,
        "seed": 0,
    }
    specs = [
        _spec(base, "ours", "ours", suite.target_tokens, env=suite.ours_env),
        *(_trl_spec(base, variant, suite, lengths["mean"]) for variant in suite.trl_variants),
        *(
            {
                **_spec(base, name, "ours", suite.target_tokens),
                **changes,
                "env": {**suite.ours_env, **changes.get("env", {})},
            }
            for name, changes in suite.ablations
        ),
    ]
    specs = [spec for spec in specs if only is None or spec["name"] in only]
    runs: dict[str, list[dict[str, Any]]] = {}
    for number in range(rounds):
        # Ours first (TRL stops at its token count); the others in alternating order, round by round.
        order = specs if number % 2 == 0 else specs[:1] + specs[:0:-1]
        for spec in order:
            if spec["trainer"] == "trl" and runs.get("ours") and "tokens" in runs["ours"][-1]:
                spec = {**spec, "target_tokens": runs["ours"][-1]["tokens"]}  # equal tokens
            result = _run_with_memory_fallback(spec, work / f"round-{number}" / spec["name"])
            runs.setdefault(spec["name"], []).append(result)
            _progress(result)
    seconds = time.monotonic() - started
    return summarise(suite, workload, runs, seconds=seconds, tolerance=tolerance, peak_tflops=peak_tflops)


def _build_workload(suite: Suite, root: Path) -> Workload:
    """In a process of its own: a model initialised on the GPU must leave no memory held in this one."""
    command = [sys.executable, "-m", "benchmarks.workloads", "--root", str(root), "--shape", suite.shape]
    command += ["--rows", str(suite.rows), "--tokenizer-vocab", str(suite.tokenizer_vocab)]
    command += ["--device", suite.device, "--dtype", suite.dtype]
    built = subprocess.run(command, cwd=REPO, env=_worker_env(), capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise SystemExit(f"building the {suite.shape} workload failed:\n{built.stderr[-3000:]}")
    return Workload.from_json(json.loads(built.stdout.strip().splitlines()[-1]))


def _worker_env() -> dict[str, str]:
    path = [str(REPO), *map(str, SOURCE_DIRS), os.environ.get("PYTHONPATH")]  # works without an install too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    for knob in ("FINETUNE_DISABLE_SPEEDUPS", "FINETUNE_PACKING", "FINETUNE_MICRO_BATCH_TOKENS"):
        env.pop(knob, None)  # a run gets only what its spec says
    return env


def _spec(base: dict[str, Any], name: str, trainer: str, target: int, *, env: dict[str, str] | None = None):
    return {**base, "name": name, "trainer": trainer, "target_tokens": target, "env": dict(env or {})}


def _trl_spec(base: dict[str, Any], variant: dict[str, Any], suite: Suite, mean_row: float) -> dict[str, Any]:
    """TRL's batch settings for the same token budget per optimizer step."""
    if variant["packing"]:
        pack = min(variant["pack_length"], suite.batch_tokens)
        options = {
            "packing": True,
            "micro_batch": 1,
            "accumulation": max(1, round(suite.batch_tokens / pack)),
            "max_length": pack,
        }
    else:
        examples = max(1, round(suite.batch_tokens / mean_row))  # rows per step with batch_tokens on average
        micro = min(variant["micro_batch"], examples)
        options = {
            "packing": False,
            "micro_batch": micro,
            "accumulation": max(1, round(examples / micro)),
            "max_length": suite.max_seq_length,
            "sampling": variant["sampling"],
        }
    options["max_steps"] = 100 * max(1, suite.target_tokens // suite.batch_tokens)  # it stops by tokens first
    return {**_spec(base, variant["name"], "trl", suite.target_tokens), "trl": options}


def _run_with_memory_fallback(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """A run; one that ran out of GPU memory runs again with gradient checkpointing (and says so)."""
    result = _run_worker(spec, work)
    if "error" in result and any("out of memory" in line for line in result["log_tail"]):
        result = _run_worker({**spec, "gradient_checkpointing": "on"}, work)
        result["note"] = "out of memory without gradient checkpointing: ran with it"
    return result


def _run_worker(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec = {**spec, "work_dir": str(work)}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    env = _worker_env()
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    log = work / "worker.log"
    with log.open("w") as output:
        process = subprocess.run(
            [sys.executable, "-m", "benchmarks.runners", str(work / "spec.json"), str(work / "result.json")],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if process.returncode != 0 or not (work / "result.json").is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        return {
            "name": spec["name"],
            "trainer": spec["trainer"],
            "error": f"exit {process.returncode}",
            "log_tail": tail,
        }
    return json.loads((work / "result.json").read_text())


def _progress(result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"  {result['name']:<22} FAILED ({result['error']}):", *result["log_tail"][-5:], sep="\n    ", flush=True)
        return
    print(
        f"  {result['name']:<22} {result['tokens_per_second']:>10,.0f} tokens/s  {result['tokens']:>9,} tokens  "
        f"held-out loss {result['heldout_loss']:.4f}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# results


def summarise(
    suite: Suite,
    workload: Workload,
    runs: dict[str, list[dict[str, Any]]],
    *,
    seconds: float,
    tolerance: float = 0.03,
    peak_tflops: float = H100_SXM_BF16_DENSE_TFLOPS,
) -> dict[str, Any]:
    merged = {name: _merge_rounds(results) for name, results in runs.items()}
    for result in merged.values():
        if "error" not in result:
            result["step_tokens"] = _step_tokens(result, suite.batch_tokens)
            if suite.mode == "gpu":
                result["mfu"] = mfu(result["tokens_per_second"], workload, suite.shape, peak_tflops)
    trl = {name: r for name, r in merged.items() if r.get("trainer") == "trl" and "error" not in r}
    eligible = {name: r for name, r in trl.items() if r["step_tokens"]["same_budget"]}
    baseline = max(eligible, key=lambda name: eligible[name]["tokens_per_second"]) if eligible else None
    ours = merged.get("ours", {})
    if "error" not in ours and ours:
        for result in merged.values():
            if "error" not in result:
                result["ours_speedup"] = round(ours["tokens_per_second"] / result["tokens_per_second"], 3)
    return {
        "mode": suite.mode,
        "shape": suite.shape,
        "device": next((r["device_name"] for r in merged.values() if "device_name" in r), suite.device),
        "model": {"parameters": workload.parameters, "vocab_size": workload.vocab_size, "config": SHAPES[suite.shape]},
        "data": {"rows": workload.rows, "row_tokens": workload.row_tokens, "tokenizer_vocab": workload.tokenizer_vocab},
        "settings": {
            "lora": {**LORA, "target_modules": "all-linear"},
            "batch_tokens": suite.batch_tokens,
            "target_tokens": suite.target_tokens,
            "learning_rate": suite.learning_rate,
            "schedule": "constant, no warm-up; AdamW (0.9, 0.999), eps 1e-8, no weight decay, clip 1.0",
            "dtype": suite.dtype,
            "ours_env": suite.ours_env,
            "loss_tolerance": tolerance,
        },
        "runs": merged,
        "baseline": baseline,
        "comparison": compare(ours, merged.get(baseline, {}), tolerance),
        "against_every_trl_run": {name: compare(ours, result, tolerance) for name, result in trl.items()},
        "seconds": round(seconds, 1),
    }


def _merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds: the median throughput; everything else from the first round that did not fail."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    merged = dict(good[0])
    if len(good) > 1:
        merged["tokens_per_second"] = round(statistics.median(r["tokens_per_second"] for r in good), 1)
        merged["rounds_tokens_per_second"] = [r["tokens_per_second"] for r in good]
    return merged


def _step_tokens(result: dict[str, Any], budget: int) -> dict[str, Any]:
    """Real tokens per optimizer step, and whether they keep the step budget (a condition of a fair baseline)."""
    tokens = [step[1] for step in result["step_log"]]
    mean = statistics.mean(tokens)
    spread = statistics.pstdev(tokens) / mean if mean else 0.0
    same = abs(mean / budget - 1) <= STEP_BUDGET_MEAN_TOLERANCE and spread <= STEP_BUDGET_MAX_SPREAD
    return {
        "mean": round(mean),
        "min": min(tokens),
        "max": max(tokens),
        "spread": round(spread, 3),
        "same_budget": same,
    }


def compare(ours: dict[str, Any], other: dict[str, Any], tolerance: float) -> dict[str, Any]:
    if not ours or not other or "error" in ours or "error" in other:
        return {"ratio": None, "counts": False, "quality": "not compared: a run is missing or failed"}
    gap = abs(ours["heldout_loss"] - other["heldout_loss"]) / other["heldout_loss"]
    train_gap = (
        abs(ours["train_loss_last_quarter"] - other["train_loss_last_quarter"]) / other["train_loss_last_quarter"]
    )
    counts = gap <= tolerance
    return {
        "ratio": round(ours["tokens_per_second"] / other["tokens_per_second"], 3),
        "heldout_loss_gap": round(gap, 4),
        "train_loss_gap": round(train_gap, 4),
        "token_count_gap": round(abs(ours["tokens"] - other["tokens"]) / other["tokens"], 4),
        "counts": counts,
        "quality": "equal loss: the speed ratio counts"
        if counts
        else f"held-out losses differ by {gap:.1%} (more than {tolerance:.0%}): the speed ratio does NOT count",
    }


def mfu(tokens_per_second: float, workload: Workload, shape: str, peak_tflops: float) -> dict[str, Any]:
    """Model FLOPs utilisation: (4·N + 6·N_lora) per token plus causal attention, at the measured tokens/s.

    N counts the weights that multiply activations (not the embedding lookup, the output head
    included). Frozen weights need the input gradient only (forward 2N, backward 2N); LoRA weights
    their weight gradient too. Attention runs within each example (packing keeps examples apart): a
    causal sequence of length L costs 2·L²·heads·head_dim per layer forward and three times that
    to train, so a token costs 6·layers·heads·head_dim·(sum L² / sum L).
    """
    config = SHAPES[shape]
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config["num_key_value_heads"] * head_dim
    inter = config["intermediate_size"]
    embedding = workload.vocab_size * hidden
    weights = workload.parameters - (0 if config.get("tie_word_embeddings") else embedding)
    adapted = (hidden, heads * head_dim), (hidden, kv), (hidden, kv), (heads * head_dim, hidden)
    adapted += (hidden, inter), (hidden, inter), (inter, hidden)
    lora = LORA["rank"] * layers * sum(fan_in + fan_out for fan_in, fan_out in adapted)
    rows = json.loads(Path(workload.train_tokens_json).read_text())
    lengths = [len(row["input_ids"]) for row in rows]
    mean_context = sum(length * length for length in lengths) / sum(lengths)
    per_token = 4 * weights + 6 * lora + 6 * layers * heads * head_dim * mean_context
    achieved = per_token * tokens_per_second
    return {
        "flops_per_token": round(per_token),
        "achieved_tflops": round(achieved / 1e12, 3),
        "peak_tflops": peak_tflops,
        "mfu": round(achieved / (peak_tflops * 1e12), 4),
    }


# ---------------------------------------------------------------------------------------------
# output


def table(summary: dict[str, Any]) -> str:
    gpu = summary["mode"] == "gpu"
    header = ["run", "setup", "tokens/s", "ours ÷ run", "step tokens (min-max)", "peak MiB", "tokens"]
    header += ["train loss", "held-out loss"]
    if gpu:
        header.insert(4, "MFU")
    lines = [header]
    for name, result in summary["runs"].items():
        if "error" in result:
            lines.append([name, f"FAILED: {result['error']}", *[""] * (len(header) - 2)])
            continue
        steps = result["step_tokens"]
        memory = result["peak_gpu_mib"] if result.get("peak_gpu_mib") is not None else result["peak_rss_mib"]
        label = name + (" [baseline]" if name == summary["baseline"] else "")
        if result["trainer"] == "trl" and not steps["same_budget"]:
            label += " [not eligible]"
        row = [
            label,
            _setup(result),
            f"{result['tokens_per_second']:,.0f}",
            f"{result.get('ours_speedup', float('nan')):.2f}",
            f"{steps['mean']:,} ({steps['min']:,}-{steps['max']:,})",
            f"{memory:,.0f}",
            f"{result['tokens']:,}",
            f"{result['train_loss_last_quarter']:.4f}",
            f"{result['heldout_loss']:.4f}",
        ]
        if gpu:
            row.insert(4, f"{result['mfu']['mfu']:.1%}")
        lines.append(row)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    model = summary["model"]
    on_cuda = any(r.get("peak_gpu_mib") is not None for r in summary["runs"].values())
    memory_kind = "torch peak allocated" if on_cuda else "peak RSS"
    title = (
        f"{summary['shape']}: {model['parameters']:,} parameters, vocabulary {model['vocab_size']:,}, on "
        f"{summary['device']}; {summary['settings']['batch_tokens']:,} tokens per step; memory = {memory_kind}"
    )
    return "\n".join([title, *rendered, *verdict(summary)])


def verdict(summary: dict[str, Any]) -> list[str]:
    comparison = summary["comparison"]
    lines = []
    if comparison.get("ratio") is None:
        lines.append(f"ours / TRL-best: {comparison['quality']}")
    else:
        lines.append(
            f"ours / TRL-best ({summary['baseline']}) = {comparison['ratio']:.2f}x at "
            f"{comparison['heldout_loss_gap']:.1%} held-out loss gap (train loss gap {comparison['train_loss_gap']:.1%}): "
            f"{comparison['quality']}"
        )
    for name, other in summary["against_every_trl_run"].items():
        steps = summary["runs"][name]["step_tokens"]
        if not steps["same_budget"] and other.get("ratio") is not None:
            lines.append(
                f"not eligible as baseline: {name} ({other['ratio']:.2f}x, held-out loss gap "
                f"{other['heldout_loss_gap']:.1%}) trains on {steps['min']:,}-{steps['max']:,} tokens per step "
                f"(spread {steps['spread']:.2f}) instead of about {summary['settings']['batch_tokens']:,}"
            )
    return lines


def _setup(result: dict[str, Any]) -> str:
    details = result.get("details", {})
    checkpointing = ", checkpointing" if details.get("gradient_checkpointing") or result.get("note") else ""
    if result["trainer"] == "ours":
        layout = "packed" if details.get("packing") else "length-grouped"
        return f"{layout}, {details.get('micro_batch_tokens')}-token passes, {details.get('attention')}{checkpointing}"
    if details.get("packing"):
        return f"packed {details['max_length']} x{details['accumulation']}, {details.get('attention')}{checkpointing}"
    return f"{details.get('sampling')}, {details.get('micro_batch')} rows x{details.get('accumulation')}{checkpointing}"


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="Llama-3.2-1B and 3.1-8B shapes on a CUDA GPU")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps, on the CPU")
    parser.add_argument(
        "--shape", action="append", choices=GPU_SHAPES, help="with --gpu: only this shape (repeatable; default: both)"
    )
    parser.add_argument("--ablations", action="store_true", help="also run ours with each speed-up off (CPU)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run; the median throughput counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--windows", type=int, default=8, help="timed windows per run")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens per run (default: the mode's)")
    parser.add_argument("--only", default=None, help="comma-separated run names (ours, trl-packed, ...)")
    parser.add_argument("--loss-tolerance", type=float, default=0.03)
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS, help="bf16 dense, for MFU")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--work", type=Path, default=None, help="models, data and run directories (default: OUT/work)")
    args = parser.parse_args(argv)

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"the benchmark needs {', '.join(missing)} (pip install -e '.[trainer,bench]')", file=sys.stderr)
        return 2
    without_trl = [name for name in NEEDED_BY_TRL if importlib.util.find_spec(name) is None]
    if without_trl:
        print(f"WARNING: {', '.join(without_trl)} missing: our trainer runs alone, without TRL", file=sys.stderr)
    if args.gpu and not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs a CUDA device (--gpu --smoke runs the GPU mode's code on the CPU)", file=sys.stderr)
            return 2

    suites = gpu_suites(args.smoke, args.shape or GPU_SHAPES) if args.gpu else [cpu_suite(args.smoke, args.ablations)]
    only = set(args.only.split(",")) if args.only else None
    work = args.work or args.out / "work"
    summaries = []
    for suite in suites:
        if args.tokens:
            suite.target_tokens = args.tokens
        if without_trl:
            suite.trl_variants = []
        summary = run_suite(
            suite,
            work,
            rounds=args.rounds,
            threads=args.threads,
            windows=args.windows,
            only=only,
            tolerance=args.loss_tolerance,
            peak_tflops=args.peak_tflops,
        )
        summaries.append(summary)
        print(f"\n{table(summary)}\n", flush=True)
    mode = "gpu" if args.gpu else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"trainer-{mode}{'-smoke' if args.smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"mode": mode, "smoke": args.smoke, "suites": summaries}, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
