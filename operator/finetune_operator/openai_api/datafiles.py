"""Uploaded training files, checked line by line as OpenAI checks them, before anything is stored.

A file is JSONL of one kind throughout:
- chat (``messages``, for ``method.type`` supervised): OpenAI's fine-tuning format, with tool calls and
  per-message ``weight``; at least one assistant message is learned from;
- preference (for ``method.type`` dpo): OpenAI's ``input``/``preferred_output``/``non_preferred_output``,
  stored as the trainer's ``prompt``/``chosen``/``rejected``, or that form itself.
The first line that is neither is refused with its number and the reason; the reason names fields, never
the line's content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, invalid

CHAT, PREFERENCE = "messages", "preference"
ROLES = ("system", "user", "assistant", "tool")
MAX_LINE_BYTES = 4 << 20
MIN_EXAMPLES = 10  # OpenAI's minimum: fewer examples teach nothing a prompt could not


class LineError(ValueError):
    """The reason a line is refused, for a user to act on."""


def _type(value: Any) -> str:
    return (
        "null" if value is None else {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")
    )


def _content(value: Any, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in value):
        return
    raise LineError(f"{where} must be a string or a list of text parts, got {_type(value)}")


def _message(item: Any, where: str) -> str:
    """Check one chat message; its role."""
    if not isinstance(item, dict):
        raise LineError(f"{where} must be an object, got {_type(item)}")
    role = item.get("role")
    if role not in ROLES:
        raise LineError(f"{where}.role must be one of {', '.join(ROLES)}")
    if "weight" in item and (role != "assistant" or item["weight"] not in (0, 1) or isinstance(item["weight"], bool)):
        raise LineError(f"{where}.weight must be 0 or 1, on assistant messages only")
    calls = item.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise LineError(f"{where}.tool_calls must be a list, on assistant messages only")
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise LineError(f'{where}.tool_calls[{index}] must be an object with a "function" that has a "name"')
    _content(item.get("content"), f"{where}.content", optional=calls is not None)
    return role


def _messages(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise LineError(f"{where} must be a non-empty list of messages")
    return [_message(item, f"{where}[{index}]") for index, item in enumerate(value)]


def check_chat(row: dict[str, Any]) -> dict[str, Any]:
    roles = _messages(row.get("messages"), "messages")
    learned = [
        index
        for index, role in enumerate(roles)
        if role == "assistant" and row["messages"][index].get("weight", 1) == 1
    ]
    if not learned:
        raise LineError("messages has no assistant message with weight 1: there is nothing to learn")
    if row.get("tools") is not None and not isinstance(row["tools"], list):
        raise LineError("tools must be a list")
    return row


def _answer(value: Any, where: str) -> Any:
    if isinstance(value, str) and value:
        return value
    roles = _messages(value, where)
    if any(role != "assistant" for role in roles):
        raise LineError(f"{where} holds assistant messages only")
    return value


def check_preference(row: dict[str, Any]) -> dict[str, Any]:
    """A preference example, as the trainer reads it (prompt, chosen, rejected)."""
    if "input" in row:  # OpenAI's form
        source = row["input"]
        if not isinstance(source, dict):
            raise LineError("input must be an object with messages")
        roles = _messages(source.get("messages"), "input.messages")
        if roles[-1] == "assistant":
            raise LineError("input.messages ends with an assistant message: the outputs must answer it")
        prompt = source["messages"]
        chosen = _answer(row.get("preferred_output"), "preferred_output")
        rejected = _answer(row.get("non_preferred_output"), "non_preferred_output")
    else:
        prompt = row.get("prompt")
        if not (isinstance(prompt, str) and prompt):
            roles = _messages(prompt, "prompt")
            if roles[-1] == "assistant":
                raise LineError("prompt ends with an assistant message: chosen and rejected must answer it")
        chosen = _answer(row.get("chosen"), "chosen")
        rejected = _answer(row.get("rejected"), "rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def kind_of(row: dict[str, Any]) -> str:
    if "messages" in row:
        return CHAT
    if "input" in row or ("chosen" in row and "rejected" in row):
        return PREFERENCE
    raise LineError(
        "expected a chat example (messages) or a preference example (input, preferred_output, non_preferred_output)"
    )


@dataclass
class FileCheck:
    """The kind and size of a checked file, filled in as its lines are checked."""

    kind: str | None = None
    examples: int = 0


def refusal(line: int, reason: str) -> ApiError:
    return invalid(f"Invalid file format. Line {line}: {reason}", param="file", code="invalid_file_format")


def checked_lines(lines: Iterable[bytes], check: FileCheck) -> Iterator[bytes]:
    """The lines to store, each checked; ApiError at the first bad one.

    ``lines`` are raw lines as read (with their newline); blank lines are skipped, as the trainer skips them.
    """
    for number, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise refusal(number, f"the line is longer than {MAX_LINE_BYTES} bytes")
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
            raise refusal(number, f"not valid JSON ({reason})") from None
        except RecursionError:  # a line of '[[[[...': the caller's to fix, not a server error with a traceback
            raise refusal(number, "JSON nested too deeply") from None
        try:
            if not isinstance(row, dict):
                raise LineError(f"expected a JSON object, got {_type(row)}")
            kind = kind_of(row)
            if check.kind is not None and kind != check.kind:
                raise LineError(f"a {kind} example in a file of {check.kind} examples: one kind per file")
            row = check_chat(row) if kind == CHAT else check_preference(row)
        except LineError as error:
            raise refusal(number, str(error)) from None
        check.kind = kind
        check.examples += 1
        # A chat line is stored as it came (the file reads back as uploaded); a preference line in the trainer's form.
        yield raw.rstrip(b"\r\n") + b"\n" if kind == CHAT else json.dumps(row, separators=(",", ":")).encode() + b"\n"
    if check.examples < MIN_EXAMPLES:
        raise invalid(
            f"Invalid file format. The file has {check.examples} examples; at least {MIN_EXAMPLES} are needed",
            param="file",
            code="invalid_file_format",
        )
