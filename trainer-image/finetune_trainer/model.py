"""Loading the base model and making it trainable: LoRA, QLoRA (4-bit NF4 base) or full fine-tuning.

Attention keeps packed examples apart through their position ids, which restart at 0 for every
example: transformers (5.x) derives the example boundaries from them when no attention mask is
given. With FlashAttention (CUDA) that becomes the variable-length kernel, so a micro-batch is fed
as one flat row without padding; with SDPA (CPU, or CUDA without flash-attn) it becomes a
block-diagonal causal mask, and a micro-batch keeps its rows.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from finetune_core.api import Method, Training

from . import log
from .errors import ConfigError
from .patches import patch_fits

# Speed-ups that change no result beyond floating-point rounding, each measured on and off by the
# benchmark (benchmarks/trainer.py --ablations); FINETUNE_DISABLE_SPEEDUPS=name,... turns them off.
SPEEDUPS = ("fused_lora", "chunked_loss")


def speedup_enabled(name: str) -> bool:
    if name not in SPEEDUPS:
        raise ValueError(f"unknown speed-up {name!r}")
    disabled = {item.strip() for item in os.environ.get("FINETUNE_DISABLE_SPEEDUPS", "").split(",") if item.strip()}
    if unknown := disabled - set(SPEEDUPS):
        # A misspelt name would silently leave the speed-up on and void an on/off measurement.
        raise ConfigError(f"FINETUNE_DISABLE_SPEEDUPS names unknown speed-ups {sorted(unknown)}; known: {SPEEDUPS}")
    return name not in disabled


@dataclass(frozen=True)
class Placement:
    """Where and in which precision the model runs."""

    device: torch.device
    compute_dtype: torch.dtype  # autocast dtype on GPU; float32 on CPU
    shards: int = 1  # processes a fully fine-tuned model is sharded over with FSDP (1: not sharded)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def placement_for(training: Training, device: torch.device, fsdp_shards: int = 1) -> Placement:
    if device.type != "cuda":
        # CPUs have no fast bf16 matmul everywhere and tests need exact arithmetic: fp32 on CPU.
        return Placement(device=device, compute_dtype=torch.float32)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[training.precision]
    return Placement(device=device, compute_dtype=dtype, shards=fsdp_shards)


def attention_implementation(placement: Placement) -> str:
    """flash_attention_2 (variable-length kernels, padding-free) when installed on CUDA, else sdpa."""
    if placement.on_gpu and placement.compute_dtype != torch.float32 and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def packs_flat(attn_implementation: str) -> bool:
    """Whether a micro-batch is best fed as one padding-free row (varlen kernels skip masked blocks)."""
    return attn_implementation.startswith("flash_attention")


@dataclass
class TrainableModel:
    model: torch.nn.Module  # a PeftModel for lora/qlora, the transformers model for full
    attn_implementation: str
    is_adapter: bool
    gradient_checkpointing: bool


def check_method_supported(method: Method, placement: Placement) -> None:
    """Refuse combinations that cannot run here before anything is loaded."""
    if method.type == "qlora":
        if not placement.on_gpu:
            raise ConfigError(
                "method.type qlora needs an NVIDIA GPU (bitsandbytes 4-bit NF4 runs on CUDA only) and this pod has "
                "none: set resources.gpusPerNode >= 1, or use method.type lora on CPU"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("method.type qlora needs the bitsandbytes package, which this trainer image lacks")


def skip_unused_quantization(method: Method) -> None:
    """Keep bitsandbytes unloaded in a process whose run quantizes nothing (every method but QLoRA).

    peft imports it whenever it is installed (peft.helpers), and it loads its kernels' wrappers: about 1 s of
    every LoRA run's start, for a library it never calls (full fine-tuning imports neither). ``sys.modules[name] =
    None`` is Python's own way to make an import fail: ``importlib.util.find_spec`` answers None, so peft and
    transformers see the package absent, as in an image without it, and never reach for it. Process-wide and
    for good (peft caches what it saw), hence only for a process that runs this one training and ends.
    """
    if method.type != "qlora" and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


def _io_failure(error: Exception) -> bool:
    """An operating-system I/O error (ENOSPC, EIO...) rather than transformers' "not a model here"."""
    return isinstance(error, OSError) and error.errno is not None and not isinstance(error, FileNotFoundError)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        if _io_failure(error):
            raise
        raise ConfigError(f"the tokenizer at {path} cannot be loaded (are its files there?): {error}") from error
    if tokenizer.pad_token_id is None:
        # Padding tokens never reach the loss (labels -100) nor attention of real tokens: any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_trainable_model(
    path: Path,
    method: Method,
    training: Training,
    placement: Placement,
    *,
    micro_batch_tokens: int,
) -> TrainableModel:
    """The base model from ``path``, on ``placement.device``, with the trainable parts of ``method``."""
    from transformers import AutoModelForCausalLM

    check_method_supported(method, placement)
    attn = attention_implementation(placement)
    kwargs: dict = {"attn_implementation": attn}
    if method.type == "full":
        # Master weights in fp32; Accelerate's autocast computes in bf16/fp16 on GPU.
        kwargs["dtype"] = torch.float32
    elif method.type == "lora":
        # The frozen base needs no fp32 master copy: hold it in the compute dtype.
        kwargs["dtype"] = placement.compute_dtype
    else:
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = placement.compute_dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.compute_dtype,
        )
        kwargs["device_map"] = {"": placement.device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        if _io_failure(error):
            raise  # a full disk or a failing volume: exit 1, retried
        raise ConfigError(f"model at {path} cannot be loaded as a causal language model: {error}") from error
    model.config.use_cache = False  # a KV cache in training only costs memory, and it disables packing detection
    if method.type != "qlora" and placement.shards == 1:  # FSDP places the shards itself
        model.to(placement.device)

    checkpointing = wants_gradient_checkpointing(model, method, training, placement, micro_batch_tokens)
    if method.type == "full":
        model.requires_grad_(True)
        if checkpointing:
            _enable_checkpointing(model)
        log.info("model_loaded", method="full", parameters=_count(model), attention=attn, checkpointing=checkpointing)
        return TrainableModel(model, attn, is_adapter=False, gradient_checkpointing=checkpointing)

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        _enable_checkpointing(model)
    lora = method.lora
    targets = lora.target_modules
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        use_rslora=lora.rslora,
        bias="none",
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
    )
    try:
        # autocast_adapter_dtype keeps the adapter weights in fp32 on a bf16 base: their updates are tiny.
        model = get_peft_model(model, peft_config, autocast_adapter_dtype=True)
    except ValueError as error:
        raise ConfigError(f"method.lora.targetModules {targets}: {error}") from error
    fusing = not placement.on_gpu and speedup_enabled("fused_lora") and patch_fits("fused_lora")
    fused = fuse_lora_layers(model) if fusing else 0
    trainable = _count(model, trainable_only=True)
    log.info(
        "model_loaded",
        method=method.type,
        parameters=_count(model),
        trainable_parameters=trainable,
        attention=attn,
        checkpointing=checkpointing,
        fused_lora_layers=fused,
    )
    return TrainableModel(model, attn, is_adapter=True, gradient_checkpointing=checkpointing)


