"""The work queue: keys not events, one worker per key, the earliest deadline wins, retries with capped
exponential backoff per key. Deadlines run on an injected clock: nothing here sleeps to see a delay pass."""

from __future__ import annotations

import threading
import time

import pytest
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.workqueue import WorkQueue

SHORT = 0.05  # a wait long enough to show that nothing arrives
LONG = 5.0  # a wait that only a bug exhausts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def timed(clock):
    """A queue on the injected clock, with the default backoff (0.5 s doubling up to 60 s)."""
    work = WorkQueue(clock=clock)
    yield work
    work.close()


@pytest.fixture
def queue():
    work = WorkQueue(base_delay=0.01, max_delay=0.04)
    yield work
    work.close()


def test_keys_come_out_in_the_order_they_were_added(queue):
    queue.add("a")
    queue.add("b")
    assert [queue.get(LONG), queue.get(LONG)] == ["a", "b"]


def test_a_key_added_while_queued_is_queued_once(queue):
    for _ in range(3):
        queue.add("a")
    assert len(queue) == 1
    assert queue.get(LONG) == "a"
    assert queue.get(SHORT) is None


def test_a_key_being_processed_is_not_handed_to_a_second_worker(queue):
    queue.add("a")
    assert queue.get(LONG) == "a"
    queue.add("a")
    assert len(queue) == 0
    assert queue.get(SHORT) is None


def test_a_key_dirtied_during_processing_is_requeued_once_done(queue):
    queue.add("a")
    assert queue.get(LONG) == "a"
    queue.add("a")
    queue.add("a")
    queue.done("a")
    assert queue.get(LONG) == "a"
    queue.done("a")
    assert queue.get(SHORT) is None


def test_a_key_done_without_new_events_is_not_requeued(queue):
    queue.add("a")
    queue.get(LONG)
    queue.done("a")
    assert len(queue) == 0


def test_other_keys_are_handed_out_while_one_is_processed(queue):
    queue.add("a")
    queue.add("b")
    assert queue.get(LONG) == "a"
    queue.add("a")
    assert queue.get(LONG) == "b"


def test_get_times_out_with_none(queue):
    started = time.monotonic()
    assert queue.get(SHORT) is None
    assert time.monotonic() - started >= SHORT * 0.9


def test_a_waiting_worker_is_woken_by_add(queue):
    got = []
    worker = threading.Thread(target=lambda: got.append(queue.get(LONG)))
    worker.start()
    queue.add("a")
    worker.join(LONG)
    assert got == ["a"]


