"""Checking a caller's parameters: every name known, every value typed and bounded, before anything is done.

An unknown name is refused by name (when the name is a plain identifier; otherwise without repeating it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import invalid, unknown_parameter

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def shown(name: str) -> str:
    """A caller's parameter name as it may appear in an answer: plain identifiers only."""
    return name if _PLAIN_NAME.fullmatch(name) else "(a parameter name that is not a plain identifier)"


def only_known(values: Mapping[str, Any], known: Iterable[str], where: str = "") -> None:
    known = set(known)
    for name in values:
        if name not in known:
            raise unknown_parameter(where + shown(str(name)))


def an_object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{param} must be an object", param)
    return value


def a_string(value: Any, param: str, max_length: int, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise invalid(f"{param} must be a string of 1 to {max_length} characters", param)
    return value


def an_integer(value: Any, param: str, low: int, high: int, auto: bool = False) -> int | None:
    if auto and value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        allowed = '"auto" or an integer' if auto else "an integer"
        raise invalid(f"{param} must be {allowed} from {low} to {high}", param)
    return value


def a_number(value: Any, param: str, above: float, high: float, auto: bool = False) -> float | None:
    if auto and value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not above < value <= high:
        allowed = '"auto" or a number' if auto else "a number"
        raise invalid(f"{param} must be {allowed} greater than {above:g} and at most {high:g}", param)
    return float(value)


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return {}
    pairs = an_object(value, param)
    if len(pairs) > MAX_METADATA_PAIRS:
        raise invalid(f"{param} holds at most {MAX_METADATA_PAIRS} pairs", param)
    for key, item in pairs.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY:
            raise invalid(f"{param} keys are strings of 1 to {MAX_METADATA_KEY} characters", param)
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise invalid(f"{param} values are strings of at most {MAX_METADATA_VALUE} characters", param)
    return dict(pairs)
