"""The token store against tokenizing in memory: peak memory, time to the first step, writing speed.

For raw-text JSONL corpora of several sizes (generated; 100 MB, 500 MB and 2 GB by default) the
trainer runs continued pre-training of the tiny model for a few steps three times, each a fresh
process: without the store (FINETUNE_TOKEN_STORE=off, the path before the store), with the store
built by this run, and with the store already present (a second run on the same cache; the operator's
pods get a fresh cache each, so its retries and resumes are the "built" case). Measured per run:
the peak resident memory of the trainer's process tree (proportional set size, so that pages the
forked store workers share with the trainer count once; sampled every 50 ms), the seconds from the process's start to the data being ready (its batch plan) and to
its first optimizer step (the model is small, so a step costs little next to the data). Then the store of
the smallest corpus is written in-process by one process and by every core, in MB/s of JSONL.
Last, a chat SFT corpus of 200k rows goes through the same three runs.

    python -m benchmarks.data [--sizes 100,500,2000] [--chat-rows 200000] [--out bench-results/data.json]

Timings depend on the machine and what else runs on it: the JSON says how many cores there were.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.synthetic import Language

MIB = 1 << 20
STEPS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,2000", help="raw-text corpus sizes in MB, comma-separated")
    parser.add_argument("--chat-rows", type=int, default=200_000, help="rows of the chat SFT corpus (0: skip)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-data"), help="corpora, model and runs")  # noqa: S108 scratch for generated corpora
    parser.add_argument("--out", type=Path, default=Path("bench-results/data.json"))
    parser.add_argument("--skip-write-speed", action="store_true")
    parser.add_argument(
        "--memory-up-to-mb",
        type=int,
        default=500,
        help="run the in-memory baseline only for corpora up to this size (it holds ~5 bytes per byte of text)",
    )
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    language = Language.make(seed=1)
    model = _tiny_model(args.work / "model", language)
    results: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "steps": STEPS, "text": [], "chat": None}
    sizes = [int(size) for size in args.sizes.split(",") if size]
    for size in sizes:
        corpus = _text_corpus(args.work / f"text-{size}mb.jsonl", size * 1_000_000, language)
        in_memory = size <= args.memory_up_to_mb
        entry = {"corpus_mb": size, **_three_runs(args.work, model, corpus, "pretrain", f"text{size}", in_memory)}
        results["text"].append(entry)
        _save(args.out, results)
        _print(entry)
    if sizes and not args.skip_write_speed:
        results["write_speed"] = _write_speed(args.work, model, args.work / f"text-{sizes[0]}mb.jsonl")
        _save(args.out, results)
        print(json.dumps(results["write_speed"]))
    if args.chat_rows:
        corpus = _chat_corpus(args.work / f"chat-{args.chat_rows}.jsonl", args.chat_rows, language)
        entry = {"rows": args.chat_rows, **_three_runs(args.work, model, corpus, "sft", "chat")}
        results["chat"] = entry
        _save(args.out, results)
        _print(entry)
    return 0


def _three_runs(
    work: Path, model: Path, corpus: Path, objective: str, name: str, in_memory: bool = True
) -> dict[str, Any]:
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    runs: dict[str, Any] = {} if in_memory else {"memory": "skipped (--memory-up-to-mb)"}
    for label, store in (("memory", "off"), ("store_built", "on"), ("store_present", "on")):
        if label in runs:
            continue
        runs[label] = _run_trainer(work / "runs" / f"{name}-{label}", model, corpus, objective, cache, store)
    runs["store_bytes"] = sum(path.stat().st_size for path in cache.rglob("*") if path.is_file())
    shutil.rmtree(cache, ignore_errors=True)
    return runs


def _run_trainer(root: Path, model: Path, corpus: Path, objective: str, cache: Path, store: str) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "config.json"
    config.write_text(json.dumps(_config(root, model, corpus, objective)))
    env = {
        **os.environ,
        "FINETUNE_SCRATCH_DIR": str(root / "scratch"),
        "FINETUNE_CACHE_DIR": str(cache),
        "FINETUNE_CREDENTIALS_DIR": str(root / "credentials"),
        "FINETUNE_TERMINATION_LOG": str(root / "termination-log"),
        "FINETUNE_PVC_ROOT": str(root / "pvc"),
        "FINETUNE_METRICS_PORT": "0",
        "FINETUNE_TOKEN_STORE": store,
    }
    started = time.monotonic()
    command = [sys.executable, "-m", "finetune_trainer", "--config", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_step: list[float] = []
    data_ready: list[float] = []  # the "plan" event: data loaded (or the store built/opened), batches planned
    tail: list[str] = []

    def watch() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            tail[:] = [*tail[-20:], line]
            compact = line.replace('": "', '":"')
            if not data_ready and '"msg":"plan"' in compact:
                data_ready.append(time.monotonic() - started)
            if not first_step and '"msg":"step"' in compact:
                first_step.append(time.monotonic() - started)

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    peak = _peak_tree_pss(process)
    reader.join(timeout=10)
    if process.returncode != 0:
        raise RuntimeError(f"the trainer failed ({process.returncode}):\n{''.join(tail)}")
    return {
        "peak_pss_mib": round(peak / MIB),
        "data_ready_s": round(data_ready[0], 1) if data_ready else None,
        "first_step_s": round(first_step[0], 1) if first_step else None,
        "total_s": round(time.monotonic() - started, 1),
    }


def _peak_tree_pss(process: subprocess.Popen) -> int:
    """The largest sum of resident memory (PSS) over the process and all its descendants, until it exits."""
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        total = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    # PSS: pages shared by the forked store workers (torch, the tokenizer) count once in the sum.
                    total += member.memory_full_info().pss
                except psutil.Error:
                    continue
        except psutil.Error:
            break
        peak = max(peak, total)
        time.sleep(0.05)
    process.wait()
    return peak


def _config(root: Path, model: Path, corpus: Path, objective: str) -> dict[str, Any]:
    return {
        "job": {"namespace": "bench", "name": root.name, "uid": f"uid-{root.name}"},
        "model": {"uri": f"file://{model}"},
        "method": {"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}},
        "objective": objective,
        "data": {"train": [{"uri": f"file://{corpus}"}], "eval": {"splitFraction": 0.001}},
        "training": {
            "learningRate": 1e-3,
            "maxSteps": STEPS,
            "batchTokens": 1024,
            "maxSeqLength": 256,
            "warmupRatio": 0.0,
            "checkpointEverySteps": 1000,
            "seed": 1,
        },
        "evaluation": {"gate": {"mode": "off"}, "maxSamples": 64},
        "output": {
            "checkpointsUri": f"file://{root}/out/checkpoints",
            "artifactUri": f"file://{root}/out/artifact",
            "adapterName": "bench",
            "version": "v1",
        },
    }


def _write_speed(work: Path, model: Path, corpus: Path) -> dict[str, Any]:
    """MB/s of JSONL written into a store by one process and by every core (in-process, no trainer)."""
    from finetune_trainer.data.store_build import build_store, worker_count
    from finetune_trainer.data.tokenize import ExampleBuilder
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    builder = ExampleBuilder(tokenizer, max_seq_length=256)
    size = corpus.stat().st_size
    speeds = {}
    for workers in sorted({1, worker_count()}):
        target = work / f"speed-{workers}"
        shutil.rmtree(target, ignore_errors=True)
        started = time.monotonic()
        build_store(
            target,
            key={"tokenizer": {"vocab_size": len(tokenizer)}},
            uri=f"file://{corpus}",
            local_path=corpus,
            format_name="text",
            builder=builder,
            pairs=False,
            vocab_size=len(tokenizer),
            workers=workers,
        )
        seconds = time.monotonic() - started
        speeds[workers] = {"seconds": round(seconds, 1), "mb_per_s": round(size / 1e6 / seconds, 2)}
        shutil.rmtree(target, ignore_errors=True)
    most = max(speeds)
    return {
        "corpus_mb": round(size / 1e6),
        "by_workers": speeds,
        "speedup": round(speeds[most]["mb_per_s"] / speeds[1]["mb_per_s"], 2),
    }


# ---------------------------------------------------------------------------------------------
# data


def _tiny_model(directory: Path, language: Language) -> Path:
    if (directory / "config.json").exists():
        return directory
    from hack.tinymodels import build_tiny_model

    corpus = language.sentences(seed=0, count=2000)
    # Small on purpose: the steps are not what is measured, and must not hide the data's time.
    return build_tiny_model(directory, corpus=corpus, vocab_size=2000)


def _documents(language: Language, count: int = 4000) -> list[str]:
    """A pool of documents of 1-8 KB; corpora draw from it, each copy numbered so no two rows are equal."""
    rng = random.Random(2)
    sentences = language.sentences(seed=3, count=3000)
    return [" ".join(rng.choices(sentences, k=rng.randint(4, 40))) for _ in range(count)]


def _text_corpus(path: Path, size: int, language: Language) -> Path:
    if path.exists() and path.stat().st_size >= size:
        return path
    rng, documents, written = random.Random(size), _documents(language), 0
    with path.open("w", encoding="utf-8") as stream:
        number = 0
        while written < size:
            line = json.dumps({"text": f"Document {number}. {rng.choice(documents)}"}) + "\n"
            stream.write(line)
            written += len(line)
            number += 1
    return path


def _chat_corpus(path: Path, rows: int, language: Language) -> Path:
    if path.exists():
        return path
    rng = random.Random(4)
    sentences = language.sentences(seed=5, count=3000)
    with path.open("w", encoding="utf-8") as stream:
        for number in range(rows):
            question = " ".join(rng.choices(sentences, k=rng.randint(1, 3)))
            answer = " ".join(rng.choices(sentences, k=rng.randint(1, 6)))
            messages = [
                {"role": "user", "content": f"{number}: {question}"},
                {"role": "assistant", "content": answer},
            ]
            stream.write(json.dumps({"messages": messages}) + "\n")
    return path


def _save(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def _print(entry: dict[str, Any]) -> None:
    print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
