"""Bearer tokens at the operator's endpoints, and the API server's answers about them kept briefly."""

from __future__ import annotations

import pytest
from finetune_operator.tokens import ReviewCache, bearer_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc.def", "abc.def"),
        ("Bearer   abc ", "abc"),
        ("Bearer ", None),
        ("Bearer", None),
        ("bearer abc", None),
        ("Basic dXNlcjpwYXNz", None),
        ("", None),
    ],
)
def test_the_bearer_token_is_read_from_the_authorization_header(header, token):
    assert bearer_token(header) == token


def test_an_answer_is_kept_for_its_own_time_then_forgotten():
    clock = Clock()
    cache: ReviewCache[str] = ReviewCache(max_entries=10, clock=clock)
    cache.put("good", "allowed", seconds=60)
    cache.put("bad", "refused", seconds=10)
    clock.now += 9.9
    assert (cache.get("good"), cache.get("bad")) == ("allowed", "refused")
    clock.now += 0.1
    assert (cache.get("good"), cache.get("bad")) == ("allowed", None)
    clock.now += 50
    assert cache.get("good") is None


def test_the_cache_holds_at_most_its_size_forgetting_the_least_recently_used():
    cache: ReviewCache[int] = ReviewCache(max_entries=3, clock=Clock())
    for number in range(3):
        cache.put(f"token-{number}", number, seconds=60)
    assert cache.get("token-0") == 0  # used: token-1 is now the least recently used
    for number in range(3, 1000):
        cache.put(f"token-{number}", number, seconds=60)
        assert len(cache) <= 3
    assert cache.get("token-1") is None and cache.get("token-999") == 999


def test_tokens_are_kept_only_as_their_sha256():
    cache: ReviewCache[str] = ReviewCache(max_entries=3, clock=Clock())
    cache.put("eyJhbGciOi.secret-part", "allowed", seconds=60)
    assert ReviewCache.key("eyJhbGciOi.secret-part") != "eyJhbGciOi.secret-part"
    assert len(ReviewCache.key("x")) == 64
    assert "secret-part" not in repr(vars(cache))
