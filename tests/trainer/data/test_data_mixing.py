"""Mixing sources by weight, eval splits and eval caps: sizes, proportions and determinism.

The functions work on sizes and return positions (a set per source; None: every row), so a token
store's sources are mixed without a Python object per row; the pipeline turns positions into rows.
"""

from __future__ import annotations

from finetune_trainer.data.mixing import apportion, cap_positions, holdout_positions, mix_selection


def test_apportion_splits_the_total_exactly_in_proportion_to_the_weights():
    assert apportion(10, [1.0, 1.0, 2.0]) == [3, 2, 5]  # 2.5, 2.5, 5: the tie goes to the earlier source


def test_the_mix_ends_when_the_first_source_is_used_up():
    picks, counts = mix_selection([70, 30], [1.0, 1.0], seed=1)

    assert counts == [30, 30]
    assert len(picks[0]) == 30 and picks[1] is None


def test_each_source_contributes_its_normalised_weights_share():
    picks, counts = mix_selection([90, 10], [0.8, 0.2], seed=1)

    assert counts == [40, 10]
    assert len(picks[0]) == 40 and picks[1] is None


def test_a_small_task_set_with_a_large_replay_corpus_is_trained_on_once_per_epoch():
    picks, counts = mix_selection([1000, 100_000], [0.9, 0.1], seed=1)

    assert counts == [1000, 111]
    assert picks[0] is None and len(picks[1]) == 111  # positions, so no row is repeated
    assert all(0 <= position < 100_000 for position in picks[1])


def test_a_large_source_is_subsampled_without_replacement():
    picks, counts = mix_selection([90, 10], [0.5, 0.5], seed=1)

    assert counts == [10, 10]
    assert len(picks[0]) == 10 and picks[0] <= set(range(90))


def test_proportional_weights_give_the_sources_themselves():
    assert mix_selection([3, 1], [3.0, 1.0], seed=1) == ([None, None], [3, 1])


def test_an_empty_source_gives_its_share_to_the_others():
    assert mix_selection([0, 5], [0.9, 0.1], seed=1) == ([None, None], [0, 5])
    assert mix_selection([0, 0], [0.5, 0.5], seed=1) == ([set(), set()], [0, 0])


def test_mix_is_the_same_for_the_same_seed_and_differs_for_another():
    sizes, weights = [500, 100], [0.5, 0.5]

    assert mix_selection(sizes, weights, seed=7) == mix_selection(sizes, weights, seed=7)
    assert mix_selection(sizes, weights, seed=7)[0] != mix_selection(sizes, weights, seed=8)[0]
    assert mix_selection(sizes, weights, seed=7)[0] != mix_selection(sizes, weights, seed=7, purpose="mix-epoch-1")[0]


def test_holdout_takes_the_fraction():
    held_out = holdout_positions(100, 0.1, seed=3, source=0)

    assert len(held_out) == 10 and held_out <= set(range(100))


def test_holdout_is_the_same_for_the_same_seed_and_source_and_differs_otherwise():
    assert holdout_positions(100, 0.1, seed=3, source=0) == holdout_positions(100, 0.1, seed=3, source=0)
    assert holdout_positions(100, 0.1, seed=3, source=0) != holdout_positions(100, 0.1, seed=4, source=0)
    assert holdout_positions(100, 0.1, seed=3, source=0) != holdout_positions(100, 0.1, seed=3, source=1)


def test_holdout_of_a_small_source_takes_one_row_and_never_its_only_row():
    assert len(holdout_positions(5, 0.05, seed=0, source=0)) == 1
    assert len(holdout_positions(2, 0.9, seed=0, source=0)) == 1
    assert holdout_positions(1, 0.5, seed=0, source=0) == set()


def test_cap_keeps_at_most_max_rows_chosen_by_seed():
    capped = cap_positions(100, 10, seed=5, purpose="eval")

    assert capped is not None and len(capped) == 10 and capped <= set(range(100))
    assert capped == cap_positions(100, 10, seed=5, purpose="eval")
    assert capped != set(range(10))


def test_cap_larger_than_the_rows_keeps_them_all():
    assert cap_positions(2, 10, seed=5, purpose="eval") is None
