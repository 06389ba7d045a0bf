"""Sharded weights and optimizer (FSDP) through torch.distributed.checkpoint, read without running code.

DCP reads its ``.metadata`` with ``pickle.load`` and the non-tensor entries of a state dict (an
optimizer's param_groups) with ``torch.load`` and its weights-only mode off: a replaced file would run whatever
it says. The reader here unpickles the metadata with an allow-list of DCP's own metadata types (the
``find_class`` restriction the pickle documentation recommends; the weights-only unpickler cannot
read DCP's protocol-4 metadata) and loads the other entries with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

MODEL_DIR = "fsdp_model"
OPTIMIZER_DIR = "fsdp_optim"
METADATA_FILE = ".metadata"

# What DCP's Metadata is made of (torch 2.x): its dataclasses, torch.Size, dtypes and layouts, a path.
_METADATA_TYPES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_TYPES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(path: Path) -> Any:
    """DCP's Metadata in ``path``; ValueError when it is anything else (nothing outside the allow-list is called)."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()  # find_class admits only the list above
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError) as error:
        raise ValueError(f"{path.name}: not a checkpoint's metadata ({type(error).__name__})") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{path.name}: not a checkpoint's metadata")
    return metadata


def check_metadata(directory: Path) -> None:
    """Parse every DCP metadata file below ``directory`` safely: ValueError before any loader sees one."""
    for sub in (MODEL_DIR, OPTIMIZER_DIR):
        read_metadata(directory / sub / METADATA_FILE)


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shards of the weights and the optimizer's moments (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options()
    dcp.save({"model": get_model_state_dict(model, options=options)}, storage_writer=_writer(directory / MODEL_DIR))
    moments = get_optimizer_state_dict(model, _plain(optimizer), options=options)
    dcp.save({"optimizer": moments}, storage_writer=_writer(directory / OPTIMIZER_DIR))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read the shards :func:`save_sharded` wrote into the model and optimizer of this rank (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options, plain = _options(), _plain(optimizer)
    weights = {"model": get_model_state_dict(model, options=options)}
    dcp.load(weights, storage_reader=_reader(directory / MODEL_DIR), planner=_planner())
    set_model_state_dict(model, weights["model"], options=options)
    moments = {"optimizer": get_optimizer_state_dict(model, plain, options=options)}
    dcp.load(moments, storage_reader=_reader(directory / OPTIMIZER_DIR), planner=_planner())
    set_optimizer_state_dict(model, plain, moments["optimizer"], options=options)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, cpu_offload=False)


def _plain(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under Accelerate's wrapper (whose step would also step the fp16 loss scale)."""
    while hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _writer(path: Path):
    from torch.distributed.checkpoint import FileSystemWriter

    path.mkdir(parents=True, exist_ok=True)
    return FileSystemWriter(str(path))


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _planner():
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeLoadPlanner()
