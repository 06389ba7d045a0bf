"""load_data end to end: sources read, validated, accounted, split, mixed and tokenized by configuration."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from finetune_core.api import ExitCode
from finetune_trainer.data import ConfigError, DataError, PreferenceExample, load_data

pytestmark = pytest.mark.trainer


def chat(i: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    }


def completion(i: int) -> dict:
    return {"prompt": f"Question {i}?", "completion": f" Answer {i}."}


def keys(examples) -> set[tuple[int, ...]]:
    return {tuple(example.input_ids) for example in examples}


def test_each_kind_of_invalid_row_is_counted_with_its_file_and_line(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl(
        "train.jsonl",
        [
            chat(0),
            '{"messages": [',
            {"conversation": []},
            {"messages": "Hi"},
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "robot", "content": "Hi"}]},
            {"messages": [{"role": "user", "content": "Hi"}]},
            *[chat(i) for i in range(1, 10)],
        ],
    )
    config = make_config([path], maxInvalidFraction=0.5)

    (stats,) = load_data(config, tokenizer, resolve).train_stats

    uri = f"file://{path}"
    assert (stats.rows, stats.invalid_rows) == (16, 6)
    assert stats.invalid_examples == [
        f"{uri}:2: malformed JSON: Expecting value (column 15)",
        f'{uri}:3: missing field "messages"',
        f'{uri}:4: field "messages" must be a list, got a string',
        f"{uri}:5: messages[0].content is empty",
        f'{uri}:6: messages[0] has unknown role "robot" (expected system, user, assistant, tool)',
        f"{uri}:7: no assistant message: there is nothing to learn from this conversation",
    ]


def test_more_invalid_rows_than_allowed_is_a_data_error_naming_the_source_with_examples(
    write_jsonl, make_config, tokenizer, resolve
):
    path = write_jsonl("train.jsonl", [completion(0), '{"prompt": 1', {"prompt": "Q"}, *map(completion, range(1, 8))])

    with pytest.raises(DataError) as failed:
        load_data(make_config([path], maxInvalidFraction=0.1), tokenizer, resolve)

    message = str(failed.value)
    assert message.startswith(f"spec.data.train[0] (file://{path}): 2 of 10 rows are invalid (20.0%)")
    assert "spec.data.maxInvalidFraction allows (10.0%)" in message
    assert f"\n  file://{path}:2: malformed JSON" in message
    assert f'\n  file://{path}:3: missing field "completion"' in message
    assert failed.value.exit_code == ExitCode.DATA_ERROR


def test_source_without_a_single_valid_row_is_a_data_error_whatever_the_threshold(
    write_jsonl, make_config, tokenizer, resolve
):
    path = write_jsonl("train.jsonl", [{"prompt": "Q", "completion": ""}] * 3)

    with pytest.raises(DataError, match=r"none of its 3 rows is valid"):
        load_data(make_config([path], maxInvalidFraction=1.0), tokenizer, resolve)


def test_every_invalid_row_is_counted_but_ten_are_kept_as_examples(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", [*(["{broken"] * 25), *map(completion, range(25))])

    (stats,) = load_data(make_config([path], maxInvalidFraction=0.5), tokenizer, resolve).train_stats

    assert stats.invalid_rows == 25
    assert len(stats.invalid_examples) == 10


def test_empty_file_is_a_data_error(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", [])

    with pytest.raises(DataError, match=r"spec\.data\.train\[0\] \(file://.*train\.jsonl\) has no rows"):
        load_data(make_config([path]), tokenizer, resolve)


def test_directory_without_data_files_is_a_data_error(tmp_path, make_config, tokenizer, resolve):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "README.md").write_text("nothing here")

    with pytest.raises(DataError, match="has no rows"):
        load_data(make_config([tmp_path / "train"]), tokenizer, resolve)


def test_format_is_detected_per_source(write_jsonl, write_parquet, make_config, tokenizer, resolve):
    chats = write_jsonl("chat.jsonl", map(chat, range(10)))
    replay = write_parquet("general.parquet", [{"text": f"General text number {i}."} for i in range(10)])

    bundle = load_data(make_config([chats, replay]), tokenizer, resolve)

    assert bundle.formats == ["messages", "text"]


def test_declared_format_is_used_instead_of_detection(write_csv, make_config, tokenizer, resolve):
    path = write_csv("train.csv", ["text", "prompt", "completion"], [[f"t{i}", f"p{i}", f"c{i}"] for i in range(10)])

    bundle = load_data(make_config([{"uri": f"file://{path}", "format": "text"}]), tokenizer, resolve)

    assert bundle.formats == ["text"]


def test_source_of_unknown_fields_is_a_data_error_asking_for_the_format(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", [{"question": "q", "answer": "a"}])

    with pytest.raises(DataError, match=r"cannot tell the format.*fields answer, question.*spec\.data\.format"):
        load_data(make_config([path]), tokenizer, resolve)


def test_chat_data_without_a_chat_template_is_a_config_error_naming_the_source(
    write_jsonl, make_config, tokenizer_without_template, resolve
):
    path = write_jsonl("train.jsonl", map(chat, range(5)))

    with pytest.raises(ConfigError) as failed:
        load_data(make_config([path]), tokenizer_without_template, resolve)

    assert str(failed.value).startswith(f"spec.data.train[0] (file://{path}) holds messages rows, but")
    assert "spec.data.chatTemplate" in str(failed.value)
    assert failed.value.exit_code == ExitCode.CONFIG_ERROR


def test_dpo_objective_on_chat_data_is_a_config_error(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", map(chat, range(5)))

    with pytest.raises(ConfigError, match="dpo objective trains on preference rows"):
        load_data(make_config([path], objective="dpo"), tokenizer, resolve)


def test_preference_data_without_the_dpo_objective_is_a_config_error(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 5)

    with pytest.raises(ConfigError, match=r"set spec\.objective to dpo"):
        load_data(make_config([path]), tokenizer, resolve)


def test_dpo_objective_gives_preference_pairs(write_jsonl, make_config, tokenizer, resolve):
    rows = [{"prompt": f"Q{i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(10)]
    path = write_jsonl("train.jsonl", rows)

    bundle = load_data(make_config([path], objective="dpo"), tokenizer, resolve)

    assert len(bundle.train) + len(bundle.eval) == 10
    assert all(isinstance(pair, PreferenceExample) for pair in [*bundle.train, *bundle.eval])


def test_eval_split_holds_rows_out_of_training(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", map(completion, range(50)))

    bundle = load_data(make_config([path], eval={"splitFraction": 0.1}), tokenizer, resolve)

    assert (len(bundle.train), len(bundle.eval)) == (45, 5)
    assert not keys(bundle.train) & keys(bundle.eval)


def test_eval_split_is_the_same_for_the_same_seed_and_differs_for_another(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", map(completion, range(50)))

    def held_out(seed: int):
        return keys(load_data(make_config([path], training={"seed": seed}), tokenizer, resolve).eval)

    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)


def test_eval_set_is_read_from_its_uri_and_capped_at_max_samples(write_jsonl, make_config, tokenizer, resolve):
    train = write_jsonl("train.jsonl", map(completion, range(10)))
    evaluation = write_jsonl("eval.jsonl", map(completion, range(100, 130)))
    config = make_config([train], eval={"uri": f"file://{evaluation}"}, evaluation={"maxSamples": 8})

    bundle = load_data(config, tokenizer, resolve)

    assert (len(bundle.train), len(bundle.eval), bundle.eval_stats.rows) == (10, 8, 30)


def test_general_data_is_read_in_its_format_and_capped_at_max_samples(write_jsonl, make_config, tokenizer, resolve):
    train = write_jsonl("train.jsonl", map(completion, range(10)))
    general = write_jsonl("general.jsonl", [{"text": f"General document {i}."} for i in range(20)])
    config = make_config([train], general={"uri": f"file://{general}"}, evaluation={"maxSamples": 5})

    bundle = load_data(config, tokenizer, resolve)

    assert (len(bundle.general), bundle.general_stats.format, bundle.general_stats.rows) == (5, "text", 20)


def test_training_sources_are_mixed_by_weight(write_jsonl, make_config, tokenizer, resolve):
    task = write_jsonl("task.jsonl", map(completion, range(40)))
    replay = write_jsonl("replay.jsonl", [{"text": f"Replay document {i}."} for i in range(10)])
    config = make_config(
        [{"uri": f"file://{task}", "weight": 3.0}, {"uri": f"file://{replay}", "weight": 1.0}],
        eval={"uri": f"file://{task}"},
    )

    bundle = load_data(config, tokenizer, resolve)

    assert bundle.mix_counts == [30, 10]  # replay's 10 rows are a quarter of 40: task contributes 30
    assert Counter(example.source for example in bundle.train) == {0: 30, 1: 10}


def test_the_split_eval_set_is_mixed_like_the_training_data(write_jsonl, make_config, tokenizer, resolve):
    task = write_jsonl("task.jsonl", map(completion, range(100)))
    replay = write_jsonl("replay.jsonl", [{"text": f"Replay document {i}."} for i in range(2000)])
    config = make_config(
        [{"uri": f"file://{task}", "weight": 0.9}, {"uri": f"file://{replay}", "format": "text", "weight": 0.1}]
    )

    bundle = load_data(config, tokenizer, resolve)

    # 10 task rows and 200 replay rows are held out; the eval set keeps the 9:1 mix (not 10 against 200).
    assert Counter(example.source for example in bundle.eval) == {0: 10, 1: 1}
    assert bundle.mix_counts == [90, 10]


def test_each_epoch_draws_its_own_rows_of_a_subsampled_source(write_jsonl, make_config, tokenizer, resolve):
    task = write_jsonl("task.jsonl", map(completion, range(20)))
    replay = write_jsonl("replay.jsonl", [{"text": f"Replay document {i}."} for i in range(400)])
    config = make_config(
        [{"uri": f"file://{task}", "weight": 0.8}, {"uri": f"file://{replay}", "format": "text", "weight": 0.2}],
        eval={"uri": f"file://{task}"},
    )

    bundle = load_data(config, tokenizer, resolve)

    first, second = bundle.epoch_mix(0), bundle.epoch_mix(1)
    assert [bundle.pool[i] for i in first] == list(bundle.train)  # epoch 0 is the mix the report counts
    replay_of = lambda mix: {i for i in mix if bundle.pool[i].source == 1}  # noqa: E731
    assert len(replay_of(first)) == len(replay_of(second)) == 5  # 20 task rows are 80%
    assert replay_of(first) != replay_of(second)
    assert {i for i in first if bundle.pool[i].source == 0} == {i for i in second if bundle.pool[i].source == 0}
    assert list(bundle.epoch_mix(1)) == list(second)  # deterministic


def test_overlong_rows_are_counted_as_truncated(write_jsonl, make_config, tokenizer, resolve):
    long = {"prompt": "Q", "completion": " the quick brown fox jumps over the lazy dog" * 10}
    path = write_jsonl("train.jsonl", [long, long, *map(completion, range(8))])

    (stats,) = load_data(make_config([path], training={"maxSeqLength": 32}), tokenizer, resolve).train_stats

    assert (stats.truncated_rows, stats.dropped_rows) == (2, 0)


def test_overlong_rows_are_counted_as_dropped_when_configured(write_jsonl, make_config, tokenizer, resolve):
    long = {"prompt": "Q", "completion": " the quick brown fox jumps over the lazy dog" * 10}
    path = write_jsonl("train.jsonl", [long, long, *map(completion, range(8))])
    config = make_config([path], training={"maxSeqLength": 32}, overlongRows="drop", eval={"uri": f"file://{path}"})

    bundle = load_data(config, tokenizer, resolve)

    assert (bundle.train_stats[0].truncated_rows, bundle.train_stats[0].dropped_rows) == (0, 2)
    assert len(bundle.train) == 8


def test_source_whose_every_row_is_dropped_is_a_data_error(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", [{"prompt": "Q", "completion": " the quick brown fox" * 20}] * 3)
    config = make_config([path], training={"maxSeqLength": 16}, overlongRows="drop")

    with pytest.raises(DataError, match=r"every usable row was dropped.*maxSeqLength"):
        load_data(config, tokenizer, resolve)


def test_tokens_of_every_example_are_counted_per_source(write_jsonl, make_config, tokenizer, resolve):
    path = write_jsonl("train.jsonl", map(completion, range(10)))

    bundle = load_data(make_config([path]), tokenizer, resolve)

    assert bundle.train_stats[0].tokens == sum(len(example) for example in [*bundle.train, *bundle.eval])


def test_stats_convert_to_the_reports_source_statistics(write_jsonl, make_config, tokenizer, resolve):
    from dataclasses import asdict

    from finetune_core.api import SourceStatistics

    path = write_jsonl("train.jsonl", map(completion, range(10)))

    (stats,) = load_data(make_config([path]), tokenizer, resolve).train_stats

    assert json.loads(SourceStatistics(**asdict(stats)).model_dump_json())["rows"] == 10
