"""Token-budget batching: packs and length buckets, steps over ranks, determinism and resumption."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from finetune_trainer.batching import collate, group_into_steps, plan_epoch, plan_steps
from finetune_trainer.data.types import IGNORE_INDEX, Example, PreferenceExample

PAD = 0
BUDGET = 256
PINNED_ORDER = [0, 9, 4, 7, 1, 5, 8, 2, 6, 3]  # seeded_permutation(10, 1, "epoch", 0)


def example(length: int, first_token: int = 1) -> Example:
    ids = [first_token + i for i in range(length)]
    return Example(input_ids=ids, labels=list(ids))


def corpus(count: int = 300, seed: int = 0) -> list[Example]:
    lengths = random.Random(seed).choices(range(3, 120), k=count)
    return [example(length, first_token=100 * i) for i, length in enumerate(lengths)]


def pairs(count: int = 60) -> list[PreferenceExample]:
    rng = random.Random(1)
    return [
        PreferenceExample(example(rng.randint(3, 60), 1000 * i), example(rng.randint(3, 60), 1000 * i + 500))
        for i in range(count)
    ]


def flatten(micro_batches):
    return [index for micro_batch in micro_batches for index in micro_batch]


@pytest.mark.parametrize("packing", [True, False])
def test_every_example_appears_exactly_once_per_epoch(packing):
    examples = corpus()

    plan = plan_epoch(examples, BUDGET, packing=packing, seed=1, epoch=0)

    assert sorted(flatten(plan)) == list(range(len(examples)))


@pytest.mark.parametrize("packing", [True, False])
def test_plan_is_the_same_for_the_same_seed_and_epoch(packing):
    examples = corpus()

    assert plan_epoch(examples, BUDGET, packing=packing, seed=1, epoch=2) == plan_epoch(
        examples, BUDGET, packing=packing, seed=1, epoch=2
    )


@pytest.mark.parametrize("packing", [True, False])
def test_plan_differs_between_epochs_and_seeds(packing):
    examples = corpus()

    first = plan_epoch(examples, BUDGET, packing=packing, seed=1, epoch=0)

    assert first != plan_epoch(examples, BUDGET, packing=packing, seed=1, epoch=1)
    assert first != plan_epoch(examples, BUDGET, packing=packing, seed=2, epoch=0)


def test_packs_stay_within_the_token_budget():
    examples = corpus()

    for pack in plan_epoch(examples, BUDGET, packing=True, seed=1, epoch=0):
        assert sum(len(examples[i]) for i in pack) <= BUDGET


def test_packs_are_filled_tightly():
    examples = corpus()

    plan = plan_epoch(examples, BUDGET, packing=True, seed=1, epoch=0)

    fill = sum(len(e) for e in examples) / (len(plan) * BUDGET)
    assert fill > 0.95


def test_packed_batch_is_one_row_of_whole_examples_with_their_lengths():
    examples = [example(3, 10), example(4, 20)]

    batch = collate(examples, [0, 1], packing=True, pad_id=PAD)

    assert batch.input_ids == [[10, 11, 12, 20, 21, 22, 23]]
    assert batch.seq_lens == [[3, 4]]
    assert batch.real_tokens == 7


def test_packed_position_ids_restart_at_zero_for_each_example():
    batch = collate([example(3), example(4)], [0, 1], packing=True, pad_id=PAD)

    assert batch.position_ids == [[0, 1, 2, 0, 1, 2, 3]]


def test_first_label_of_each_example_is_masked_so_no_example_predicts_across_a_boundary():
    batch = collate([example(3, 10), example(4, 20)], [0, 1], packing=True, pad_id=PAD)

    assert batch.labels == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, 21, 22, 23]]


def test_bucketed_batches_pad_within_the_token_budget():
    examples = corpus()

    for indices in plan_epoch(examples, BUDGET, packing=False, seed=1, epoch=0):
        batch = collate(examples, indices, packing=False, pad_id=PAD)
        assert len(batch.input_ids) * len(batch.input_ids[0]) <= BUDGET


def test_bucketing_pads_far_less_than_random_batches():
    examples = corpus()

    plan = plan_epoch(examples, BUDGET, packing=False, seed=1, epoch=0)

    padded = sum(len(indices) * max(len(examples[i]) for i in indices) for indices in plan)
    assert sum(len(e) for e in examples) / padded > 0.8


def test_padded_batch_pads_on_the_right_and_counts_only_real_tokens():
    batch = collate([example(2, 10), example(4, 20)], [0, 1], packing=False, pad_id=PAD)

    assert batch.input_ids == [[10, 11, PAD, PAD], [20, 21, 22, 23]]
    assert batch.labels == [[IGNORE_INDEX, 11, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 21, 22, 23]]
    assert batch.seq_lens == [[2], [4]]
    assert batch.real_tokens == 6


def test_an_example_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    examples = [example(10), example(BUDGET + 5), example(20)]

    plan = plan_epoch(examples, BUDGET, packing=True, seed=1, epoch=0)

    assert [1] in plan


@pytest.mark.parametrize("packing", [True, False])
def test_chosen_and_rejected_of_a_pair_share_a_micro_batch(packing):
    examples = pairs()

    plan = plan_epoch(examples, BUDGET, packing=packing, seed=1, epoch=0)

    assert sorted(flatten(plan)) == list(range(len(examples)))
    for indices in plan:
        batch = collate(examples, indices, packing=packing, pad_id=PAD)
        rows = len(batch.input_ids) * len(batch.input_ids[0])
        assert (sum(map(sum, batch.seq_lens)) if packing else rows) <= BUDGET


def test_preference_batch_lists_every_chosen_sequence_then_every_rejected_one():
    examples = [PreferenceExample(example(2, 10), example(3, 20)), PreferenceExample(example(2, 30), example(2, 40))]

    batch = collate(examples, [0, 1], packing=True, pad_id=PAD)

    assert batch.input_ids == [[10, 11, 30, 31, 20, 21, 22, 40, 41]]
    assert batch.seq_lens == [[2, 2, 3, 2]]


def test_steps_gather_about_batch_tokens_real_tokens():
    examples = corpus()

    steps = plan_steps(examples, micro_batch_tokens=BUDGET, batch_tokens=1024, packing=True, seed=1, epoch=0)

    assert all(abs(step.real_tokens - 1024) <= BUDGET for step in steps[:-1])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_gets_the_same_number_of_micro_batches_in_every_step(world_size):
    examples = corpus(301)

    steps = plan_steps(
        examples, micro_batch_tokens=BUDGET, batch_tokens=1500, packing=True, seed=1, epoch=0, world_size=world_size
    )

    for step in steps:
        assert len({len(step.for_rank(rank)) for rank in range(world_size)}) == 1


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_steps_over_all_ranks_hold_every_example_exactly_once(world_size):
    examples = corpus(301)

    steps = plan_steps(
        examples, micro_batch_tokens=BUDGET, batch_tokens=1500, packing=False, seed=1, epoch=0, world_size=world_size
    )

    seen = Counter(i for step in steps for rank in range(world_size) for i in flatten(step.for_rank(rank)))
    assert sorted(seen) == list(range(len(examples)))
    assert set(seen.values()) == {1}


def test_step_counts_the_trained_tokens_without_each_examples_first_token():
    examples = [example(3), Example(input_ids=[1, 2, 3, 4], labels=[IGNORE_INDEX, IGNORE_INDEX, 3, 4])]

    (step,) = group_into_steps([[0, 1]], examples, batch_tokens=100)

    assert (step.real_tokens, step.trained_tokens, step.examples) == (7, 4, 2)


def test_a_short_tail_joins_the_step_before():
    examples = [example(50) for _ in range(5)]

    steps = group_into_steps([[0], [1], [2], [3], [4]], examples, batch_tokens=200)

    assert [step.real_tokens for step in steps] == [250]


def test_a_tail_that_does_not_divide_among_ranks_is_split_until_it_does():
    examples = [example(10) for _ in range(4)]

    (step,) = group_into_steps([[0, 1, 2], [3]], examples, batch_tokens=40, world_size=3)

    assert [len(step.for_rank(rank)) for rank in range(3)] == [1, 1, 1]
    assert sorted(flatten(flatten(step.for_rank(rank) for rank in range(3)))) == [0, 1, 2, 3]


def test_a_resumed_process_plans_exactly_the_steps_not_yet_run():
    examples = corpus()
    arguments = {"micro_batch_tokens": BUDGET, "batch_tokens": 1024, "packing": True, "seed": 9, "epoch": 3}
    uninterrupted = plan_steps(examples, **arguments)
    # A resumed run is a new process: string hashing is salted differently there, so any dependence
    # of the plan on set or dict order would show.
    program = (
        "import json, random, sys\n"
        "from finetune_trainer.batching import plan_steps\n"
        "from finetune_trainer.data.types import Example\n"
        "lengths = random.Random(0).choices(range(3, 120), k=300)\n"
        "examples = [Example(list(range(n)), list(range(n))) for n in lengths]\n"
        f"steps = plan_steps(examples, **{arguments!r})[5:]\n"
        "print(json.dumps([[step.for_rank(0), step.real_tokens] for step in steps]))\n"
    )
    resumed = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(resumed.stdout) == [[step.for_rank(0), step.real_tokens] for step in uninterrupted[5:]]
    assert len(uninterrupted) > 5


def trained(steps) -> list[int]:
    return [index for step in steps for rank in step.micro_batches for batch in rank for index in batch]


@pytest.mark.parametrize("packing", [True, False])
def test_the_rest_of_an_epoch_under_another_layout_trains_every_example_once(packing):
    from finetune_trainer.batching import plan_steps_after

    examples = corpus()
    layout = {"batch_tokens": 1024, "seed": 3, "epoch": 1}
    before = plan_steps(examples, micro_batch_tokens=BUDGET, packing=packing, world_size=1, **layout)
    done = [{"world_size": 1, "micro_batch_tokens": BUDGET, "packing": packing, "steps": 5}]
    rest = plan_steps_after(examples, done, micro_batch_tokens=128, packing=packing, world_size=2, **layout)
    assert sorted(trained(before[:5]) + trained(rest)) == list(range(len(examples)))
    assert all(len(step.micro_batches) == 2 for step in rest)

    # And again, back to one process, after 3 steps of the two-process plan.
    done.append({"world_size": 2, "micro_batch_tokens": 128, "packing": packing, "steps": 3})
    last = plan_steps_after(examples, done, micro_batch_tokens=BUDGET, packing=packing, world_size=1, **layout)
    assert sorted(trained(before[:5]) + trained(rest[:3]) + trained(last)) == list(range(len(examples)))


def test_without_earlier_layouts_the_rest_of_an_epoch_is_the_epochs_plan():
    from finetune_trainer.batching import plan_steps_after

    examples = corpus()
    layout = {"micro_batch_tokens": BUDGET, "batch_tokens": 1024, "packing": True, "seed": 3, "epoch": 0}
    assert plan_steps_after(examples, [], **layout) == plan_steps(examples, **layout)


def test_a_resume_under_another_layout_keeps_the_epochs_steps_as_a_segment():
    from finetune_trainer.state import TrainState

    first = {"world_size": 1, "micro_batch_tokens": 256, "packing": False}
    state = TrainState(step=7, epoch=1, step_in_epoch=4)
    assert not state.adopt_layout(first)  # a checkpoint without a layout: nothing to compare with
    assert not state.adopt_layout(dict(first)) and state.step_in_epoch == 4
    second = {**first, "world_size": 2}
    assert state.adopt_layout(second)
    assert state.epoch_segments == [{**first, "steps": 4}] and state.step_in_epoch == 0 and state.plan_layout == second
    restored = TrainState.from_json(state.to_json())
    assert restored.epoch_segments == state.epoch_segments and restored.plan_layout == second


def best_fit_decreasing(lengths: list[int], budget: int) -> set[frozenset[int]]:
    """The packs of a plain best-fit decreasing, as sets of indices: what the planner's one window must give."""
    packs: list[list[int]] = []
    rooms: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [number for number, room in enumerate(rooms) if room >= lengths[index]]
        if lengths[index] > budget or not fits:
            packs.append([index])
            rooms.append(budget - lengths[index])
            continue
        tightest = min(fits, key=lambda number: (rooms[number], number))
        packs[tightest].append(index)
        rooms[tightest] -= lengths[index]
    return {frozenset(pack) for pack in packs}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_is_best_fit_decreasing_within_a_window(seed):
    lengths = random.Random(seed).sample(range(1, 200), 150)  # distinct: longest first has one order
    examples = [example(length) for length in lengths]

    plan = plan_epoch(examples, BUDGET, packing=True, seed=seed, epoch=0, window=len(examples))

    assert {frozenset(pack) for pack in plan} == best_fit_decreasing(lengths, BUDGET)


