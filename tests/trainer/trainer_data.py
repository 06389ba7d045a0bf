"""Data rows and result readers shared by the trainer tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_FACTS = [
    ("What colour is the sky?", "The sky is blue."),
    ("What do cows drink?", "Cows drink water."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What runs pods to completion?", "A Job runs pods to completion."),
    ("What does a low-rank adapter train?", "Two small matrices per layer."),
]


def sft_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [dict(zip(("prompt", "completion"), rng.choice(_FACTS), strict=True)) for _ in range(n)]


def chat_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = rng.choice(_FACTS)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def text_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"text": " ".join(f"{q} {a}" for q, a in rng.sample(_FACTS, 3))} for _ in range(n)]


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        (question, answer), (_, wrong) = rng.sample(_FACTS, 2)
        rows.append({"prompt": question, "chosen": " " + answer, "rejected": " " + wrong})
    return rows


def general_rows(n: int, seed: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A journey of a thousand miles begins with a single step.",
        "The weather today is sunny with a light breeze from the west.",
        "Kubernetes schedules pods onto nodes and retries failed ones.",
        "Numbers: one two three four five six seven eight nine ten.",
    ]
    return [{"text": " ".join(rng.sample(sentences, 3))} for _ in range(n)]


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def artifact_dir(config_path: Path) -> Path:
    return Path(read_config(config_path)["output"]["artifactUri"].removeprefix("file://"))


def checkpoints_dir(config_path: Path) -> Path:
    return Path(read_config(config_path)["output"]["checkpointsUri"].removeprefix("file://"))


def step_losses(config_path: Path) -> list[float]:
    """The training loss of every step, from the artifact's metrics.jsonl."""
    lines = (artifact_dir(config_path) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record["loss"] for record in map(json.loads, lines) if record["kind"] == "step"]
