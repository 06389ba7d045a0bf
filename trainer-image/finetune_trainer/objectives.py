"""What a micro-batch contributes to the step's loss, per objective.

An objective returns the *sum* of its per-unit losses for a micro-batch (tokens for language
modelling, pairs for DPO) and names the units of a planned step; the loop divides by the units of
the whole optimizer step over all ranks. Gradient accumulation is then exact: the accumulated gradient
equals that of one batch of every token (or pair) of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import Step
from .inputs import ModelInputs
from .losses import dpo_losses, reference_mode, sequence_log_probs, split_pairs, summed_token_loss


class LanguageModelling:
    """Next-token cross-entropy on labelled tokens: SFT (completions, assistant turns) and raw text."""

    name = "lm"

    def units(self, step: Step) -> int:
        return step.trained_tokens

    def summed_loss(self, model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
        return summed_token_loss(model, inputs)


@dataclass
class DirectPreference:
    """DPO on pairs; a micro-batch holds every pair's chosen sequence, then the rejected ones in the same order."""

    beta: float
    reference: torch.nn.Module | None = None  # None: the policy with its adapter disabled

    name = "dpo"

    def units(self, step: Step) -> int:
        return step.examples

    def summed_loss(self, model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
        if inputs.target_tokens == 0:
            return summed_token_loss(model, inputs)  # a filler batch of a rank with less work: zero loss
        with reference_mode(model, self.reference) as reference:
            reference_chosen, reference_rejected = split_pairs(sequence_log_probs(reference, inputs))
        policy_chosen, policy_rejected = split_pairs(sequence_log_probs(model, inputs))
        losses = dpo_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected, self.beta)
        return losses.sum()


Objective = LanguageModelling | DirectPreference
