"""How micro-batches are laid out on this device: packed or length-bucketed, and how many tokens each holds.

The results are equal either way; the speed is not (design/trainer-notes.md). With variable-length
attention kernels (FlashAttention on GPU) packing wastes nothing and removes all padding. Without
them the block-diagonal mask of a pack is dense, and on CPU grouping rows of similar length is
about twice as fast. ``FINETUNE_PACKING=on|off`` overrides the choice (for benchmarks), and
``FINETUNE_DISABLE_SPEEDUPS`` (a comma-separated list of the names in model.SPEEDUPS) turns
individual speed-ups off, so that the benchmark can measure each one on and off (benchmarks/trainer.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from finetune_core.api import Training

from .model import packs_flat

# On a CPU, 2048-token passes measured 3.5% faster than 4096 (and than 8192) with 22% less peak
# memory: more of a pass's activations stay in the caches (benchmarks/trainer.py --ablations).
CPU_MICRO_BATCH_TOKENS = 2048
GPU_MICRO_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class BatchLayout:
    packing: bool  # several examples per row (position ids restarting), else one padded row per sequence
    flat: bool  # all rows of a micro-batch joined into one row without padding (varlen kernels)
    micro_batch_tokens: int  # budget of one forward/backward pass (rows x longest row when bucketing)


def choose_layout(
    training: Training, attn_implementation: str, *, on_gpu: bool, world_size: int, pairs: bool
) -> BatchLayout:
    varlen = packs_flat(attn_implementation)
    override = os.environ.get("FINETUNE_PACKING", "auto")
    packing = training.packing and varlen if override == "auto" else override == "on"
    # A sequence (a DPO pair: two of them) must fit one micro-batch.
    smallest = training.max_seq_length * (2 if pairs else 1)
    per_rank_step = math.ceil(training.batch_tokens / world_size)
    cap = int(
        os.environ.get("FINETUNE_MICRO_BATCH_TOKENS", GPU_MICRO_BATCH_TOKENS if on_gpu else CPU_MICRO_BATCH_TOKENS)
    )
    return BatchLayout(packing=packing, flat=varlen, micro_batch_tokens=max(smallest, min(per_rank_step, cap)))
