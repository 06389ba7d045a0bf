"""Tokenization and label masking: a normalised sample becomes the examples the model learns from.

Where the loss is taken, by sample:

- prompt-completion: on the completion and the EOS token after it. Prompt and completion are
  tokenized apart, as at inference, where the model sees the tokenized prompt and generates.
- chat (messages, alpaca, sharegpt): on the assistant turns (their tool calls included; not on
  turns with weight 0, nor on tool results), end-of-turn token included (see templates.py),
  through the tokenizer's chat template or ``spec.data.chatTemplate``.
- text: on every token, with EOS at the end of the document. A document longer than
  maxSeqLength is split into maxSeqLength chunks (continued pre-training must see all of it),
  never truncated or dropped.
- preference: like prompt-completion (plain rows) or chat (conversational rows), with the
  prompt masked in both the chosen and the rejected sequence.

The label of each example's first token is always IGNORE_INDEX: nothing precedes it to predict it
from. This makes ``Example.trained_tokens`` the exact count of tokens the loss is taken on, and
lets packing put examples side by side without predicting one example's start from another's end.

Other rows longer than maxSeqLength are truncated (keeping the start) or dropped, per
``spec.data.overlongRows``; a row left with no trained token after truncation is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .formats import ChatSample, CompletionSample, PreferenceSample, RowError, Sample, TextSample
from .templates import ChatRenderer
from .types import IGNORE_INDEX, Example, PreferenceExample

Outcome = Literal["kept", "truncated", "dropped"]


@dataclass(frozen=True)
class Tokenized:
    """What one row became: its examples (several for a long text, none when dropped) and what happened."""

    examples: tuple[Example, ...] | tuple[PreferenceExample, ...]
    outcome: Outcome = "kept"

    @property
    def tokens(self) -> int:
        return sum(_token_count(example) for example in self.examples)


class ExampleBuilder:
    """Turns samples into examples for one tokenizer, chat template and length limit."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_seq_length: int,
        overlong: Literal["truncate", "drop"] = "truncate",
        chat_template: str | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._max = max_seq_length
        self._overlong = overlong
        self.chat = ChatRenderer(tokenizer, chat_template)
        self._bos = _leading_bos(tokenizer)
        self._eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def build(self, sample: Sample, source: int = 0) -> Tokenized:
        """The examples of one sample; raises RowError when the row has nothing to learn from."""
        if isinstance(sample, TextSample):
            return self._text(sample, source)
        if isinstance(sample, CompletionSample):
            return self._fit(*self._completion(sample.prompt, sample.completion), source)
        if isinstance(sample, ChatSample):
            return self._fit(*self._chat(sample.messages, tools=sample.tools, untrained=sample.untrained), source)
        if isinstance(sample, PreferenceSample):
            return self._preference(sample, source)
        raise TypeError(f"not a sample: {sample!r}")

    def _text(self, sample: TextSample, source: int) -> Tokenized:
        ids = self._bos + self._encode(sample.text) + self._eos
        chunks = [ids[start : start + self._max] for start in range(0, len(ids), self._max)]
        # A one-token chunk has nothing to predict (its only label is masked as a first token).
        examples = tuple(_example(chunk, list(chunk), source) for chunk in chunks if len(chunk) > 1)
        return Tokenized(examples, "kept" if examples else "dropped")

    def _completion(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        prompt_ids = self._bos + self._encode(prompt)
        completion_ids = self._encode(completion) + self._eos
        return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids

    def _chat(
        self,
        messages: Sequence[dict[str, Any]],
        prompt_ids: Sequence[int] = (),
        *,
        tools: Sequence[dict[str, Any]] = (),
        untrained: frozenset[int] = frozenset(),
    ) -> tuple[list[int], list[int]]:
        ids, assistant = self.chat.encode(messages, tools, untrained)
        # The prompt ends where the rendered prompt stops matching the whole: robust to a template
        # that merges the prompt's last token with the answer's first.
        prompt_length = _common_prefix(prompt_ids, ids)
        labels = [
            token if learned and position >= prompt_length else IGNORE_INDEX
            for position, (token, learned) in enumerate(zip(ids, assistant, strict=True))
        ]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise RowError("the chat template rendered no assistant tokens for this conversation")
        return ids, labels

    def _preference(self, sample: PreferenceSample, source: int) -> Tokenized:
        if sample.conversational:
            prompt_ids = self.chat.encode_prompt(sample.prompt)
            chosen = self._chat([*sample.prompt, *sample.chosen], prompt_ids)
            rejected = self._chat([*sample.prompt, *sample.rejected], prompt_ids)
        else:
            chosen = self._completion(sample.prompt, sample.chosen)
            rejected = self._completion(sample.prompt, sample.rejected)
        overlong = max(len(chosen[0]), len(rejected[0])) > self._max
        if overlong and self._overlong == "drop":
            return Tokenized((), "dropped")
        pair = PreferenceExample(_example(*chosen, source, self._max), _example(*rejected, source, self._max), source)
        if pair.chosen.trained_tokens == 0 or pair.rejected.trained_tokens == 0:
            return Tokenized((), "dropped")
        return Tokenized((pair,), "truncated" if overlong else "kept")

    def _fit(self, ids: list[int], labels: list[int], source: int) -> Tokenized:
        overlong = len(ids) > self._max
        if overlong and self._overlong == "drop":
            return Tokenized((), "dropped")
        example = _example(ids, labels, source, self._max)
        if example.trained_tokens == 0:
            return Tokenized((), "dropped")
        return Tokenized((example,), "truncated" if overlong else "kept")

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]


def _example(ids: list[int], labels: list[int], source: int, limit: int | None = None) -> Example:
    ids, labels = ids[:limit], labels[:limit]
    return Example(input_ids=ids, labels=[IGNORE_INDEX, *labels[1:]] if labels else [], source=source)


def _leading_bos(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer starts sequences with one (Llama), [] when it does not (Qwen, GPT-2 style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    framing = tokenizer("", add_special_tokens=True)["input_ids"]
    return [bos] if framing[:1] == [bos] else []


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _token_count(example: Example | PreferenceExample) -> int:
    if isinstance(example, PreferenceExample):
        return len(example.chosen) + len(example.rejected)
    return len(example)
