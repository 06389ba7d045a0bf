"""Row formats: detection from the first rows, normalisation, and the reason an invalid row gets."""

from __future__ import annotations

import pytest
from finetune_trainer.data.formats import (
    ChatSample,
    CompletionSample,
    PreferenceSample,
    RowError,
    TextSample,
    detect_format,
    parse_row,
)

MESSAGES_ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (MESSAGES_ROW, "messages"),
        ({"prompt": "2+2=", "completion": "4"}, "prompt-completion"),
        ({"input": "2+2=", "output": "4"}, "prompt-completion"),
        ({"instruction": "Add", "input": "2+2", "output": "4"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "sharegpt"),
        ({"text": "Once upon a time"}, "text"),
        ({"prompt": "Q", "chosen": "good", "rejected": "bad"}, "preference"),
    ],
)
def test_format_is_detected_from_the_fields_of_the_rows(row, expected):
    assert detect_format([row, row]) == expected


def test_detection_follows_the_majority_of_the_first_rows():
    assert detect_format([{"text": "a"}, MESSAGES_ROW, MESSAGES_ROW, ["not", "an", "object"]]) == "messages"


def test_detection_finds_nothing_in_rows_of_unknown_fields():
    assert detect_format([{"question": "a", "answer": "b"}]) is None


def test_messages_row_is_a_chat_sample():
    assert parse_row("messages", MESSAGES_ROW) == ChatSample(
        ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})
    )


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_tool_calls_have_their_json_arguments_decoded_and_tool_results_are_kept():
    row = {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"celsius": 4}'},
            {"role": "assistant", "content": "4 °C in Oslo."},
        ],
    }
    sample = parse_row("messages", row)

    assert sample.tools == (WEATHER_TOOL,) and sample.uses_tools
    assert sample.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}, "id": "c1"}
        ],
    }
    assert sample.messages[2] == {"role": "tool", "content": '{"celsius": 4}', "tool_call_id": "c1"}


def test_assistant_messages_with_weight_0_are_listed_as_untrained():
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye", "weight": 1},
        ]
    }
    sample = parse_row("messages", row)

    assert sample.untrained == frozenset({1}) and not sample.uses_tools
    assert all("weight" not in message for message in sample.messages)


def test_message_content_given_as_text_parts_is_joined():
    row = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]}]
    }
    row["messages"].append({"role": "assistant", "content": "Hello"})

    assert parse_row("messages", row).messages[0] == {"role": "user", "content": "Hi you"}


def test_alpaca_row_becomes_a_user_turn_with_instruction_and_input_then_the_output():
    sample = parse_row("alpaca", {"instruction": "Translate", "input": "bonjour", "output": "hello"})

    assert sample == ChatSample(
        ({"role": "user", "content": "Translate\n\nbonjour"}, {"role": "assistant", "content": "hello"})
    )


def test_alpaca_row_without_input_is_the_instruction_alone():
    sample = parse_row("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"})

    assert sample.messages[0] == {"role": "user", "content": "Say hi"}


def test_sharegpt_roles_become_chat_roles():
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }

    assert [message["role"] for message in parse_row("sharegpt", row).messages] == ["system", "user", "assistant"]


def test_prompt_completion_accepts_input_and_output_as_its_fields():
    assert parse_row("prompt-completion", {"input": "2+2=", "output": "4"}) == CompletionSample("2+2=", "4")


def test_text_row_is_a_text_sample():
    assert parse_row("text", {"text": "Once"}) == TextSample("Once")


def test_plain_preference_row_keeps_its_strings():
    assert parse_row("preference", {"prompt": "Q", "chosen": "A", "rejected": "B"}) == PreferenceSample("Q", "A", "B")


def test_preference_row_with_a_message_prompt_is_conversational_throughout():
    row = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": "A",
        "rejected": [{"role": "assistant", "content": "B"}],
    }

    sample = parse_row("preference", row)

    assert sample.conversational
    assert sample.chosen == ({"role": "assistant", "content": "A"},)
    assert sample.rejected == ({"role": "assistant", "content": "B"},)


