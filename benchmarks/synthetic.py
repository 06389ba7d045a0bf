"""A synthetic SFT task with a known structure and realistic, long-tailed lengths.

Text comes from a made-up language: a few thousand pseudo-words whose order follows a sparse Markov
chain (every word has a handful of likely successors), so a model can learn it and the loss falls
well below the uniform ln(vocab) within a short run. A row is a prompt and a completion whose
lengths in tokens follow a log-normal distribution clipped to 20..1000 (median about 150, a long
tail of rows near 1000), the shape of real instruction data. Everything is a pure function of the
seed, so every trainer and every run sees the same rows.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_TOKENS = 20
MAX_TOKENS = 1000
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


@dataclass(frozen=True)
class Language:
    words: list[str]
    successors: list[list[int]]  # word -> its likely next words, most likely first
    weights: list[float]  # Zipf weights over a successor list

    @classmethod
    def make(cls, seed: int, words: int = 3000, branching: int = 6) -> Language:
        rng = random.Random(seed)
        vocabulary: set[str] = set()
        while len(vocabulary) < words:
            vocabulary.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
        ordered = sorted(vocabulary)
        rng.shuffle(ordered)
        # Successors favour frequent words (low indices): a Zipf-like unigram distribution emerges.
        popular = [1.0 / (rank + 1) for rank in range(words)]
        successors = [rng.choices(range(words), weights=popular, k=branching) for _ in range(words)]
        weights = [1.0 / (rank + 1) ** 1.2 for rank in range(branching)]
        return cls(ordered, successors, weights)

    def walk(self, rng: random.Random, start: int | None = None):
        """An endless stream of word indices along the chain (a random restart now and then)."""
        word = rng.randrange(len(self.words)) if start is None else start
        while True:
            yield word
            if rng.random() < 0.02:
                word = rng.randrange(len(self.words))
            else:
                word = rng.choices(self.successors[word], weights=self.weights)[0]

    def sentences(self, seed: int, count: int, length: int = 40) -> list[str]:
        """Plain text to train the tokenizer on."""
        rng = random.Random(seed)
        stream = self.walk(rng)
        return [" ".join(self.words[next(stream)] for _ in range(length)) for _ in range(count)]


def sample_lengths(rng: random.Random, count: int, median: float = 150.0, sigma: float = 0.85) -> list[int]:
    """Row lengths in tokens: log-normal, clipped to MIN_TOKENS..MAX_TOKENS (median ~150, mean ~210)."""
    return [min(MAX_TOKENS, max(MIN_TOKENS, round(math.exp(rng.gauss(math.log(median), sigma))))) for _ in range(count)]


def make_rows(
    language: Language, tokenizer, *, count: int, seed: int, lengths: Sequence[int] | None = None
) -> list[dict[str, str]]:
    """Prompt/completion rows whose tokenized length (prompt + completion + EOS) is near the sampled one.

    Words are counted in tokens through the tokenizer itself (" word" as the byte-level pre-tokenizer
    sees it), so lengths hold for any vocabulary size.
    """
    rng = random.Random(seed)
    lengths = list(lengths) if lengths is not None else sample_lengths(rng, count)
    word_tokens = [
        len(ids) for ids in tokenizer([" " + w for w in language.words], add_special_tokens=False)["input_ids"]
    ]
    rows = []
    for total in lengths:
        budget = total - 1  # the EOS token after the completion
        prompt_budget = max(4, round(budget * rng.uniform(0.2, 0.6)))
        stream = language.walk(rng)
        prompt = _take(stream, word_tokens, prompt_budget)
        completion = _take(stream, word_tokens, max(2, budget - prompt_budget))
        rows.append(
            {
                "prompt": " ".join(language.words[w] for w in prompt),
                "completion": "".join(" " + language.words[w] for w in completion),
            }
        )
    return rows


def _take(stream, word_tokens: Sequence[int], budget: int) -> list[int]:
    words, used = [], 0
    for word in stream:
        if words and used + word_tokens[word] > budget:
            return words
        words.append(word)
        used += word_tokens[word]
    return words


def tokenize_rows(tokenizer, rows: Sequence[dict[str, str]], max_seq_length: int = 4096) -> list[dict[str, list[int]]]:
    """input_ids and completion_mask of prompt/completion rows, through our trainer's own tokenization.

    Prompt and completion are tokenized apart (as at inference), EOS ends the completion and the loss
    is taken on the completion and EOS (finetune_trainer.data.tokenize). The TRL side gets these ids
    pre-tokenized, so both trainers learn the very same token sequences.
    """
    from finetune_trainer.data.formats import CompletionSample
    from finetune_trainer.data.tokenize import ExampleBuilder

    builder = ExampleBuilder(tokenizer, max_seq_length=max_seq_length)
    tokenized = []
    for row in rows:
        (example,) = builder.build(CompletionSample(prompt=row["prompt"], completion=row["completion"])).examples
        first_learned = next(i for i, label in enumerate(example.labels) if label != -100)
        ids = list(example.input_ids)
        tokenized.append({"input_ids": ids, "completion_mask": [0] * first_learned + [1] * (len(ids) - first_learned)})
    return tokenized


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
