"""Evaluation: the base model against the adapted one, on the task eval data and on general data.

Scores per set: the mean loss per unit (token for language modelling, pair for DPO), perplexity for
token losses, and on request exact-match and JSON-validity of greedy completions. The base model is
the same weights with the adapter disabled (LoRA, no second copy); full fine-tuning has no adapter
to switch off, so its base scores are measured before the first step and kept in the checkpoints.
The gate's verdict comes from the shared api (``judge``), so operator and trainer agree on it.

Every rank scores its share of the batches and the sums are reduced, so the same code serves one
process, DDP and FSDP (where every rank must take part in every forward pass).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from finetune_core.api import EvaluationSummary, Gate, LossComparison, judge

from .batching import collate, plan_epoch, trained_tokens
from .data.types import IGNORE_INDEX, Example, PreferenceExample
from .distributed import Distributed
from .inputs import to_model_inputs
from .losses import unwrapped
from .objectives import DirectPreference, LanguageModelling, Objective

GENERATION_BATCH = 16
MAX_NEW_TOKENS = 512


@dataclass
class SetScores:
    loss: float | None
    samples: int
    exact_match: float | None = None
    json_valid: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SetScores:
        return cls(**data)


@dataclass
class EvalSet:
    name: str  # "task" or "general"
    examples: Sequence[Example] | Sequence[PreferenceExample]
    objective: Objective


def stop_token_ids(model, tokenizer) -> list[int]:
    """Where a generated answer ends: the model's own end tokens, the tokenizer's EOS, and the special tokens
    of the chat template (its end-of-turn, such as <|im_end|>, <|eot_id|> or <end_of_turn>, is often not
    the EOS, and a fine-tuned model learned to stop there)."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([configured] if isinstance(configured, int) else configured or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    template = tokenizer.chat_template or ""
    template = " ".join(template.values()) if isinstance(template, dict) else template
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if getattr(t, "special", False)}
    for token in sorted(special):
        if token and token in template and token != tokenizer.pad_token:
            ids.add(tokenizer.convert_tokens_to_ids(token))
    return sorted(ids)