# ---------------------------------------------------------------------------------------------
# fused LoRA (CPU)


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Run every PEFT LoRA Linear of ``model`` through one fused autograd function; returns how many.

    PEFT computes ``base(x) + B(A(dropout(x))) * scaling`` as six autograd nodes, each a pass over
    activations in memory, and draws dropout with a Bernoulli sampler that on a CPU costs more than
    the frozen base matmul itself (4.3 ms against 2.5 ms for 4000 x 256 inputs of a 256 x 256
    layer). The fused function computes the same sum in three matmuls (the LoRA update added in
    place with ``addmm_``), folds the dropout rescaling into the LoRA scale, draws the dropout mask
    from 16-bit slices of 64-bit random words (keep probability quantised to 1/65536; a quarter of
    the Bernoulli sampler's time) and writes the backward by hand. Layers or calls it cannot serve
    (several or disabled adapters, merged weights, DoRA and other variants, autocast, non-Linear or
    trainable bases) fall back to PEFT's own forward, call by call. CPU only: on a GPU the same
    work is launch-bound rather than memory-bound, and it is not measured there yet. It relies on
    PEFT internals: the trainer calls it only on the PEFT versions in patches.LIBRARY_PATCHES.
    """
    from peft.tuners.lora import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = _fused_lora_linear_class()
            fused += 1
    return fused


@functools.cache
def _fused_lora_linear_class() -> type:
    """PEFT's LoRA Linear with a fused forward; built on first use, as peft is imported lazily here."""
    from peft.tuners.lora import Linear

    class FusedLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            adapter = _fusable_adapter(self, x, args, kwargs)
            if adapter is None:
                return super().forward(x, *args, **kwargs)
            base = self.base_layer
            dropout = self.lora_dropout[adapter]
            rate = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
            return _LoraLinearFunction.apply(
                x,
                base.weight,
                base.bias,
                self.lora_A[adapter].weight,
                self.lora_B[adapter].weight,
                float(self.scaling[adapter]),
                rate,
            )

    return FusedLoraLinear


def _fusable_adapter(layer, x: torch.Tensor, args, kwargs) -> str | None:
    """The one adapter a call of ``layer`` can run fused, or None to run PEFT's forward."""
    if args or kwargs or layer.disable_adapters or layer.merged or torch.is_autocast_enabled(x.device.type):
        return None
    adapters = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(adapters) != 1 or adapters[0] in layer.lora_variant or layer.lora_B[adapters[0]].bias is not None:
        return None
    (adapter,) = adapters
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if not isinstance(layer.lora_dropout[adapter], torch.nn.Dropout | torch.nn.Identity):
        return None
    weights = (base.weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)
    if any(w.dtype != x.dtype or w.device != x.device for w in weights):
        return None
    return adapter


class _LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s * (m * x / keep) A^T B^T, with m the dropout keep mask (all ones when rate is 0)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, rate: float):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = torch.nn.functional.linear(flat, weight, bias)
        keep = None
        scale = scaling
        if rate > 0:
            keep, kept_fraction = _dropout_keep_mask(flat, rate)
            dropped = flat * keep
            scale = scaling / kept_fraction
        else:
            dropped = flat
        low_rank = dropped.mm(lora_a.t())
        out.addmm_(low_rank, lora_b.t(), alpha=scale)
        ctx.save_for_backward(weight, lora_a, lora_b, dropped, low_rank, keep)
        ctx.scale = scale
        ctx.input_shape = shape
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        weight, lora_a, lora_b, dropped, low_rank, keep = ctx.saved_tensors
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_low_rank = grad.mm(lora_b).mul_(ctx.scale)
        grad_b = grad.t().mm(low_rank).mul_(ctx.scale)
        grad_a = grad_low_rank.t().mm(dropped)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if keep is None:
                grad_x = grad.mm(weight).addmm_(grad_low_rank, lora_a)
            else:
                grad_x = grad.mm(weight).addcmul_(grad_low_rank.mm(lora_a), keep)
            grad_x = grad_x.view(ctx.input_shape)
        return grad_x, None, None, grad_a, grad_b, None, None


