"""The processes of a run (one per GPU, over one or more nodes) through Accelerate, and the few
collectives the trainer needs besides gradient synchronisation.

``accelerate launch`` (or any torchrun-style launcher) sets RANK, WORLD_SIZE, MASTER_ADDR...;
a plain ``python -m finetune_trainer`` is one process on the CPU or the first GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from finetune_core.api import TrainerConfig


@dataclass
class Distributed:
    accelerator: object  # accelerate.Accelerator

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def fsdp(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all ranks (in float64, so token counts stay exact)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.tolist()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (small, picklable: lists of names, digests, reason codes), by rank."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any: ranks must agree to stop at the same point."""
        if self.world_size == 1:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0


def make_accelerator(config: TrainerConfig):
    """An Accelerator for this run: mixed precision on GPU, FSDP for full fine-tuning on several GPUs."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    on_gpu = torch.cuda.is_available() and os.environ.get("FINETUNE_FORCE_CPU") != "1"
    precision = config.training.precision if on_gpu else "fp32"
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp_plugin = None
    if on_gpu and world > 1 and config.method.type == "full" and os.environ.get("ACCELERATE_USE_FSDP") is None:
        fsdp_plugin = _fsdp_plugin()
    return Accelerator(
        cpu=not on_gpu,
        mixed_precision=mixed,
        fsdp_plugin=fsdp_plugin,
        # Every parameter gets a gradient in every step (LoRA layers included), so DDP need not search.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        step_scheduler_with_optimizer=False,
    )


def _fsdp_plugin():
    """Full sharding of parameters, gradients and optimizer states; one decoder layer per unit."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=True,
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="SHARDED_STATE_DICT",
        cpu_ram_efficient_loading=False,
        activation_checkpointing=False,
    )
