"""Label masking per format: the tokens the loss is taken on decode to exactly what the model should learn."""

from __future__ import annotations

import pytest
from finetune_trainer.data import ConfigError
from finetune_trainer.data.formats import RowError, parse_row
from finetune_trainer.data.tokenize import ExampleBuilder
from finetune_trainer.data.types import IGNORE_INDEX, Example

from hack.tinymodels import CHATML_TEMPLATE

pytestmark = pytest.mark.trainer

END = "<|im_end|>"  # the tiny tokenizer's EOS and ChatML's end of turn
CHATML_WITHOUT_MARKERS = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ]
}


def build(tokenizer, format_name: str, row: dict, **options) -> list:
    return list(
        ExampleBuilder(tokenizer, **{"max_seq_length": 256, **options}).build(parse_row(format_name, row)).examples
    )


def trained_text(tokenizer, example: Example) -> str:
    return tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])


def test_prompt_completion_learns_the_completion_and_eos_only(tokenizer):
    (example,) = build(tokenizer, "prompt-completion", {"prompt": "2+2=", "completion": " 4"})

    assert tokenizer.decode(example.input_ids) == f"2+2= 4{END}"
    assert trained_text(tokenizer, example) == f" 4{END}"


def test_messages_learn_every_assistant_turn_and_its_end_of_turn_only(tokenizer):
    (example,) = build(tokenizer, "messages", CONVERSATION)

    assert trained_text(tokenizer, example) == f"Paris.{END}Madrid.{END}"


def test_template_without_generation_markers_masks_the_same_tokens_as_with_them(tokenizer):
    (with_markers,) = build(tokenizer, "messages", CONVERSATION)
    (by_prefixes,) = build(tokenizer, "messages", CONVERSATION, chat_template=CHATML_WITHOUT_MARKERS)

    assert by_prefixes == with_markers


def test_template_that_rewrites_earlier_turns_without_markers_is_a_config_error(tokenizer):
    unstable = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )

    with pytest.raises(ConfigError, match=r"\{% generation %\}"):
        build(tokenizer, "messages", CONVERSATION, chat_template=unstable)


WEIGHTED = {
    "messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Lyon.", "weight": 0},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Paris."},
    ]
}

TOOL_CALL = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "content": "4 C"},
        {"role": "assistant", "content": "It is 4 C."},
    ],
}


@pytest.mark.parametrize("template", [None, CHATML_WITHOUT_MARKERS], ids=["markers", "prefixes"])
def test_assistant_turns_with_weight_0_are_seen_but_not_learned(tokenizer, template):
    (example,) = build(tokenizer, "messages", WEIGHTED, chat_template=template)

    assert "Lyon." in tokenizer.decode(example.input_ids)
    assert trained_text(tokenizer, example) == f"Paris.{END}"


@pytest.mark.parametrize("template", [None, CHATML_WITHOUT_MARKERS], ids=["markers", "prefixes"])
def test_tool_calls_are_learned_and_tool_definitions_and_results_are_not(tokenizer, template):
    (example,) = build(tokenizer, "messages", TOOL_CALL, chat_template=template)

    rendered = tokenizer.decode(example.input_ids)
    assert rendered.startswith('<|im_start|>system\n# Tools\n{"type": "function"')
    assert "<|im_start|>tool\n4 C<|im_end|>" in rendered
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert trained_text(tokenizer, example) == f"{call}{END}It is 4 C.{END}"


def test_a_conversation_with_tools_and_a_template_without_them_is_refused(tokenizer):
    without_tools = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

    with pytest.raises(RowError, match="the chat template does not render tools"):
        build(tokenizer, "messages", TOOL_CALL, chat_template=without_tools)


def test_alpaca_learns_the_output_after_instruction_and_input(tokenizer):
    (example,) = build(tokenizer, "alpaca", {"instruction": "Translate", "input": "bonjour", "output": "hello"})

    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>user\nTranslate\n\nbonjour")
    assert trained_text(tokenizer, example) == f"hello{END}"


def test_sharegpt_learns_the_gpt_turns_only(tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there"}]}

    (example,) = build(tokenizer, "sharegpt", row)

    assert trained_text(tokenizer, example) == f"Hello there{END}"


def test_text_learns_every_token_but_the_first_and_ends_with_eos(tokenizer):
    (example,) = build(tokenizer, "text", {"text": "The quick brown fox"})

    assert tokenizer.decode(example.input_ids) == f"The quick brown fox{END}"
    assert example.labels[0] == IGNORE_INDEX
    assert example.labels[1:] == example.input_ids[1:]


def test_long_text_is_split_into_max_length_chunks_not_truncated(tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    chunks = build(tokenizer, "text", {"text": text}, max_seq_length=64)

    assert all(len(chunk) == 64 for chunk in chunks[:-1])
    assert [token for chunk in chunks for token in chunk.input_ids] == whole


def test_plain_preference_masks_the_prompt_in_chosen_and_rejected(tokenizer):
    (pair,) = build(tokenizer, "preference", {"prompt": "Sky colour?", "chosen": " Blue", "rejected": " Green"})

    assert tokenizer.decode(pair.chosen.input_ids) == f"Sky colour? Blue{END}"
    assert (trained_text(tokenizer, pair.chosen), trained_text(tokenizer, pair.rejected)) == (
        f" Blue{END}",
        f" Green{END}",
    )


def test_conversational_preference_masks_the_whole_prompt_including_its_assistant_turns(tokenizer):
    row = {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hey"},
            {"role": "user", "content": "Sky?"},
        ],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": "Green.",
    }

    (pair,) = build(tokenizer, "preference", row)

    assert (trained_text(tokenizer, pair.chosen), trained_text(tokenizer, pair.rejected)) == (
        f"Blue.{END}",
        f"Green.{END}",
    )


def test_chat_rows_without_any_template_are_a_config_error(tokenizer_without_template):
    with pytest.raises(ConfigError, match=r"spec\.data\.chatTemplate"):
        build(tokenizer_without_template, "messages", CONVERSATION)


def test_configured_chat_template_is_used_when_the_tokenizer_has_none(tokenizer_without_template):
    (example,) = build(tokenizer_without_template, "messages", CONVERSATION, chat_template=CHATML_TEMPLATE)

    assert trained_text(tokenizer_without_template, example) == f"Paris.{END}Madrid.{END}"


def test_overlong_row_is_truncated_to_max_length_keeping_its_start(tokenizer):
    row = {"prompt": "Q:", "completion": " the quick brown fox jumps over the lazy dog" * 5}
    builder = ExampleBuilder(tokenizer, max_seq_length=16, overlong="truncate")

    tokenized = builder.build(parse_row("prompt-completion", row))

    assert tokenized.outcome == "truncated"
    assert tokenizer.decode(tokenized.examples[0].input_ids).startswith("Q: the quick")
    assert len(tokenized.examples[0]) == 16


def test_overlong_row_is_dropped_when_configured(tokenizer):
    row = {"prompt": "Q:", "completion": " the quick brown fox jumps over the lazy dog" * 5}

    tokenized = ExampleBuilder(tokenizer, max_seq_length=16, overlong="drop").build(parse_row("prompt-completion", row))

    assert (tokenized.outcome, tokenized.examples) == ("dropped", ())


def test_row_whose_prompt_fills_the_max_length_is_dropped_as_nothing_is_left_to_learn(tokenizer):
    row = {"prompt": "the quick brown fox jumps over the lazy dog " * 5, "completion": " ok"}

    tokenized = ExampleBuilder(tokenizer, max_seq_length=16).build(parse_row("prompt-completion", row))

    assert tokenized.outcome == "dropped"