@pytest.mark.parametrize(
    ("format_name", "row", "reason"),
    [
        ("messages", ["a list"], "expected an object with the fields of the messages format, got a list"),
        ("messages", {"conversation": []}, 'missing field "messages"'),
        ("messages", {"messages": "Hi"}, 'field "messages" must be a list, got a string'),
        ("messages", {"messages": []}, "messages is empty"),
        ("messages", {"messages": [{"role": "user", "content": "Hi"}]}, "no assistant message"),
        ("messages", {"messages": [{"role": "bot", "content": "Hi"}]}, 'messages[0] has unknown role "bot"'),
        ("messages", {"messages": [{"content": "Hi"}]}, 'messages[0] has no "role"'),
        ("messages", {"messages": [{"role": "user", "content": " "}]}, "messages[0].content is empty"),
        (
            "messages",
            {"messages": [{"role": "user", "content": 3}]},
            "messages[0].content must be a string, got a number",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi", "weight": 0}, {"role": "assistant", "content": "A"}]},
            "messages[0].weight is set on a user message: only assistant messages have a weight",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A", "weight": 0.5}]},
            "messages[1].weight must be 0 or 1, got 0.5",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A", "weight": 0}]},
            "every assistant message has weight 0",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": {"name": "f"}}]},
            "messages[1].tool_calls must be a list, got an object",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [{"name": "f"}]}]},
            'messages[1].tool_calls[0] must be an object with a "function"',
        ),
        (
            "messages",
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{city: 1}"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments is not valid JSON",
        ),
        (
            "messages",
            {"messages": [{"role": "tool", "content": {"t": 1}}, {"role": "assistant", "content": "A"}]},
            "messages[0].content must be a string, got an object",
        ),
        ("messages", {"messages": MESSAGES_ROW["messages"], "tools": [{"type": "function"}]}, "tools[0] must be"),
        ("prompt-completion", {"prompt": "Q"}, 'missing field "completion"'),
        ("prompt-completion", {"prompt": "Q", "completion": ""}, 'field "completion" is empty'),
        ("prompt-completion", {"prompt": 1, "completion": "A"}, 'field "prompt" must be a string, got a number'),
        ("alpaca", {"instruction": "Do", "input": 5, "output": "ok"}, 'field "input" must be a string, got a number'),
        ("sharegpt", {"conversations": [{"from": "bing", "value": "Hi"}]}, 'conversations[0] has unknown from "bing"'),
        ("sharegpt", {"conversations": [{"from": "human", "value": "Hi"}]}, 'no "gpt" turn'),
        ("text", {"text": None}, 'missing field "text"'),
        ("preference", {"prompt": "Q", "chosen": "A"}, 'missing field "rejected"'),
        (
            "preference",
            {"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"},
            'chosen[0] has role "user": chosen holds only assistant messages',
        ),
    ],
)
def test_invalid_row_is_refused_with_its_reason(format_name, row, reason):
    with pytest.raises(RowError) as refused:
        parse_row(format_name, row)

    assert str(refused.value).startswith(reason)


def test_fields_that_parquet_fills_with_none_count_as_absent():
    # pyarrow gives every message of a struct column every field: the user's message has weight None.
    row = {
        "messages": [
            {"role": "user", "content": "Hi", "weight": None, "tool_call_id": None, "name": None, "tool_calls": None},
            {"role": "tool", "content": "4 C", "weight": None, "tool_call_id": None, "name": None, "tool_calls": None},
            {
                "role": "assistant",
                "content": "Hello",
                "weight": 0,
                "tool_call_id": None,
                "name": None,
                "tool_calls": None,
            },
            {
                "role": "assistant",
                "content": "Bye",
                "weight": None,
                "tool_call_id": None,
                "name": None,
                "tool_calls": None,
            },
        ]
    }
    sample = parse_row("messages", row)

    assert sample.untrained == frozenset({2})
    assert sample.messages[1] == {"role": "tool", "content": "4 C"}
