"""Row formats: detecting a source's format, validating its rows and normalising them.

Every format is normalised to one of four samples, so tokenization knows four shapes only:

- ``messages`` (OpenAI fine-tuning JSONL: tool definitions, tool calls and tool results, and the
  per-message ``weight`` that leaves an assistant turn out of the loss), ``alpaca`` and
  ``sharegpt`` → :class:`ChatSample`;
- ``prompt-completion`` → :class:`CompletionSample`;
- ``text`` → :class:`TextSample`;
- ``preference`` → :class:`PreferenceSample`.

A row that does not fit its format raises :class:`RowError` with a reason a user can act on; the
caller counts it and reports it with the row's file:line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

FORMATS = ("messages", "prompt-completion", "alpaca", "sharegpt", "text", "preference")
CHAT_FORMATS = ("messages", "alpaca", "sharegpt")

CHAT_ROLES = ("system", "user", "assistant")
OPENAI_ROLES = (*CHAT_ROLES, "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

DETECTION_ROWS = 20  # the first rows that vote on a source's format


class RowError(ValueError):
    """A row that does not fit its format; the message is the reason, without the origin."""


Message = dict[str, Any]  # {"role": ..., "content": ...} and, in the OpenAI format, tool_calls / tool_call_id / name


@dataclass(frozen=True)
class ChatSample:
    """A conversation; loss is taken on the assistant messages but those listed in ``untrained``.

    ``tools`` are the function definitions the chat template renders (usually into the system
    prompt); tool results (role ``tool``) are context, never learned.
    """

    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] = ()
    untrained: frozenset[int] = frozenset()  # indexes of assistant messages with weight 0

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m["role"] == "tool" or "tool_calls" in m for m in self.messages)


@dataclass(frozen=True)
class CompletionSample:
    """Loss is taken on the completion, which follows the prompt directly (no template)."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class TextSample:
    """Raw text; loss on every token."""

    text: str


@dataclass(frozen=True)
class PreferenceSample:
    """A prompt with a preferred and a dispreferred answer.

    Plain (``prompt`` a string, answers strings): tokenized like prompt-completion. Conversational
    (``prompt`` a list of messages, answers lists of assistant messages): rendered through the chat
    template. A row that mixes the two is made conversational.
    """

    prompt: str | tuple[Message, ...]
    chosen: str | tuple[Message, ...]
    rejected: str | tuple[Message, ...]

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


Sample = ChatSample | CompletionSample | TextSample | PreferenceSample


# ---------------------------------------------------------------------------------------------
# detection


def format_of_row(value: Any) -> str | None:
    """The format a single row looks like, by its fields; None when it fits none."""
    if not isinstance(value, dict):
        return None
    if "chosen" in value and "rejected" in value:
        return "preference"
    if "messages" in value:
        return "messages"
    if "conversations" in value:
        return "sharegpt"
    if "instruction" in value and "output" in value:
        return "alpaca"
    if ("prompt" in value and "completion" in value) or ("input" in value and "output" in value):
        return "prompt-completion"
    if "text" in value:
        return "text"
    return None


def detect_format(values: Iterable[Any]) -> str | None:
    """The format most of the first rows look like (ties go to the earlier in FORMATS); None if none fits."""
    votes: Counter[str] = Counter()
    for value in values:
        detected = format_of_row(value)
        if detected is not None:
            votes[detected] += 1
    if not votes:
        return None
    return max(FORMATS, key=lambda name: (votes[name], -FORMATS.index(name)))


# ---------------------------------------------------------------------------------------------
# parsing


def parse_row(format_name: str, value: Any) -> Sample:
    """Validate one decoded row of ``format_name`` and normalise it; raises RowError with the reason."""
    if not isinstance(value, dict):
        raise RowError(f"expected an object with the fields of the {format_name} format, got {_type_name(value)}")
    return _PARSERS[format_name](value)


