"""One trainer, one run, in a process of its own: ``python -m benchmarks.runners SPEC.json RESULT.json``.

A fresh process per run keeps the runs apart (peak RSS is the run's own, no allocator, thread-pool,
Accelerate singleton or compile cache carries over) and lets the driver survive a crash or an
out-of-memory in one of them.

- ``ours`` drives our trainer through its real entry point, ``finetune_trainer.run.run`` with a
  resolved configuration file: data pipeline, batch planning, the training loop, evaluation and the
  published adapter, the code a pod runs under its launcher. A TrainingHooks object timestamps
  every optimizer step.
- ``trl`` is TRL's SFTTrainer with a PEFT LoraConfig, fed the very same token ids (pre-tokenized by
  our tokenizer code), with a callback that timestamps every optimizer step and stops at the same
  token count as ours.

Both end with the same quality check: the mean completion loss on held-out rows, computed by one
function here, on the adapter each trainer produced.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .measure import StepRecord, loss_at_tokens, peak_rss_mib, throughput


def main(argv: list[str] | None = None) -> int:
    spec_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    for key, value in spec.get("env", {}).items():
        os.environ[key] = str(value)
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    runner = {"ours": run_ours, "trl": run_trl}[spec["trainer"]]
    result = runner(spec)
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# ours


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from finetune_trainer.report import TrainingHooks
    from finetune_trainer.run import run

    work = Path(spec["work_dir"])
    for name in ("scratch", "cache", "credentials", "pvc"):
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(
        FINETUNE_SCRATCH_DIR=str(work / "scratch"),
        FINETUNE_CACHE_DIR=str(work / "cache"),
        FINETUNE_CREDENTIALS_DIR=str(work / "credentials"),
        FINETUNE_PVC_ROOT=str(work / "pvc"),
        FINETUNE_TERMINATION_LOG=str(work / "termination-log"),
    )
    on_gpu = spec["device"] == "cuda"

    class StepClock(TrainingHooks):
        def __init__(self) -> None:
            self.started = 0.0
            self.steps: list[StepRecord] = []

        def on_start(self, progress) -> None:
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.started = time.perf_counter()

        def on_step(self, metrics) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            self.steps.append(StepRecord(time.perf_counter(), metrics.tokens, metrics.loss))

    steps = max(1, round(spec["target_tokens"] / spec["batch_tokens"]))
    artifact = work / "artifact"
    config = {
        "job": {"namespace": "bench", "name": spec["name"], "uid": f"bench-{spec['name']}"},
        "model": {"uri": f"file://{spec['model_dir']}"},
        "method": {"type": "lora", "lora": _lora_api(spec["lora"])},
        "objective": "sft",
        "data": {
            "train": [{"uri": f"file://{spec['train_jsonl']}"}],
            "eval": {"uri": f"file://{spec['heldout_jsonl']}"},
        },
        "training": {
            "learningRate": spec["learning_rate"],
            "maxSteps": steps,
            "batchTokens": spec["batch_tokens"],
            "maxSeqLength": spec["max_seq_length"],
            "warmupRatio": 0.0,
            "scheduler": "constant",
            "weightDecay": 0.0,
            "maxGradNorm": 1.0,
            "precision": "bf16" if on_gpu else "fp32",
            "gradientCheckpointing": spec.get("gradient_checkpointing", "auto"),
            "checkpointEverySteps": steps + 1,  # one checkpoint, after the timed steps
            "seed": spec["seed"],
        },
        "evaluation": {"gate": {"mode": "off"}},
        "output": {
            "checkpointsUri": f"file://{work / 'checkpoints'}",
            "artifactUri": f"file://{artifact}",
            "adapterName": "bench",
            "version": "v1",
        },
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config, indent=1))
    clock = StepClock()
    report = run(config_path, hooks=[clock])
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None
    if on_gpu:  # the trained model goes before the held-out check loads the base model again
        gc.collect()
        torch.cuda.empty_cache()
    details = dict(report.device)
    task = report.evaluation.task if report.evaluation else None
    # Our own evaluator's number for the same held-out rows: a cross-check of the shared function below.
    details["trainer_eval_loss"] = task.adapter_loss if task else None
    quality = heldout_loss_of_adapter(spec, artifact)
    return _result(spec, clock.started, clock.steps, peak_gpu, quality, details=details)


def _lora_api(lora: dict[str, Any]) -> dict[str, Any]:
    return {"rank": lora["rank"], "alpha": lora["alpha"], "dropout": lora["dropout"], "targetModules": ["all-linear"]}


# ---------------------------------------------------------------------------------------------
# TRL


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib.util

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    on_gpu = spec["device"] == "cuda"
    options = spec["trl"]
    rows = json.loads(Path(spec["train_tokens_json"]).read_text())
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    attention = "sdpa"
    if on_gpu and importlib.util.find_spec("flash_attn"):
        attention = "flash_attention_2"
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.bfloat16 if on_gpu else torch.float32, attn_implementation=attention
    )
    model.config.use_cache = False
    lora = spec["lora"]
    peft_config = LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    packing = bool(options["packing"])
    args = SFTConfig(
        output_dir=str(Path(spec["work_dir"]) / "trl-out"),
        per_device_train_batch_size=options["micro_batch"],
        gradient_accumulation_steps=options["accumulation"],
        max_steps=options["max_steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        packing=packing,
        packing_strategy="bfd",
        max_length=options["max_length"],
        completion_only_loss=True,
        train_sampling_strategy=options.get("sampling", "random"),
        gradient_checkpointing=spec.get("gradient_checkpointing") == "on",  # TRL defaults to on; off is faster
        bf16=on_gpu,
        use_cpu=not on_gpu,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
        data_seed=spec["seed"],
    )

    class TokenCountingSFTTrainer(SFTTrainer):
        real_tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            # Padding-free batches have no mask and no padding: every position is a real token.
            self.real_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.ends: list[tuple[float, int]] = []  # (time, cumulative real tokens)
            self.losses: dict[int, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if on_gpu:
                torch.cuda.synchronize()
            self.ends.append((time.perf_counter(), trainer.real_tokens))
            if trainer.real_tokens >= spec["target_tokens"]:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

    clock = StepClock()
    trainer = TokenCountingSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    trainer.train()
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None
    steps, previous = [], 0
    for number, (ended, cumulative) in enumerate(clock.ends, start=1):
        steps.append(StepRecord(ended, cumulative - previous, clock.losses.get(number, math.nan)))
        previous = cumulative
    quality = heldout_loss(trainer.model, spec)
    details = {"attention": attention, "packing": packing, "gradient_checkpointing": args.gradient_checkpointing}
    details.update(options)
    return _result(spec, clock.started, steps, peak_gpu, quality, details=details)


# ---------------------------------------------------------------------------------------------
# shared


def heldout_loss_of_adapter(spec: dict[str, Any], adapter_dir: Path) -> float:
    """The held-out loss of the base model with the adapter our trainer published."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    on_gpu = spec["device"] == "cuda"
    base = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.bfloat16 if on_gpu else torch.float32, attn_implementation="sdpa"
    ).to(spec["device"])
    return heldout_loss(PeftModel.from_pretrained(base, adapter_dir), spec)


