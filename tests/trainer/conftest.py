"""Fixtures of the trainer tests: a tiny Llama built once per session, data files and trainer configurations.

Everything runs on the CPU without network: the model and tokenizer are built locally
(hack.tinymodels), data is written on the fly, outputs go to file:// (or MinIO) under tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from trainer_data import chat_rows, general_rows, sft_rows, text_rows, write_jsonl

# The test machines have two cores, shared by make test's workers (pytest-xdist sets the count): more threads
# than cores only adds contention, two workers' torch each spinning two OpenMP threads on two cores.
TORCH_THREADS = max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def _corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: it covers the test data, so sequences stay short."""
    lines = []
    for row in sft_rows(40) + chat_rows(20) + text_rows(20) + general_rows(20):
        lines.extend(str(value) for value in row.values() if isinstance(value, str))
    return lines


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 64) with a byte-level BPE tokenizer and a ChatML template."""
    from hack.tinymodels import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), corpus=_corpus(), vocab_size=600)


@pytest.fixture
def trainer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Scratch, cache, credentials and termination-log paths of a run, all inside tmp_path."""
    monkeypatch.setenv("FINETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINETUNE_CREDENTIALS_DIR", str(tmp_path / "credentials"))
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(TORCH_THREADS))
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")  # in-process runs: no /metrics server per test
    monkeypatch.delenv("FINETUNE_EXIT_CODE_DIR", raising=False)
    _reset_accelerate()
    yield tmp_path
    _reset_accelerate()


def _reset_accelerate() -> None:
    # Accelerate keeps its state in process-wide singletons; every in-process run starts afresh.
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


# ---------------------------------------------------------------------------------------------
# data


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def make_job(tiny_model_dir: Path, trainer_env: Path) -> Callable[..., Path]:
    """Writes data files and a resolved trainer configuration under tmp_path; returns the config's path.

    Defaults: LoRA r8 on the tiny model, SFT prompt/completion rows, 30 optimizer steps of ~256
    tokens, general data, gate off, checkpoints and artifact under tmp_path/out.
    """

    def make(
        *,
        train_rows: list[Any] | None = None,
        objective: str = "sft",
        method: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        general: list[Any] | None = None,
        output: dict[str, Any] | None = None,
        model_uri: str | None = None,
        name: str = "job",
    ) -> Path:
        root = trainer_env / name
        train_file = write_jsonl(root / "train.jsonl", train_rows if train_rows is not None else sft_rows(60))
        general_file = write_jsonl(root / "general.jsonl", general if general is not None else general_rows(12))
        config = {
            "job": {"namespace": "team", "name": name, "uid": f"uid-{name}"},
            "model": {"uri": model_uri or f"file://{tiny_model_dir}"},
            "method": method or {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "objective": objective,
            "data": {
                "train": [{"uri": f"file://{train_file}"}],
                "eval": {"splitFraction": 0.1},
                "general": {"uri": f"file://{general_file}"},
            },
            "training": {
                "learningRate": 5e-3,
                "maxSteps": 30,
                "batchTokens": 256,
                "maxSeqLength": 64,
                "warmupRatio": 0.0,
                "checkpointEverySteps": 10,
                "keepCheckpoints": 2,
                "seed": 7,
            },
            "evaluation": {"gate": {"mode": "off"}},
            "output": {
                "checkpointsUri": f"file://{root}/out/checkpoints",
                "artifactUri": f"file://{root}/out/artifacts/{name}/v1",
                "adapterName": name,
                "version": "v1",
            },
        }
        config = _merge(
            config,
            {
                "training": training or {},
                "evaluation": evaluation or {},
                "data": data or {},
                "output": output or {},
            },
        )
        path = root / "config.json"
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        return path

    return make


class TrainerLog(logging.Handler):
    """Every record of the trainer's log, whether or not log.configure() stopped it propagating."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields_of(self, event: str) -> list[dict[str, Any]]:
        """The fields of each record of ``event``, in order."""
        return [getattr(record, "fields", {}) for record in self.records if record.getMessage() == event]


@pytest.fixture
def trainer_log() -> Iterator[TrainerLog]:
    logger = logging.getLogger("finetune_trainer")
    level, records = logger.level, TrainerLog()
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)
