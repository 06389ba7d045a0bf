"""Packing is exact: examples side by side in one row see nothing of each other.

If attention leaked across example boundaries (or a target crossed one), the loss of a packed row
would differ from the token-weighted mean of the same examples run one at a time.
"""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.batching import collate
from finetune_trainer.data.types import IGNORE_INDEX, Example, PreferenceExample
from finetune_trainer.inputs import to_model_inputs
from finetune_trainer.losses import sequence_log_probs, summed_token_loss

pytestmark = pytest.mark.trainer

TEXTS = [
    ("What colour is the sky?", " The sky is blue."),
    ("How many legs does a spider have?", " A spider has eight legs."),
    ("Q:", " Paris is the capital of France, and a Job runs pods to completion."),
    ("What do cows drink? Tell me in a few words please.", " Water."),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation=request.param, dtype=torch.float32
    )
    return loaded.eval()


def completion_example(tokenizer, prompt: str, completion: str) -> Example:
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return Example(input_ids=prompt_ids + completion_ids, labels=labels)


def text_example(tokenizer, text: str) -> Example:
    ids = tokenizer(text)["input_ids"]
    return Example(input_ids=ids, labels=[IGNORE_INDEX, *ids[1:]])


def mean_loss(model, examples, *, packing: bool, flat: bool = False, pad_id: int = 0) -> tuple[float, int]:
    batch = collate(examples, list(range(len(examples))), packing, pad_id)
    inputs = to_model_inputs(batch, pad_id, flat=flat)
    with torch.no_grad():
        total = summed_token_loss(model, inputs)
    return float(total) / inputs.target_tokens, inputs.target_tokens


@pytest.mark.parametrize("kind", ["completion", "text"])
def test_a_packed_row_has_the_loss_of_its_examples_run_one_by_one(model, tokenizer, kind):
    if kind == "completion":
        examples = [completion_example(tokenizer, p, c) for p, c in TEXTS]
    else:
        examples = [text_example(tokenizer, p + c) for p, c in TEXTS]

    packed, packed_tokens = mean_loss(model, examples, packing=True)
    singles = [mean_loss(model, [example], packing=True) for example in examples]
    weighted = sum(loss * tokens for loss, tokens in singles) / sum(tokens for _, tokens in singles)

    assert packed_tokens == sum(tokens for _, tokens in singles)
    assert packed == pytest.approx(weighted, abs=1e-5)


def test_padded_rows_and_their_flat_join_give_the_same_loss_as_packing(model, tokenizer):
    examples = [completion_example(tokenizer, p, c) for p, c in TEXTS]
    packed, _ = mean_loss(model, examples, packing=True)
    padded, _ = mean_loss(model, examples, packing=False, pad_id=tokenizer.pad_token_id)
    flat, _ = mean_loss(model, examples, packing=False, flat=True, pad_id=tokenizer.pad_token_id)
    assert padded == pytest.approx(packed, abs=1e-5)
    assert flat == pytest.approx(packed, abs=1e-5)


def test_packed_preference_pairs_keep_each_sequence_log_probability(model, tokenizer):
    pairs = [
        PreferenceExample(
            chosen=completion_example(tokenizer, prompt, answer),
            rejected=completion_example(tokenizer, prompt, " I do not know."),
        )
        for prompt, answer in TEXTS[:3]
    ]
    batch = collate(pairs, [0, 1, 2], True, tokenizer.pad_token_id)
    with torch.no_grad():
        packed = sequence_log_probs(model, to_model_inputs(batch, tokenizer.pad_token_id))
        one_by_one = []
        for sequence in [p.chosen for p in pairs] + [p.rejected for p in pairs]:
            single = collate([sequence], [0], True, tokenizer.pad_token_id)
            one_by_one.append(float(sequence_log_probs(model, to_model_inputs(single, tokenizer.pad_token_id))[0]))
    assert packed.tolist() == pytest.approx(one_by_one, abs=1e-4)
