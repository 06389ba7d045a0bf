"""The work queue: keys not events, one worker per key, retries with capped exponential backoff."""

from __future__ import annotations

import threading
import time

import pytest
from finetune_operator.workqueue import WorkQueue

SHORT = 0.05  # a wait long enough to show that nothing arrives
LONG = 5.0  # a wait that only a bug exhausts


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


def test_retry_delays_grow_exponentially_up_to_the_cap():
    queue = WorkQueue(base_delay=1.0, max_delay=10.0)
    try:
        assert [queue.retry("a") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    finally:
        queue.close()


def test_retry_delays_are_per_key():
    queue = WorkQueue(base_delay=1.0, max_delay=10.0)
    try:
        queue.retry("a")
        queue.retry("a")
        assert queue.retry("b") == 1.0
    finally:
        queue.close()


def test_forget_resets_the_backoff():
    queue = WorkQueue(base_delay=1.0, max_delay=10.0)
    try:
        queue.retry("a")
        queue.retry("a")
        queue.forget("a")
        assert queue.retry("a") == 1.0
    finally:
        queue.close()


def test_retry_delays_stay_capped_however_often_a_key_fails():
    queue = WorkQueue(base_delay=0.5, max_delay=60.0)
    try:
        for _ in range(1100):
            assert queue.retry("a") <= 60.0
    finally:
        queue.close()


def test_a_retried_key_comes_back_after_its_delay(queue):
    queue.add("a")
    assert queue.get(LONG) == "a"
    started = time.monotonic()
    delay = queue.retry("a")
    queue.done("a")
    assert queue.get(LONG) == "a"
    assert time.monotonic() - started >= delay


def test_a_delayed_add_is_scheduled_once_per_key(queue):
    queue.add_after("a", 0.01)
    queue.add_after("a", 0.01)
    assert queue.get(LONG) == "a"
    assert queue.get(SHORT) is None


def test_close_cancels_delayed_adds():
    queue = WorkQueue()
    queue.add_after("a", SHORT)
    queue.close()
    time.sleep(SHORT * 2)
    assert len(queue) == 0
