"""ModelAdapter helpers: the vLLM --max-lora-rank an adapter needs."""

from __future__ import annotations

import pytest
from finetune_core.api import VLLM_MAX_LORA_RANKS, required_max_lora_rank


@pytest.mark.parametrize(
    ("rank", "required"),
    [(1, 8), (8, 8), (9, 16), (16, 16), (33, 64), (200, 256), (257, 320), (320, 320), (321, 512), (512, 512)],
)
def test_the_required_max_lora_rank_is_the_smallest_vllm_value_at_or_above_the_rank(rank, required):
    assert required_max_lora_rank(rank) == required


@pytest.mark.parametrize("rank", [513, 1024, 4096])
def test_a_rank_above_what_vllm_serves_needs_no_value(rank):
    assert required_max_lora_rank(rank) is None


def test_every_vllm_value_maps_to_itself():
    assert [required_max_lora_rank(r) for r in VLLM_MAX_LORA_RANKS] == list(VLLM_MAX_LORA_RANKS)