def _dropout_keep_mask(x: torch.Tensor, rate: float) -> tuple[torch.Tensor, float]:
    """A boolean keep mask shaped like ``x`` and the fraction it keeps in expectation.

    Four 16-bit lanes of each random 64-bit word (from the default generator, so seeding and the
    checkpointed generator state cover it) are compared with a threshold: a quarter of the random
    draws of a Bernoulli sampler.
    """
    dropped_of_65536 = round(rate * 65536)
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)
    lanes = words.view(torch.int16)[: x.numel()].view(x.shape)
    return lanes >= dropped_of_65536 - 32768, 1.0 - dropped_of_65536 / 65536


def _enable_checkpointing(model: torch.nn.Module) -> None:
    # Non-reentrant checkpointing needs no inputs that require gradients, which a frozen (LoRA) base lacks.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def frozen_reference(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """A frozen copy of a fully fine-tuned model's starting point: the DPO reference.

    LoRA needs none (the base with the adapter disabled is the reference); full fine-tuning does,
    held in the compute dtype because it is only ever run forward.
    """
    reference = copy.deepcopy(model).to(dtype=placement.compute_dtype).eval()
    reference.requires_grad_(False)
    return reference


def wants_gradient_checkpointing(
    model: torch.nn.Module, method: Method, training: Training, placement: Placement, micro_batch_tokens: int
) -> bool:
    if training.gradient_checkpointing != "auto":
        return training.gradient_checkpointing == "on"
    if not placement.on_gpu:
        return False  # CPU runs have host memory to spare and nothing to gain from recomputation
    free_bytes, _ = torch.cuda.mem_get_info(placement.device)
    needed = additional_training_bytes(model.config, _count(model), method, micro_batch_tokens, placement)
    decision = needed > 0.85 * free_bytes
    log.info("gradient_checkpointing_auto", estimated_bytes=needed, free_bytes=free_bytes, enabled=decision)
    return decision


def additional_training_bytes(config, parameters: int, method: Method, tokens: int, placement: Placement) -> int:
    """A deliberately rough upper estimate of the GPU memory training needs beyond the loaded weights.

    Gradients and Adam moments of the trained weights, plus the activations one micro-batch keeps for
    the backward pass: per token and layer the inputs of the attention and MLP projections and norms,
    about (10 h + 4 i) values in the compute dtype (after Korthikanti et al., 2022, without attention
    scores, which FlashAttention and SDPA do not store), plus fp32 logits and their gradient.
    """
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    layers = config.num_hidden_layers
    element = torch.finfo(placement.compute_dtype).bits // 8
    if method.type != "full":
        states = 0  # adapters are a fraction of a percent of the model
    elif placement.shards > 1:
        states = parameters * 16 // placement.shards  # FSDP: the weights arrive sharded, with their states
    else:
        states = parameters * 12  # fp32 gradients and two Adam moments next to the resident fp32 weights
    activations = tokens * layers * (10 * hidden + 4 * intermediate) * element
    logits = tokens * config.vocab_size * 4 * 2
    return int(states + activations + logits)


def _count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
