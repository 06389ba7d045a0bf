"""What a benchmark run measures: step clocks, tokens per second over timed windows, peak memory.

Every trainer reports the same record per optimizer step: when it ended, how many real (non-pad)
tokens it trained on and its mean token loss. Throughput is the median over several windows of
consecutive steps after a warm-up, so one slow window (another process on a shared machine, a
page-cache miss) does not decide the result.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepRecord:
    ended: float  # time.perf_counter() when the optimizer step finished
    tokens: int  # real tokens of the step
    loss: float  # mean loss over the step's target tokens


@dataclass(frozen=True)
class Throughput:
    median_tokens_per_second: float
    windows: list[float]  # tokens per second of each timed window
    warmup_steps: int
    timed_steps: int
    timed_tokens: int
    timed_seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def throughput(
    started: float, steps: Sequence[StepRecord], *, windows: int = 8, min_window_steps: int = 2
) -> Throughput:
    """Median tokens/s over up to ``windows`` windows of consecutive steps, after a warm-up.

    The warm-up is the first tenth of the steps (at least one): allocator growth, first-touch page
    faults and lazy initialisation land there. The remaining steps are cut into equal windows of at
    least ``min_window_steps``.
    """
    if not steps:
        raise ValueError("no steps to measure")
    warmup = max(1, len(steps) // 10) if len(steps) > 2 else 0
    timed = list(steps[warmup:])
    count = max(1, min(windows, len(timed) // min_window_steps))
    bounds = [round(i * len(timed) / count) for i in range(count + 1)]
    rates = []
    for first, end in itertools.pairwise(bounds):
        window = timed[first:end]
        opened = (steps[warmup + first - 1].ended) if warmup + first > 0 else started
        seconds = window[-1].ended - opened
        rates.append(sum(step.tokens for step in window) / seconds if seconds > 0 else 0.0)
    opened = steps[warmup - 1].ended if warmup else started
    return Throughput(
        median_tokens_per_second=statistics.median(rates),
        windows=[round(rate, 1) for rate in rates],
        warmup_steps=warmup,
        timed_steps=len(timed),
        timed_tokens=sum(step.tokens for step in timed),
        timed_seconds=round(timed[-1].ended - opened, 3),
    )


def loss_at_tokens(steps: Sequence[StepRecord], budget: int, fraction: float = 0.25) -> float:
    """Token-weighted mean training loss of the steps that overlap the last ``fraction`` of ``budget`` tokens.

    Two trainers' steps never end at the same token counts; averaging over the same stretch of the
    token budget compares them at equal tokens and smooths the step-to-step noise of small batches.
    """
    low = budget * (1 - fraction)
    seen = 0
    weighted = weight = 0.0
    for step in steps:
        before, seen = seen, seen + step.tokens
        if before < budget and seen > low and step.loss == step.loss:  # NaN: a step without a logged loss
            weighted += step.loss * step.tokens
            weight += step.tokens
    return weighted / weight if weight else float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident set size (MiB) since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)
