"""The estimate: how long a planned run trains and what it costs, from its tokens and a throughput figure.

The figure is tokens per second per training process, looked up by (accelerator, parameter bucket,
method, sequence-length bucket). Until this cluster has finished a job of that kind, it comes from a
FLOP model: tokens/s = effective FLOP/s of the accelerator / FLOPs per token, with FLOPs per token
about 4N for LoRA and QLoRA (the frozen weights need no weight gradients) and 6N for full fine-tuning
(N: the base model's parameters; attention is left out, so long sequences run slower than this says).
Each finished job's measured figure is kept (the median of the last K per row wins over the model).
Pure: no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from finetune_core.api import Estimate, FineTuneJob, Plan

from .progress.status_patch import human_duration  # the EST column reads like the ETA column

# Effective (achieved, not peak) FLOP/s of one training process, and where each figure comes from.
# GPU rows are assumptions until a job of that kind finishes here: peak dense bf16 x the utilisation
# published for LoRA SFT on that class of card.
EFFECTIVE_FLOPS: dict[str, tuple[float, str]] = {
    # An early trainer measurement (the design notes, not in this repository): 3.1M-parameter Llama, LoRA,
    # length-bucketed batches, 2 cores: ~6,400 real tokens/s x 4 x 3.1M FLOPs per token. make bench-trainer
    # (README, Performance) now gives 6,178 tokens/s on 7.1M parameters: 2.2x this figure.
    "cpu": (8.0e10, "measured: trainer benchmark, 2 CPU cores"),
    # NVIDIA NeMo AutoModel, Llama-3.1-8B LoRA r16 on one H100: 12,473 tokens/s (~41% of 989 TFLOP/s).
    "nvidia-h100": (4.0e14, "assumption: NeMo AutoModel Llama-3.1-8B LoRA on H100, 41% MFU"),
    "nvidia-h200": (4.0e14, "assumption: H100 figure (same dense bf16 peak)"),
    "nvidia-a100": (1.25e14, "assumption: 40% of A100 dense bf16 peak (312 TFLOP/s)"),
    "gpu": (4.0e14, "assumption: an unnamed GPU is taken for an H100"),
}

# Node labels that name the card, and the names they map to.
ACCELERATOR_LABELS = (
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
)
KNOWN_CARDS = ("h200", "h100", "a100")

PARAMETER_BUCKETS = (10e6, 100e6, 1e9, 3e9, 8e9, 14e9, 35e9, 75e9)

# Measured figures come from what tenants' pods report (their token counts, their training time), so a
# figure no process reaches (or no number at all: a tiny time overflows the division to infinity) is
# dropped: an infinite rate would make every estimate of that row invalid, other tenants' jobs included.
MAX_TOKENS_PER_SECOND = 1e9


@dataclass(frozen=True)
class Throughput:
    tokens_per_second: float  # per training process
    source: str  # "default" or "measured"
    samples: int


def accelerator_of(job: FineTuneJob) -> str:
    """cpu, a known card (from the node selector the job gives its pods), or gpu."""
    if job.spec.resources.gpus_per_node == 0:
        return "cpu"
    for label in ACCELERATOR_LABELS:
        value = job.spec.template.node_selector.get(label, "").lower()
        for card in KNOWN_CARDS:
            if card in value:
                return f"nvidia-{card}"
    return "gpu"


def parameter_bucket(parameters: int | None) -> str:
    if parameters is None:
        return "unknown"
    for bound in PARAMETER_BUCKETS:
        if parameters <= bound:
            return f"le{_short(bound)}"
    return f"gt{_short(PARAMETER_BUCKETS[-1])}"


def _short(count: float) -> str:
    return f"{count / 1e9:g}B" if count >= 1e9 else f"{count / 1e6:g}M"


def sequence_bucket(max_seq_length: int) -> str:
    return f"s{2 ** max(0, math.ceil(math.log2(max(1, max_seq_length))))}"


def table_key(job: FineTuneJob, parameters: int | None) -> str:
    """A ConfigMap key ([-._a-zA-Z0-9]): accelerator.parameters.method.sequence."""
    parts = (
        accelerator_of(job),
        parameter_bucket(parameters),
        job.spec.method.type,
        sequence_bucket(job.spec.training.max_seq_length),
    )
    return ".".join(parts)


def default_throughput(job: FineTuneJob, parameters: int | None) -> float:
    """Tokens per second of one process by the FLOP model (a 1B model when the parameters are unknown)."""
    flops, _ = EFFECTIVE_FLOPS[accelerator_of(job)]
    per_token = (6.0 if job.spec.method.type == "full" else 4.0) * float(parameters or 1e9)
    return flops / per_token


def plausible(tokens_per_second: float) -> bool:
    """Whether a measured figure (per process) may join the table and count in its median."""
    return 0 < tokens_per_second <= MAX_TOKENS_PER_SECOND


def throughput(job: FineTuneJob, parameters: int | None, measured: Mapping[str, Sequence[float]]) -> Throughput:
    samples = [s for s in measured.get(table_key(job, parameters), ()) if plausible(s)]
    if samples:
        return Throughput(statistics.median(samples), "measured", len(samples))
    return Throughput(default_throughput(job, parameters), "default", 0)


def training_processes(job: FineTuneJob) -> int:
    resources = job.spec.resources
    return resources.nodes * max(resources.gpus_per_node, 1)


def estimate(job: FineTuneJob, plan: Plan, measured: Mapping[str, Sequence[float]]) -> Estimate:
    """Seconds of training for the plan's tokens, and the GPU-hours they hold."""
    figure = throughput(job, plan.parameters, measured)
    job_rate = figure.tokens_per_second * training_processes(job)
    seconds = math.ceil(plan.trained_tokens / job_rate) if plan.trained_tokens else 0
    gpus = job.spec.resources.nodes * job.spec.resources.gpus_per_node
    return Estimate(
        seconds=seconds,
        duration=human_duration(seconds),
        gpu_hours=round(seconds * gpus / 3600, 3),
        tokens_per_second=round(job_rate, 3),
        source=figure.source,
        key=table_key(job, plan.parameters),
        samples=figure.samples,
    )


def recorded(samples: Sequence[float], measured: float, keep: int) -> list[float]:
    """The last ``keep`` figures of a row once ``measured`` is added."""
    return [*samples, measured][-keep:]