def _parse_messages(row: dict[str, Any]) -> ChatSample:
    items = _field(row, "messages", list)
    if not items:
        raise RowError("messages is empty")
    messages, untrained = [], set()
    for index, item in enumerate(items):
        message, weight = _openai_message(item, f"messages[{index}]")
        messages.append(message)
        if weight == 0:
            untrained.add(index)
    assistant = {index for index, message in enumerate(messages) if message["role"] == "assistant"}
    if not assistant:
        raise RowError("no assistant message: there is nothing to learn from this conversation")
    if assistant <= untrained:
        raise RowError("every assistant message has weight 0: there is nothing to learn from this conversation")
    return ChatSample(tuple(messages), _tools(row), frozenset(untrained))


def _openai_message(item: Any, where: str) -> tuple[Message, int]:
    """One message of the OpenAI fine-tuning format, normalised to what chat templates read; and its weight."""
    if not isinstance(item, dict):
        raise RowError(f"{where} must be an object, got {_type_name(item)}")
    if "role" not in item:
        raise RowError(f'{where} has no "role"')
    role = item["role"]
    if role not in OPENAI_ROLES:
        raise RowError(f'{where} has unknown role "{role}" (expected {", ".join(OPENAI_ROLES)})')
    # Parquet gives every message every field of the column's struct type: a None is an absent field.
    weight = 1 if item.get("weight") is None else item["weight"]
    if item.get("weight") is not None and role != "assistant":
        raise RowError(f"{where}.weight is set on a {role} message: only assistant messages have a weight")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowError(f"{where}.weight must be 0 or 1, got {weight!r}")
    if role == "assistant" and item.get("tool_calls"):
        calls = _tool_calls(item["tool_calls"], f"{where}.tool_calls")
        content = item.get("content")
        text = "" if content in (None, "") else _content(content, f"{where}.content")
        return {"role": role, "content": text, "tool_calls": calls}, weight
    message: Message = {"role": role, "content": _content(item.get("content"), f"{where}.content")}
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if item.get(key) is not None:
                if not isinstance(item[key], str):
                    raise RowError(f"{where}.{key} must be a string, got {_type_name(item[key])}")
                message[key] = item[key]
    return message, weight


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls with their JSON-string arguments decoded: chat templates render them as objects."""
    if not isinstance(value, list):
        raise RowError(f"{where} must be a list, got {_type_name(value)}")
    calls = []
    for index, call in enumerate(value):
        here = f"{where}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise RowError(f'{here} must be an object with a "function"')
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RowError(f"{here}.function.name must be a non-empty string")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as error:
                raise RowError(f"{here}.function.arguments is not valid JSON: {error.msg}") from None
        if not isinstance(arguments, dict):
            raise RowError(f"{here}.function.arguments must be a JSON object, got {_type_name(arguments)}")
        normalised: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            normalised["id"] = call["id"]
        calls.append(normalised)
    return calls


def _tools(row: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The row's function definitions (OpenAI "tools"), as chat templates take them."""
    if row.get("tools") is None:
        return ()
    tools = row["tools"]
    if not isinstance(tools, list):
        raise RowError(f'field "tools" must be a list, got {_type_name(tools)}')
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(
                f'tools[{index}] must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}'
            )
    return tuple(tools)


def _parse_sharegpt(row: dict[str, Any]) -> ChatSample:
    messages = _chat_messages(_field(row, "conversations", list), "conversations", "from", "value", _sharegpt_role)
    if not any(message["role"] == "assistant" for message in messages):
        raise RowError('no "gpt" turn: there is nothing to learn from this conversation')
    return ChatSample(messages)


def _parse_alpaca(row: dict[str, Any]) -> ChatSample:
    instruction = _text(row, "instruction")
    context = _optional_string(row, "input")
    output = _text(row, "output")
    system = _optional_string(row, "system")
    user = f"{instruction}\n\n{context}" if context.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return ChatSample(tuple(messages))


def _parse_prompt_completion(row: dict[str, Any]) -> CompletionSample:
    if "prompt" in row or "completion" in row:
        return CompletionSample(_text(row, "prompt"), _text(row, "completion"))
    return CompletionSample(_text(row, "input"), _text(row, "output"))