def test_close_unblocks_waiting_workers():
    queue = WorkQueue()
    got = []
    workers = [threading.Thread(target=lambda: got.append(queue.get())) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(SHORT)
    queue.close()
    for worker in workers:
        worker.join(LONG)
        assert not worker.is_alive()
    assert got == [None, None, None]


def test_a_closed_queue_hands_out_nothing_and_accepts_nothing():
    queue = WorkQueue()
    queue.add("a")
    queue.close()
    assert queue.get(SHORT) is None
    queue.add("b")
    assert queue.get(SHORT) is None


def test_retry_delays_grow_exponentially_up_to_the_cap(clock):
    queue = WorkQueue(base_delay=1.0, max_delay=10.0, clock=clock)
    assert [queue.add_rate_limited("a") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert queue.num_requeues("a") == 6


def test_retry_delays_are_per_key(clock):
    queue = WorkQueue(base_delay=1.0, max_delay=10.0, clock=clock)
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")
    assert queue.add_rate_limited("b") == 1.0


def test_forget_resets_the_backoff(clock):
    queue = WorkQueue(base_delay=1.0, max_delay=10.0, clock=clock)
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    assert queue.add_rate_limited("a") == 1.0


def test_retry_delays_stay_capped_however_often_a_key_fails(clock):
    queue = WorkQueue(base_delay=0.5, max_delay=60.0, clock=clock)
    for _ in range(1100):
        assert queue.add_rate_limited("a") <= 60.0


def test_a_retried_key_comes_back_exactly_when_its_backoff_is_over(timed, clock):
    timed.add("a")
    assert timed.get(0) == "a"
    delay = timed.add_rate_limited("a")
    timed.done("a")
    clock.advance(delay - 0.001)
    assert timed.get(0) is None
    clock.advance(0.001)
    assert timed.get(0) == "a"


def test_a_delayed_key_is_not_handed_out_before_its_deadline(timed, clock):
    timed.add_after("a", 30)
    clock.advance(29.9)
    assert timed.get(0) is None
    assert len(timed) == 0
    clock.advance(0.1)
    assert len(timed) == 1
    assert timed.get(0) == "a"


def test_a_shorter_delay_replaces_a_longer_pending_one(timed, clock):
    timed.add_after("a", 30)
    timed.add_after("a", 1)
    clock.advance(1)
    assert timed.get(0) == "a"
    timed.done("a")
    clock.advance(60)
    assert timed.get(0) is None, "the replaced deadline must not fire a second time"


def test_a_retry_replaces_a_longer_pending_resync(timed, clock):
    timed.add_after("a", 30)
    assert timed.add_rate_limited("a") == 0.5
    clock.advance(0.5)
    assert timed.get(0) == "a"


def test_a_longer_delay_never_postpones_a_pending_shorter_one(timed, clock):
    timed.add_after("a", 1)
    timed.add_after("a", 30)
    clock.advance(1)
    assert timed.get(0) == "a"
    timed.done("a")
    clock.advance(60)
    assert timed.get(0) is None


def test_a_delayed_add_is_scheduled_once_per_key(timed, clock):
    timed.add_after("a", 1)
    timed.add_after("a", 1)
    assert timed.delayed() == 1
    clock.advance(1)
    assert timed.get(0) == "a"
    timed.done("a")
    assert timed.get(0) is None


def test_delayed_keys_come_out_in_deadline_order(timed, clock):
    timed.add_after("late", 3)
    timed.add_after("early", 1)
    timed.add_after("middle", 2)
    clock.advance(5)
    assert [timed.get(0), timed.get(0), timed.get(0)] == ["early", "middle", "late"]


def test_a_delayed_key_falling_due_while_processed_is_requeued_once_done(timed, clock):
    timed.add("a")
    assert timed.get(0) == "a"
    timed.add_after("a", 1)
    clock.advance(1)
    assert timed.get(0) is None, "never two workers on one key"
    timed.done("a")
    assert timed.get(0) == "a"


def test_a_delayed_key_already_queued_is_handed_out_once(timed, clock):
    timed.add_after("a", 1)
    timed.add("a")
    clock.advance(1)
    assert timed.get(0) == "a"
    assert timed.get(0) is None


def test_a_zero_delay_adds_at_once(timed):
    timed.add_after("a", 0)
    assert timed.get(0) == "a"


def test_thousands_of_delayed_keys_start_no_thread(timed):
    threads = threading.active_count()
    for index in range(3000):
        timed.add_after(f"job-{index}", 30 + index)
    assert threading.active_count() == threads
    assert timed.delayed() == 3000


def test_a_worker_asleep_until_a_late_deadline_wakes_for_an_earlier_one():
    queue = WorkQueue()
    try:
        queue.add_after("late", 3600)
        got = []
        worker = threading.Thread(target=lambda: got.append(queue.get(LONG)))
        worker.start()
        time.sleep(SHORT)
        queue.add_after("soon", 0.01)
        worker.join(LONG)
        assert got == ["soon"]
    finally:
        queue.close()


def test_close_drops_delayed_adds(timed, clock):
    timed.add_after("a", 1)
    timed.close()
    clock.advance(2)
    assert len(timed) == 0
    assert timed.delayed() == 0


def test_the_metrics_see_queue_latency_and_retries(clock):
    metrics = OperatorMetrics()
    queue = WorkQueue(clock=clock, observer=metrics.workqueue("finetunejob"))
    queue.add("a")
    clock.advance(2.0)
    assert queue.get(0) == "a"
    queue.add_rate_limited("a")
    queue.done("a")
    clock.advance(0.5)
    clock.advance(1.0)  # due for a second already when a worker takes it
    assert queue.get(0) == "a"
    text = metrics.exposition().decode()
    assert 'finetune_operator_workqueue_retries_total{name="finetunejob"} 1.0' in text
    assert 'finetune_operator_workqueue_queue_duration_seconds_sum{name="finetunejob"} 3.0' in text
    assert 'finetune_operator_workqueue_queue_duration_seconds_count{name="finetunejob"} 2.0' in text