def heldout_loss(model, spec: dict[str, Any]) -> float:
    """Mean loss per completion token over the held-out rows, one row at a time (no padding, exact)."""
    import torch
    import torch.nn.functional as F

    rows = json.loads(Path(spec["heldout_tokens_json"]).read_text())
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            targets = ids[0, 1:]
            mask = torch.tensor(row["completion_mask"][1:], dtype=torch.bool, device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            total += float(F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"))
            count += int(mask.sum())
    return total / max(count, 1)


def _result(spec, started, steps, peak_gpu, quality, *, details) -> dict[str, Any]:
    import torch

    measured = throughput(started, steps, windows=spec.get("windows", 8))
    tokens = sum(step.tokens for step in steps)
    on_gpu = spec["device"] == "cuda"
    return {
        "name": spec["name"],
        "trainer": spec["trainer"],
        "device_name": torch.cuda.get_device_name() if on_gpu else f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "steps": len(steps),
        "tokens": tokens,
        "tokens_per_second": round(measured.median_tokens_per_second, 1),
        "throughput": measured.to_json(),
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": round(peak_gpu / 2**20, 1) if peak_gpu is not None else None,
        "first_loss": steps[0].loss,
        "train_loss_last_quarter": round(loss_at_tokens(steps, spec["target_tokens"]), 4),
        "heldout_loss": round(quality, 4),
        "step_log": [[round(s.ended - started, 4), s.tokens, s.loss] for s in steps],
        "details": details,
    }


if __name__ == "__main__":
    raise SystemExit(main())
