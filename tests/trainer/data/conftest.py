"""Fixtures of the data pipeline's tests: data files written on the fly, a tiny tokenizer, configurations."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hack.tinymodels import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's byte-level BPE tokenizer, with a ChatML template that has generation markers."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tokenizer_without_template(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded.chat_template = None
    return loaded


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Writes rows (objects, or raw strings written as they are) to a JSONL file under tmp_path."""

    def write(name: str, rows: Iterable[Any]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, header: list[str], rows: Iterable[list[str]]) -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return write


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, rows: list[dict[str, Any]]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / name
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    return write


def _uri_of(path: Path) -> str:
    return f"file://{path}"


def _resolve_file_uri(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


@pytest.fixture
def make_config() -> Callable[..., Any]:
    """A resolved TrainerConfig around the given spec.data (paths become file:// URIs), objective and training."""
    from finetune_core.api import TrainerConfig

    def make(
        train: list[Path | dict[str, Any]],
        *,
        objective: str = "sft",
        training: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        **data: Any,
    ) -> TrainerConfig:
        sources = [{"uri": _uri_of(item)} if isinstance(item, Path) else item for item in train]
        return TrainerConfig.model_validate(
            {
                "job": {"namespace": "team", "name": "job"},
                "model": {"uri": "file:///models/tiny"},
                "method": {"type": "lora", "lora": {}},
                "objective": objective,
                "data": {"train": sources, "eval": {"splitFraction": 0.1}, **data},
                "training": {"learningRate": 1e-4, "epochs": 1, "maxSeqLength": 256, **(training or {})},
                "evaluation": evaluation or {},
                "output": {
                    "checkpointsUri": "file:///out/checkpoints",
                    "artifactUri": "file:///out/artifact",
                    "adapterName": "adapter",
                    "version": "v1",
                },
            }
        )

    return make


@pytest.fixture
def resolve() -> Callable[[str], Path]:
    """What the storage layer does for file:// URIs."""
    return _resolve_file_uri
