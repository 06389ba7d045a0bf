"""Training state besides the weights (optimizer, schedule, generators, loss scale) as one safetensors file.

The tensors go into the file's tensors, everything else into a JSON description of the structure kept
in the file's header, with a reference where a tensor was. Nothing in a checkpoint is a pickle, so a
replaced file can at worst be unreadable, never run code: the reader is safetensors' header parser and
``json``, neither of which constructs objects. (``torch.load(weights_only=True)`` would do too, but it
is a restricted pickle machine, a larger surface that has had bypasses; this needs no allow-list.)

Exactness: Python floats survive JSON (``repr`` round-trips), tuples and non-string dict keys are
tagged so that ``load_state(save_state(x)) == x`` for every value a state dict holds: None, bool, int,
float, str, list, tuple, dict (str or int keys) and tensors. Anything else is a bug and raises TypeError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

STRUCTURE_KEY = "structure"


def save_state(value: Any, path: Path) -> None:
    """Write ``value`` (a state dict or any nesting of the types above) to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(value, tensors)
    save_file(tensors, str(path), metadata={STRUCTURE_KEY: json.dumps(structure, separators=(",", ":"))})


def load_state(path: Path) -> Any:
    """The value :func:`save_state` wrote, with its tensors on the CPU; ValueError when the file is not one."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if STRUCTURE_KEY not in metadata:
                raise ValueError(f"{path.name}: no {STRUCTURE_KEY!r} in the header")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        return _decode(json.loads(metadata[STRUCTURE_KEY]), tensors)
    except (SafetensorError, RuntimeError, KeyError, TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path.name}: not a training-state file ({type(error).__name__})") from None


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"tensor": name}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, tensors) for item in value]}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise TypeError(f"cannot store a dict key of type {type(key).__name__}")
        return {"dict": [[key, _encode(item, tensors)] for key, item in value.items()]}
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a training-state file")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, content),) = value.items()
        if tag == "tensor" and isinstance(content, str):
            return tensors[content]
        if tag == "tuple" and isinstance(content, list):
            return tuple(_decode(item, tensors) for item in content)
        if tag == "dict" and isinstance(content, list):
            return {_key(pair): _decode(pair[1], tensors) for pair in content}
    raise TypeError("unknown structure")


def _key(pair: Any) -> str | int:
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str | int) or isinstance(pair[0], bool):
        raise TypeError("malformed dict entry")
    return pair[0]
