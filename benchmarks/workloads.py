"""The models and data of the benchmark: Llama shapes, a synthetic tokenizer and SFT rows, all built offline.

Every model is randomly initialised from a fixed seed and written as a Hub-style directory
(config.json, safetensors, tokenizer), so our trainer loads it through its real code path and TRL
loads the very same files. The GPU shapes copy the published configurations of Llama-3.2-1B and
Llama-3.1-8B (inline, no hub access); their tokenizer is the synthetic one, smaller than the
128,256-entry vocabulary, which only leaves some embedding rows unused: the output head and the
loss still span the whole vocabulary, as in the real models.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .synthetic import Language, make_rows, tokenize_rows, write_jsonl

LLAMA3_ROPE_1B = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}
LLAMA3_ROPE_8B = {**LLAMA3_ROPE_1B, "factor": 8.0}

SHAPES: dict[str, dict[str, Any]] = {
    # The CPU benchmark's model: a small Llama with a vocabulary large enough for the output head to matter.
    "tiny-llama-7m": {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    # Smoke tests: seconds on a CPU.
    "smoke-llama": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    # The GPU check's full fine-tuning (benchmarks/gpu_check.py): 88M parameters with the 8192-token vocabulary,
    # small enough that its fp32 weights and AdamW state checkpoint in seconds.
    "llama-88m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.2-1B config.json
    "llama-3.2-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": LLAMA3_ROPE_1B,
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": LLAMA3_ROPE_8B,
        "tie_word_embeddings": False,
    },
}


@dataclass(frozen=True)
class Workload:
    """Files both trainers read: the model directory, training rows (JSONL and pre-tokenized) and held-out rows."""

    model_dir: Path
    train_jsonl: Path
    train_tokens_json: Path  # input_ids + completion_mask per row, for the TRL side
    heldout_jsonl: Path  # our trainer's own eval set (so both train on exactly the same rows)
    heldout_tokens_json: Path  # the shared quality check
    parameters: int
    vocab_size: int
    tokenizer_vocab: int
    rows: int
    row_tokens: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**{key: Path(v) if key.endswith(("_dir", "_jsonl", "_json")) else v for key, v in data.items()})


def build_workload(
    root: Path,
    shape: str,
    *,
    rows: int,
    heldout_rows: int = 64,
    tokenizer_vocab: int = 8192,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> Workload:
    """Tokenizer, model and data under ``root``; cached there by (shape, rows, vocab, seed)."""
    import statistics

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hack.tinymodels import build_tokenizer

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    key = f"{shape}-v{tokenizer_vocab}-r{rows}-s{seed}"
    model_dir = root / key / "model"
    data_dir = root / key / "data"
    manifest = root / key / "workload.json"
    if manifest.is_file():
        return Workload.from_json(json.loads(manifest.read_text()))

    language = Language.make(seed, words=6000 if tokenizer_vocab > 2048 else 400)
    tokenizer = build_tokenizer(language.sentences(seed + 1, 6000), tokenizer_vocab)
    train = make_rows(language, tokenizer, count=rows, seed=seed + 2)
    heldout = make_rows(language, tokenizer, count=heldout_rows, seed=seed + 3)
    train_tokens = tokenize_rows(tokenizer, train)
    heldout_tokens = tokenize_rows(tokenizer, heldout)

    write_jsonl(data_dir / "train.jsonl", train)
    write_jsonl(data_dir / "heldout.jsonl", heldout)
    (data_dir / "train_tokens.json").write_text(json.dumps(train_tokens))
    (data_dir / "heldout_tokens.json").write_text(json.dumps(heldout_tokens))

    settings = dict(SHAPES[shape])
    settings.setdefault("vocab_size", len(tokenizer))
    config = LlamaConfig(
        **settings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):  # an 8B model initialises in seconds on a GPU, in minutes on a CPU
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir, safe_serialization=True)
    del model
    tokenizer.save_pretrained(model_dir)

    lengths = [len(row["input_ids"]) for row in train_tokens]
    workload = Workload(
        model_dir=model_dir,
        train_jsonl=data_dir / "train.jsonl",
        train_tokens_json=data_dir / "train_tokens.json",
        heldout_jsonl=data_dir / "heldout.jsonl",
        heldout_tokens_json=data_dir / "heldout_tokens.json",
        parameters=parameters,
        vocab_size=config.vocab_size,
        tokenizer_vocab=len(tokenizer),
        rows=rows,
        row_tokens={
            "mean": round(statistics.mean(lengths), 1),
            "median": statistics.median(lengths),
            "p90": sorted(lengths)[int(0.9 * len(lengths))],
            "min": min(lengths),
            "max": max(lengths),
            "total": sum(lengths),
        },
    )
    manifest.write_text(json.dumps(workload.to_json(), indent=1))
    return workload


def main(argv: list[str] | None = None) -> int:
    """Build a workload in a process of its own (a GPU-initialised model must not hold memory in the driver)."""
    parser = argparse.ArgumentParser(description="Build a benchmark workload; prints its JSON description.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--tokenizer-vocab", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    workload = build_workload(
        args.root,
        args.shape,
        rows=args.rows,
        tokenizer_vocab=args.tokenizer_vocab,
        device=args.device,
        dtype=args.dtype,
    )
    print(json.dumps(workload.to_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
