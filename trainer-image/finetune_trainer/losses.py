"""Losses: next-token cross-entropy (SFT, chat, continued pre-training) and DPO.

Both start from the log-probabilities of the target tokens only. The model is asked for logits at
the positions that carry a target (transformers' ``logits_to_keep`` with a boolean mask), so prompt
tokens and padding never go through the output head: with vocabularies of 100k+ tokens the logits
are the largest tensor of a step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .inputs import ModelInputs


def target_logits(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """Logits (targets, vocab) at the positions of ``inputs.target_mask``, in the order of that mask."""
    mask = inputs.target_mask
    output = model(
        input_ids=inputs.input_ids,
        position_ids=inputs.position_ids,
        use_cache=False,
        logits_to_keep=mask,
    )
    logits = output.logits
    if logits.dim() == 3:  # a model that ignores the mask returns every position
        logits = logits[mask]
    return logits


def token_log_probs(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """log p(target) of every target token, in fp32 (the log-softmax of bf16 logits is too coarse)."""
    logits = target_logits(model, inputs).float()
    return -F.cross_entropy(logits, inputs.targets[inputs.target_mask], reduction="none")


def summed_token_loss(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """The sum of the token losses; the caller divides by the tokens of the whole optimizer step."""
    if inputs.target_tokens == 0:
        return _zero_through(model, inputs)
    logits = target_logits(model, inputs).float()
    return F.cross_entropy(logits, inputs.targets[inputs.target_mask], reduction="sum")


def sequence_log_probs(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """Sum of the target log-probabilities of each example: shape (examples,)."""
    per_token = token_log_probs(model, inputs)
    owners = inputs.example_index[inputs.target_mask]
    sums = torch.zeros(inputs.examples, dtype=per_token.dtype, device=per_token.device)
    return sums.index_add(0, owners, per_token)


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al., 2023, eq. 7): -log sigmoid(beta * (policy margin - reference margin)).

    Margins are differences of sequence log-probabilities of the chosen and rejected answers; the
    reference model anchors the policy so that it cannot win by degrading both answers.
    """
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return -F.logsigmoid(beta * logits)


def split_pairs(sequence_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected values of a preference batch: every chosen sequence first, then the rejected ones."""
    half = sequence_values.shape[0] // 2
    return sequence_values[:half], sequence_values[half:]


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module, reference: torch.nn.Module | None):
    """The DPO reference: a separate frozen model, or this PEFT model with its adapter disabled."""
    if reference is not None:
        with torch.no_grad():
            yield reference
        return
    # The unwrapped model: a DDP wrapper has nothing to synchronise in a forward pass without gradients.
    peft_model = unwrapped(model)
    with torch.no_grad(), peft_model.disable_adapter():
        yield peft_model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _zero_through(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    # A micro-batch without targets (a filler) still runs forward and backward so that every rank takes
    # part in the same collectives; its loss is an exact zero.
    output = model(input_ids=inputs.input_ids[:, :1], position_ids=inputs.position_ids[:, :1], use_cache=False)
    return output.logits.float().sum() * 0.0