def test_bucketing_cuts_longest_first_while_rows_times_the_longest_fit():
    lengths = random.Random(4).sample(range(1, 120), 100)
    examples = [example(length) for length in lengths]

    plan = plan_epoch(examples, BUDGET, packing=False, seed=4, epoch=0, window=len(examples))

    expected, current = set(), []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if current and (len(current) + 1) * lengths[current[0]] > BUDGET:
            expected.add(frozenset(current))
            current = []
        current.append(index)
    expected.add(frozenset(current))
    assert {frozenset(batch) for batch in plan} == expected


def test_a_plan_is_arrays_and_builds_a_step_only_when_it_is_asked_for():
    examples = corpus(301)

    plan = plan_steps(
        examples, micro_batch_tokens=BUDGET, batch_tokens=700, packing=True, seed=1, epoch=0, world_size=2
    )

    assert plan.positions.dtype == np.int64 and sorted(plan.positions.tolist()) == list(range(len(examples)))
    assert plan[1:3] == [plan[1], plan[2]] and plan[-1] == plan[len(plan) - 1]
    with pytest.raises(IndexError):
        plan[len(plan)]
    step = plan[2]
    assert step.real_tokens == sum(len(examples[i]) for rank in step.micro_batches for batch in rank for i in batch)
    assert sorted(plan.trained_positions(3).tolist()) == sorted(trained(plan[:3]))
    assert plan.trained_positions(len(plan) + 5).tolist() == plan.positions.tolist()