def _parse_text(row: dict[str, Any]) -> TextSample:
    return TextSample(_text(row, "text"))


def _parse_preference(row: dict[str, Any]) -> PreferenceSample:
    prompt = _prompt_of_preference(row)
    chosen = _answer_of_preference(row, "chosen")
    rejected = _answer_of_preference(row, "rejected")
    if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
        return PreferenceSample(prompt, chosen, rejected)
    return PreferenceSample(
        _as_messages(prompt, "user"), _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], Sample]] = {
    "messages": _parse_messages,
    "prompt-completion": _parse_prompt_completion,
    "alpaca": _parse_alpaca,
    "sharegpt": _parse_sharegpt,
    "text": _parse_text,
    "preference": _parse_preference,
}


def _prompt_of_preference(row: dict[str, Any]) -> str | tuple[Message, ...]:
    prompt = _field(row, "prompt", (str, list))
    if isinstance(prompt, str):
        return _text(row, "prompt")
    messages = _chat_messages(prompt, "prompt", "role", "content", _openai_role)
    if messages[-1]["role"] == "assistant":
        raise RowError("the prompt ends with an assistant message: the answers in chosen and rejected must follow it")
    return messages


def _answer_of_preference(row: dict[str, Any], name: str) -> str | tuple[Message, ...]:
    answer = _field(row, name, (str, list))
    if isinstance(answer, str):
        return _text(row, name)
    messages = _chat_messages(answer, name, "role", "content", _openai_role)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            raise RowError(f'{name}[{index}] has role "{message["role"]}": {name} holds only assistant messages')
    return messages


def _as_messages(value: str | tuple[Message, ...], role: str) -> tuple[Message, ...]:
    return ({"role": role, "content": value},) if isinstance(value, str) else value


def _chat_messages(
    items: list[Any], name: str, role_key: str, content_key: str, role_of: Callable[[str], str | None]
) -> tuple[Message, ...]:
    if not items:
        raise RowError(f"{name} is empty")
    messages = []
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise RowError(f"{where} must be an object, got {_type_name(item)}")
        if role_key not in item:
            raise RowError(f'{where} has no "{role_key}"')
        raw_role = item[role_key]
        role = role_of(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise RowError(f'{where} has unknown {role_key} "{raw_role}" (expected {_expected_roles(role_of)})')
        content = _content(item.get(content_key), f"{where}.{content_key}")
        messages.append({"role": role, "content": content})
    return tuple(messages)


def _content(value: Any, where: str) -> str:
    # The OpenAI format allows content as a list of parts; text parts are all a text model can use.
    if isinstance(value, list):
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RowError(f'{where} has a part that is not {{"type": "text", "text": "..."}}')
            parts.append(part["text"])
        value = "".join(parts)
    if value is None:
        raise RowError(f"{where} is missing")
    if not isinstance(value, str):
        raise RowError(f"{where} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise RowError(f"{where} is empty")
    return value


def _openai_role(role: str) -> str | None:
    return role if role in CHAT_ROLES else None


def _sharegpt_role(role: str) -> str | None:
    return SHAREGPT_ROLES.get(role)


def _expected_roles(role_of: Callable[[str], str | None]) -> str:
    names = CHAT_ROLES if role_of is _openai_role else tuple(SHAREGPT_ROLES)
    return ", ".join(names)


def _field(row: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
    if name not in row or row[name] is None:
        raise RowError(f'missing field "{name}"')
    value = row[name]
    if not isinstance(value, types):
        expected = " or ".join(_TYPE_NAMES[t] for t in (types if isinstance(types, tuple) else (types,)))
        raise RowError(f'field "{name}" must be {expected}, got {_type_name(value)}')
    return value


def _text(row: dict[str, Any], name: str) -> str:
    value = _field(row, name, str)
    if not value.strip():
        raise RowError(f'field "{name}" is empty')
    return value


def _optional_string(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f'field "{name}" must be a string, got {_type_name(value)}')
    return value


_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)
