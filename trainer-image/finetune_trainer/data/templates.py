"""Rendering conversations through a chat template, with a mask of the tokens the assistant wrote.

Two ways to find the assistant's tokens, chosen by the template:

- with ``{% generation %}`` markers (the transformers convention), the template itself says which
  text the assistant produced: ``apply_chat_template(..., return_assistant_tokens_mask=True)``.
- without them (most Hub templates), by rendering prefixes: the assistant's text of turn i is what
  rendering ``messages[: i + 1]`` adds to rendering ``messages[:i]`` with the generation prompt,
  without the whitespace that separates turns. The tokens whose text starts in those spans are the
  assistant's. This needs the template to be prefix-stable (an earlier turn renders the same
  whatever follows it); a template that rewrites earlier turns is refused with a ConfigError that
  asks for generation markers, since guessing would train on the wrong tokens.

Both include the end-of-turn token in the assistant's span: the model must learn to stop.

Assistant turns with weight 0 (OpenAI format) are rendered but not learned: with markers, the k-th
run of marked tokens is the k-th assistant turn (when the counts differ, the prefixes decide).
Tool definitions, tool calls and tool results go through the template too; a template that has no
notion of tools (no "tool" anywhere in it) would silently drop them, so such rows are refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .formats import RowError

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

Message = dict[str, Any]


class ChatRenderer:
    """Renders and tokenizes conversations with one tokenizer and one chat template."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        self._tokenizer = tokenizer
        self._override = chat_template
        self._template: str | None = None

    @property
    def template(self) -> str:
        """The template in use: the configured one, else the tokenizer's; a ConfigError when there is none."""
        if self._template is None:
            self._template = self._override or _tokenizer_template(self._tokenizer)
        return self._template

    @property
    def has_generation_markers(self) -> bool:
        return GENERATION_MARKER.search(self.template) is not None

    def encode(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = (), untrained: frozenset[int] = frozenset()
    ) -> tuple[list[int], list[bool]]:
        """Token ids of the rendered conversation and, per token, whether it is learned: written by the
        assistant in a turn not listed in ``untrained``."""
        uses_tools = bool(tools) or any(m["role"] == "tool" or "tool_calls" in m for m in messages)
        if uses_tools and "tool" not in self.template:
            raise RowError(
                "the conversation has tools, tool calls or tool results but the chat template does not render "
                "tools: use a model whose template does, or set spec.data.chatTemplate"
            )
        if self.has_generation_markers:
            ids, mask = self._encode_with_markers(messages, tools)
            turns = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
            runs = _runs(mask)
            if not untrained:
                return ids, mask
            if len(runs) == len(turns):
                for index, (start, end) in zip(turns, runs, strict=True):
                    if index in untrained:
                        mask[start:end] = [False] * (end - start)
                return ids, mask
        return self._encode_by_prefixes(messages, tools, untrained)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the conversation so far followed by the prompt for the assistant's answer."""
        rendered = self._render(messages, add_generation_prompt=True)
        return self._tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def _encode_with_markers(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> tuple[list[int], list[bool]]:
        encoded = self._tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) or None,
            chat_template=self.template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        return list(encoded["input_ids"]), [bool(flag) for flag in encoded["assistant_masks"]]

    def _encode_by_prefixes(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = (), untrained: frozenset[int] = frozenset()
    ) -> tuple[list[int], list[bool]]:
        full = self._render(messages, add_generation_prompt=False, tools=tools)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], add_generation_prompt=True, tools=tools)
            through = self._render(messages[: index + 1], add_generation_prompt=False, tools=tools)
            if not (through.startswith(before) and full.startswith(through)):
                raise ConfigError(
                    "the chat template renders earlier turns differently depending on what follows them, so the "
                    "assistant's tokens cannot be found by rendering prefixes: use a template with "
                    "{% generation %} ... {% endgeneration %} around the assistant's content (spec.data.chatTemplate)"
                )
            if index not in untrained:
                spans.append((len(before), len(through.rstrip())))
        encoded = self._tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [any(start <= begin < end for start, end in spans) for begin, _ in encoded["offset_mapping"]]
        return list(encoded["input_ids"]), mask

    def _render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools: Sequence[dict[str, Any]] = ()
    ) -> str:
        if not messages:
            # transformers refuses to render an empty conversation; an assistant turn that opens one then
            # starts at 0, and its header is learned too, which is the best a template without markers allows.
            return ""
        return self._tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) or None,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )


def _runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """The [start, end) ranges of consecutive True values."""
    runs, start = [], None
    for position, flag in enumerate([*mask, False]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            runs.append((start, position))
            start = None
    return runs


def _tokenizer_template(tokenizer: Any) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template, and chat data (messages, alpaca, sharegpt or "
            "conversational preference rows) is rendered through one: set spec.data.chatTemplate to a Jinja chat "
            "template, or use a base model whose tokenizer has one"
        )
    try:
        return tokenizer.get_chat_template()
    except ValueError as error:  # several named templates and no "default" among them
        raise ConfigError(f"the model's tokenizer has no usable chat template: {error}") from error
