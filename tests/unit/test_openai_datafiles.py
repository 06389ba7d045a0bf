"""Uploaded files are checked line by line, as OpenAI checks them; the first bad line is named."""

from __future__ import annotations

import json

import pytest
from finetune_operator.openai_api.datafiles import MIN_EXAMPLES, FileCheck, checked_lines
from finetune_operator.openai_api.errors import ApiError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
DPO = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


def lines(*rows) -> list[bytes]:
    return [(row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows]


def check(raw: list[bytes]) -> tuple[FileCheck, list[dict]]:
    found = FileCheck()
    stored = [json.loads(line) for line in checked_lines(raw, found)]
    return found, stored


def refused(raw: list[bytes]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(raw)
    return caught.value


def test_a_chat_file_is_stored_as_it_came_and_known_as_chat():
    found, stored = check(lines(*[CHAT] * MIN_EXAMPLES))
    assert (found.kind, found.examples) == ("messages", MIN_EXAMPLES)
    assert stored == [CHAT] * MIN_EXAMPLES


def test_openais_preference_format_is_stored_as_the_trainers_prompt_chosen_rejected():
    found, stored = check(lines(*[DPO] * MIN_EXAMPLES))
    assert found.kind == "preference"
    assert stored[0] == {
        "prompt": DPO["input"]["messages"],
        "chosen": DPO["preferred_output"],
        "rejected": DPO["non_preferred_output"],
    }


def test_the_trainers_own_preference_format_is_accepted_too():
    found, _ = check(lines(*[{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * MIN_EXAMPLES))
    assert found.kind == "preference"


def test_blank_lines_are_skipped_but_counted_in_line_numbers():
    error = refused([b"\n", *lines(CHAT), b"not json\n"])
    assert "Line 3" in error.message


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"text": "hello"}, "expected a chat example"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]},
            "no assistant message with weight 1",
        ),
        ({"messages": [{"role": "user", "content": "x", "weight": 1}, CHAT["messages"][1]]}, "weight"),
        ({"messages": [{"role": "user", "content": 3}, CHAT["messages"][1]]}, "messages[0].content"),
        ({**DPO, "preferred_output": [{"role": "user", "content": "x"}]}, "assistant messages only"),
        ({**DPO, "input": {"messages": [CHAT["messages"][1]]}}, "ends with an assistant message"),
    ],
)
def test_a_bad_line_is_refused_with_its_number_and_reason(row, reason):
    good = DPO if isinstance(row, dict) and "input" in row else CHAT
    error = refused(lines(*[good] * 3, row, *[good] * 10))
    assert (error.status, error.param, error.code) == (400, "file", "invalid_file_format")
    assert error.message.startswith("Invalid file format. Line 4: ")
    assert reason in error.message


def test_the_reason_never_repeats_the_lines_content():
    secret = "s3cr3t-customer-data"
    error = refused(lines(*[CHAT] * 3, {"messages": [{"role": secret, "content": secret}]}))
    assert secret not in error.message


def test_json_nested_past_the_parsers_depth_is_a_refusal_not_a_server_error():
    error = refused(lines(*[CHAT] * 3, b"[" * 100_000))
    assert (error.status, error.code) == (400, "invalid_file_format")
    assert error.message == "Invalid file format. Line 4: JSON nested too deeply"


def test_one_kind_of_example_per_file():
    error = refused(lines(CHAT, DPO))
    assert "Line 2" in error.message and "one kind per file" in error.message


def test_too_few_examples_are_refused():
    error = refused(lines(*[CHAT] * (MIN_EXAMPLES - 1)))
    assert f"at least {MIN_EXAMPLES}" in error.message


def test_an_overlong_line_is_refused_without_being_parsed(monkeypatch):
    monkeypatch.setattr("finetune_operator.openai_api.datafiles.MAX_LINE_BYTES", 100)
    error = refused(lines(CHAT, {"messages": [{"role": "user", "content": "x" * 200}]}))
    assert "Line 2" in error.message and "longer than 100 bytes" in error.message
