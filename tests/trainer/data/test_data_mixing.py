"""Mixing sources by weight, eval splits and eval caps: sizes, proportions and determinism."""

from __future__ import annotations

from collections import Counter

from finetune_trainer.data.mixing import apportion, cap_rows, mix_by_weight, split_holdout


def source(name: str, size: int) -> list[str]:
    return [f"{name}{i}" for i in range(size)]


def test_apportion_splits_the_total_exactly_in_proportion_to_the_weights():
    assert apportion(10, [1.0, 1.0, 2.0]) == [3, 2, 5]  # 2.5, 2.5, 5: the tie goes to the earlier source


def test_the_mix_ends_when_the_first_source_is_used_up():
    mixed, counts = mix_by_weight([source("a", 70), source("b", 30)], [1.0, 1.0], seed=1)

    assert counts == [30, 30] and len(mixed) == 60


def test_each_source_contributes_its_normalised_weights_share():
    mixed, counts = mix_by_weight([source("a", 90), source("b", 10)], [0.8, 0.2], seed=1)

    assert counts == [40, 10]
    assert Counter(row[0] for row in mixed) == {"a": 40, "b": 10}


def test_a_small_task_set_with_a_large_replay_corpus_is_trained_on_once_per_epoch():
    mixed, counts = mix_by_weight([source("task", 1000), source("replay", 100_000)], [0.9, 0.1], seed=1)

    assert counts == [1000, 111]
    assert len(set(mixed)) == len(mixed), "no row is repeated"


def test_a_large_source_is_subsampled_without_replacement():
    mixed, _ = mix_by_weight([source("a", 90), source("b", 10)], [0.5, 0.5], seed=1)

    from_a = [row for row in mixed if row.startswith("a")]
    assert len(from_a) == 10
    assert len(set(from_a)) == 10


def test_proportional_weights_give_the_sources_themselves():
    mixed, _ = mix_by_weight([source("a", 3), source("b", 1)], [3.0, 1.0], seed=1)

    assert mixed == ["a0", "a1", "a2", "b0"]


def test_mix_is_the_same_for_the_same_seed_and_differs_for_another():
    sources, weights = [source("a", 500), source("b", 100)], [0.5, 0.5]

    assert mix_by_weight(sources, weights, seed=7) == mix_by_weight(sources, weights, seed=7)
    assert mix_by_weight(sources, weights, seed=7)[0] != mix_by_weight(sources, weights, seed=8)[0]


def test_holdout_takes_the_fraction_and_keeps_the_rest_in_order():
    rows = source("r", 100)

    train, held_out = split_holdout(rows, 0.1, seed=3, source=0)

    assert len(held_out) == 10
    assert sorted(train + held_out) == sorted(rows)
    assert train == [row for row in rows if row not in held_out]


def test_holdout_is_the_same_for_the_same_seed_and_source_and_differs_otherwise():
    rows = source("r", 100)

    assert split_holdout(rows, 0.1, seed=3, source=0) == split_holdout(rows, 0.1, seed=3, source=0)
    assert split_holdout(rows, 0.1, seed=3, source=0) != split_holdout(rows, 0.1, seed=4, source=0)
    assert split_holdout(rows, 0.1, seed=3, source=0) != split_holdout(rows, 0.1, seed=3, source=1)


def test_holdout_of_a_small_source_takes_one_row_and_never_its_only_row():
    assert len(split_holdout(source("r", 5), 0.05, seed=0, source=0)[1]) == 1
    assert split_holdout(["only"], 0.5, seed=0, source=0) == (["only"], [])


def test_cap_keeps_at_most_max_rows_chosen_by_seed():
    rows = source("r", 100)

    capped = cap_rows(rows, 10, seed=5, purpose="eval")

    assert len(capped) == 10
    assert capped == cap_rows(rows, 10, seed=5, purpose="eval")
    assert capped != rows[:10]


def test_cap_larger_than_the_rows_keeps_them_all():
    assert cap_rows(["a", "b"], 10, seed=5, purpose="eval") == ["a", "b"]