class Evaluator:
    def __init__(
        self,
        dist: Distributed,
        *,
        task: EvalSet | None,
        general: EvalSet | None,
        pad_token_id: int,
        flat_batches: bool,
        batch_tokens: int,
        metrics: Sequence[str] = (),
        tokenizer=None,
    ):
        self.dist = dist
        self.sets = {s.name: s for s in (task, general) if s is not None and len(s.examples) > 0}
        self.pad_token_id = pad_token_id
        self.flat_batches = flat_batches
        self.batch_tokens = batch_tokens
        self.metrics = list(metrics)
        self.tokenizer = tokenizer

    # ---- the scores

    def periodic(self, model: torch.nn.Module) -> dict[str, float]:
        """The adapted model's task loss, for progress during training."""
        if "task" not in self.sets:
            return {}
        return {"eval_loss": self.loss(model, self.sets["task"])}

    def scores(self, model: torch.nn.Module, *, base: bool = False) -> dict[str, SetScores]:
        """Every set's scores of the adapted model, or of the base model (adapter disabled) with ``base``."""
        results = {}
        with self._base_model(model) if base else contextlib.nullcontext():
            for name, eval_set in self.sets.items():
                if base and isinstance(eval_set.objective, DirectPreference):
                    # With policy = reference both margins are equal: the DPO loss is exactly log 2.
                    loss = math.log(2.0)
                else:
                    loss = self.loss(model, eval_set)
                scores = SetScores(loss=loss, samples=len(eval_set.examples))
                if name == "task" and self.metrics:
                    scores.exact_match, scores.json_valid = self.generation_scores(model, eval_set.examples)
                results[name] = scores
        model.train()
        return results

    def summary(self, gate: Gate, base: dict[str, SetScores], adapted: dict[str, SetScores]) -> EvaluationSummary:
        task = _comparison(base.get("task"), adapted.get("task"), self._is_token_loss("task"))
        general = _comparison(base.get("general"), adapted.get("general"), self._is_token_loss("general"))
        return judge(gate, task, general)

    # ---- losses

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, eval_set: EvalSet) -> float:
        """Mean loss per unit (token or pair) over the set, reduced over all ranks."""
        runner = self._runner(model)
        runner.eval()
        batches = eval_batches(eval_set.examples, self.batch_tokens)
        mine = batches[self.dist.rank :: self.dist.world_size]
        # Equal passes on every rank (FSDP gathers parameters inside each); the extra ones are empty.
        rounds = math.ceil(len(batches) / self.dist.world_size)
        loss_sum, units = 0.0, 0
        for index in range(rounds):
            indices = mine[index] if index < len(mine) else []
            batch = collate(eval_set.examples, indices, False, self.pad_token_id)
            inputs = to_model_inputs(batch, self.pad_token_id, flat=self.flat_batches).to(self.dist.device)
            loss_sum += float(eval_set.objective.summed_loss(runner, inputs))
            units += _units(eval_set.examples, indices)
        total_loss, total_units = self.dist.sum([loss_sum, float(units)])
        return total_loss / total_units if total_units else float("nan")

    # ---- generation

    @torch.no_grad()
    def generation_scores(
        self, model: torch.nn.Module, examples: Sequence[Example]
    ) -> tuple[float | None, float | None]:
        """Fractions of greedy completions that equal the reference and that parse as JSON."""
        runner = unwrapped(model)
        runner.eval()
        prompts = [split_prompt(example) for example in examples]
        prompts = [p for p in prompts if p is not None]
        if not prompts:
            return None, None
        mine = prompts[self.dist.rank :: self.dist.world_size]
        # Under FSDP every rank must call generate equally often (synced_gpus): the extra calls are empty.
        rounds = math.ceil(math.ceil(len(prompts) / self.dist.world_size) / GENERATION_BATCH)
        exact = valid = 0
        for start in range(0, rounds * GENERATION_BATCH, GENERATION_BATCH):
            chunk = mine[start : start + GENERATION_BATCH]
            if not chunk and not self.dist.fsdp:
                break
            queries = [prompt for prompt, _ in chunk] or [prompts[0][0]]
            completions = self._generate(runner, queries, max((len(r) for _, r in chunk), default=1))
            for (_, reference), completion in zip(chunk, completions, strict=False):
                expected = self.tokenizer.decode(reference, skip_special_tokens=True).strip()
                exact += int(completion == expected)
                valid += int(_is_json(completion))
        exact_total, valid_total = self.dist.sum([float(exact), float(valid)])
        return exact_total / len(prompts), valid_total / len(prompts)

    def _generate(self, model, prompts: list[list[int]], reference_length: int) -> list[str]:
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends where generation begins.
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=self.dist.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.dist.device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=min(MAX_NEW_TOKENS, reference_length + 16),
            do_sample=False,
            use_cache=True,
            pad_token_id=self.pad_token_id,
            eos_token_id=stop_token_ids(unwrapped(model), self.tokenizer),
            synced_gpus=self.dist.fsdp,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]

    # ---- helpers

    def _runner(self, model: torch.nn.Module) -> torch.nn.Module:
        # FSDP needs its wrapper for every forward; DDP's adds nothing without gradients.
        return model if self.dist.fsdp else unwrapped(model)

    def _base_model(self, model: torch.nn.Module):
        inner = unwrapped(model)
        if not hasattr(inner, "disable_adapter"):
            raise ValueError("base scores of a fully fine-tuned model are measured before training")
        return inner.disable_adapter()

    def _is_token_loss(self, name: str) -> bool:
        eval_set = self.sets.get(name)
        return eval_set is not None and isinstance(eval_set.objective, LanguageModelling)


def eval_batches(examples: Sequence[Example] | Sequence[PreferenceExample], batch_tokens: int) -> list[list[int]]:
    """Example indices grouped by length into padded micro-batches of about ``batch_tokens`` (rows x longest)."""
    return plan_epoch(examples, batch_tokens, packing=False, seed=0, epoch=0)


def _units(examples: Sequence[Example] | Sequence[PreferenceExample], indices: Sequence[int]) -> int:
    if examples and isinstance(examples[0], PreferenceExample):
        return len(indices)
    return sum(trained_tokens(examples[i]) for i in indices)


def split_prompt(example: Example) -> tuple[list[int], list[int]] | None:
    """The prompt and the reference answer: the last labelled span and everything before it."""
    labels = example.labels
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=None)
    if end is None:
        return None
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    if start == 0:
        return None  # nothing to condition on
    return list(example.input_ids[:start]), list(example.input_ids[start : end + 1])


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _comparison(base: SetScores | None, adapted: SetScores | None, token_loss: bool) -> LossComparison | None:
    if base is None or adapted is None:
        return None
    return LossComparison(
        base_loss=_finite(base.loss),
        adapter_loss=_finite(adapted.loss),
        base_perplexity=_perplexity(base.loss) if token_loss else None,
        adapter_perplexity=_perplexity(adapted.loss) if token_loss else None,
        samples=adapted.samples,
        base_exact_match=base.exact_match,
        adapter_exact_match=adapted.exact_match,
        base_json_valid=base.json_valid,
        adapter_json_valid=adapted.json_valid,
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss) or loss > 700:  # exp overflows a float beyond ~709
        return None
    return math.exp(loss)