def test_no_micro_batches_make_no_steps():
    assert len(group_into_steps([], [example(3)], batch_tokens=100, world_size=2)) == 0
    assert len(plan_steps([], micro_batch_tokens=BUDGET, batch_tokens=100, packing=True, seed=0, epoch=0)) == 0


def test_a_view_is_planned_from_its_measures_without_building_an_example():
    from finetune_trainer.data.views import ExampleView

    class Unbuildable(ExampleView):
        pairs = False

        def __len__(self):
            return 50_000

        def __getitem__(self, index):
            raise AssertionError("the planner built an example")

        def measure_arrays(self):
            lengths = np.arange(50_000, dtype=np.int64) % 200 + 1
            return lengths, lengths, lengths - 1

    plan = plan_steps(Unbuildable(), micro_batch_tokens=BUDGET, batch_tokens=1024, packing=False, seed=0, epoch=0)

    assert sorted(plan.positions.tolist()) == list(range(50_000))


def test_the_epoch_order_is_pinned_so_a_resume_on_another_numpy_plans_the_same_steps():
    from finetune_trainer.data.seeding import seeded_permutation

    # PCG64's raw outputs are numpy's promise across versions; this fails loudly if that ever breaks,
    # since a job resumed by an image with another numpy would then train on another order.
    assert seeded_permutation(10, 1, "epoch", 0).tolist() == PINNED_ORDER
    assert seeded_permutation(10, 1, "epoch", 1).tolist() != PINNED_ORDER


def test_the_planner_keeps_its_last_plan_and_only_that_one(monkeypatch):
    from types import SimpleNamespace

    from finetune_trainer import batching
    from finetune_trainer.batching import epoch_planner
    from finetune_trainer.data.views import Listed

    examples = corpus(200)
    bundle = SimpleNamespace(pool=Listed(examples), epoch_mix=lambda epoch: np.arange(len(examples), dtype=np.int64))
    planned = []
    monkeypatch.setattr(batching, "plan_steps_after", lambda *a, **k: planned.append(k["epoch"]) or object())
    plan_for_epoch = epoch_planner(
        bundle, micro_batch_tokens=BUDGET, batch_tokens=512, packing=False, seed=0, world_size=1
    )

    first = plan_for_epoch(0)
    assert plan_for_epoch(0) is first  # the run's total steps, then its training: planned once
    plan_for_epoch(1)
    plan_for_epoch(0, [{"micro_batch_tokens": 64, "packing": False, "world_size": 2, "steps": 3}])
    assert plan_for_epoch(0) is not first  # one plan held at a time: epoch 0's was let go, and is planned again
    assert planned == [0, 1, 0, 0]
