"""Losses: next-token cross-entropy (SFT, chat, continued pre-training) and DPO.

Both start from the log-probabilities of the target tokens only. The model is asked for logits at
the positions that carry a target (transformers' ``logits_to_keep`` with a boolean mask), so prompt
tokens and padding never go through the output head: with vocabularies of 100k+ tokens the logits
are the largest tensor of a step.

With a frozen output head (LoRA, QLoRA) not even those logits exist all at once: the model returns
the final hidden states of the target positions and the cross-entropy is computed chunk by chunk
(:class:`ChunkedTokenNll`), each chunk's gradient with respect to the hidden states computed right
away. At most one chunk of logits (256 MB on a GPU) is alive, instead of three targets x vocabulary
tensors (logits, log-softmax, their gradient) held until the backward pass: 8 GB each for 16k
targets of a 128k vocabulary.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .inputs import ModelInputs
from .model import speedup_enabled
from .patches import patch_fits

# Logit elements per chunk of the chunked cross-entropy: 256 MB of fp32 on a GPU; on a CPU small
# enough to stay in the caches (benchmarks/trainer.py measured larger chunks slower there).
CUDA_CHUNK_ELEMENTS = 1 << 26
CPU_CHUNK_ELEMENTS = 1 << 21


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


def token_nll(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """-log p(target) of every target token, in the order of ``inputs.target_mask``.

    In fp32: the log-softmax of bf16 logits is too coarse.
    """
    targets = inputs.targets[inputs.target_mask]
    head = _frozen_output_head(model)
    if head is None:
        return F.cross_entropy(target_logits(model, inputs).float(), targets, reduction="none")
    with _returning_its_input(head) as seen:
        hidden = target_logits(model, inputs)  # the head's input: final hidden states at the target positions
    budget = CUDA_CHUNK_ELEMENTS if hidden.is_cuda else CPU_CHUNK_ELEMENTS
    chunk = max(1, budget // head.weight.shape[0])
    # The projection in the dtype the head would have computed in (autocast's, inside the model's forward).
    weight = head.weight.to(seen.dtype or head.weight.dtype)
    bias = None if head.bias is None else head.bias.to(weight.dtype)
    if torch.is_grad_enabled() and hidden.requires_grad:
        return ChunkedTokenNll.apply(hidden, weight, bias, targets, chunk)
    return _chunked_nll(hidden, weight, bias, targets, chunk, grad_hidden=None)


def token_log_probs(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """log p(target) of every target token, in fp32."""
    return -token_nll(model, inputs)


def summed_token_loss(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """The sum of the token losses; the caller divides by the tokens of the whole optimizer step."""
    if inputs.target_tokens == 0:
        return _zero_through(model, inputs)
    return token_nll(model, inputs).sum()


class ChunkedTokenNll(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T (+ bias)``, chunk by chunk, for a frozen head.

    Token i's loss depends on token i's logits only, so each chunk's gradient with respect to its
    hidden states, (softmax - one_hot(target)) @ weight, is computed in the forward pass while the
    chunk's logits exist (as Liger's fused linear cross-entropy does); the backward pass scales
    those rows by the incoming per-token gradients. Nothing is recomputed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):
        grad_hidden = torch.empty(hidden.shape, dtype=weight.dtype, device=hidden.device)
        nll = _chunked_nll(hidden, weight, bias, targets, chunk, grad_hidden=grad_hidden)
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (grad_hidden,) = ctx.saved_tensors
        grad = grad_hidden.to(ctx.hidden_dtype) * grad_nll.unsqueeze(-1).to(ctx.hidden_dtype)
        return grad, None, None, None, None


def _chunked_nll(hidden, weight, bias, targets, chunk: int, *, grad_hidden: torch.Tensor | None) -> torch.Tensor:
    """-log softmax(hidden @ weight.T + bias)[target] per row; fills ``grad_hidden`` with d nll / d hidden if given.

    The projection runs in ``weight``'s dtype (Accelerate hands the hidden states over in fp32 even
    when the model computes in bf16), the softmax in fp32.
    """
    nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows].to(weight.dtype), weight, bias).float()
            log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
            picked = targets[rows].unsqueeze(-1)
            nll[rows] = (log_normaliser - logits.gather(-1, picked)).squeeze(-1)
            if grad_hidden is not None:
                probabilities = logits.sub_(log_normaliser).exp_()
                probabilities.scatter_add_(-1, picked, torch.full(picked.shape, -1.0, device=picked.device))
                torch.mm(probabilities.to(weight.dtype), weight, out=grad_hidden[rows])
    return nll


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


def _frozen_output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output head when the chunked loss can serve it: a plain Linear with frozen weights (LoRA, QLoRA)."""
    if not speedup_enabled("chunked_loss") or not patch_fits("chunked_loss"):
        return None  # switched off, or a transformers version the head swap was not written for
    inner = unwrapped(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.requires_grad:
        return None  # full fine-tuning trains the head (and FSDP shards it): the plain path
    if head.bias is not None and head.bias.requires_grad:
        return None
    return head


@contextlib.contextmanager
def _returning_its_input(head: torch.nn.Module):
    """For the duration, the head returns its input: the model then returns hidden states as its logits.

    The model's own forward (and a DDP wrapper's) still runs, so gradient synchronisation and every
    hook stay as they are; only the last projection is left to the chunked loss. Yields what the
    head saw: the dtype autocast would have computed it in (None without autocast). It relies on
    transformers internals: used only on the versions in patches.LIBRARY_PATCHES.
    """
    seen = _HeadInput()
    previous = head.__dict__.get("forward")  # an instance-level forward (an Accelerate hook) is put back
    head.forward = seen
    try:
        yield seen
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


class _HeadInput:
    """Stands in for the output head's forward: passes the hidden states through, notes autocast's dtype."""

    dtype: torch.dtype | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        device = hidden.device.type
        self.dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return hidden


def _zero_through(model: torch.nn.Module, inputs: ModelInputs) -> torch.Tensor:
    # A micro-batch without targets (a filler) still runs forward and backward so that every rank takes
    # part in the same collectives; its loss is an exact zero.
    output = model(input_ids=inputs.input_ids[:, :1], position_ids=inputs.position_ids[:, :1], use_cache=False)
    return output.logits.float().sum() * 0.0
