"""Token buckets per key (a job, a client's address), in bounded memory."""

from __future__ import annotations

from finetune_operator.progress.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_at_once_then_its_rate():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=5, clock=clock)
    assert [limiter.allow("10.0.0.7") for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.49
    assert not limiter.allow("10.0.0.7")
    clock.now += 0.01
    assert limiter.allow("10.0.0.7")
    assert not limiter.allow("10.0.0.7")


def test_a_refused_request_does_not_spend_the_bucket():
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.allow("a")
    for _ in range(100):
        assert not limiter.allow("a")
    clock.now += 1.0
    assert limiter.allow("a")


def test_each_key_has_its_own_bucket():
    limiter = RateLimiter(rate=1.0, burst=2, clock=Clock())
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b"), "another client is not starved by the first"


def test_memory_is_bounded_whatever_the_number_of_keys():
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=100, clock=Clock())
    for address in range(100_000):
        limiter.allow(f"10.{address >> 16}.{(address >> 8) & 255}.{address & 255}")
    assert len(limiter) == 100


def test_the_key_seen_least_recently_is_forgotten_first():
    limiter = RateLimiter(rate=0.001, burst=1, max_keys=2, clock=Clock())
    assert limiter.allow("old") and limiter.allow("busy")
    assert not limiter.allow("old")  # seen again: "busy" is now the least recent
    assert limiter.allow("new")  # evicts "busy"
    assert not limiter.allow("old"), "a recent key keeps its empty bucket"
    assert limiter.allow("busy"), "the evicted key starts again with a full bucket"
