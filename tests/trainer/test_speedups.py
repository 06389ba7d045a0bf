"""The trainer's speed-ups change nothing but rounding: the fused LoRA layer (CPU) and the chunked cross-entropy.

Each is compared with what it replaces, PEFT's own LoRA Linear and the cross-entropy of full logits, on
the same weights; FINETUNE_DISABLE_SPEEDUPS turns each one off by its name in model.SPEEDUPS.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from finetune_core.api import Method, Training
from finetune_core.api.finetunejob import LoraSettings
from finetune_trainer import losses
from finetune_trainer import model as model_module
from finetune_trainer.batching import collate
from finetune_trainer.data.types import IGNORE_INDEX, Example
from finetune_trainer.inputs import to_model_inputs

pytestmark = pytest.mark.trainer

FUSED = "_LoraLinearFunctionBackward"  # the autograd node of a call the fused layer served
CHUNKED = "ChunkedTokenNllBackward"  # the autograd node of the chunked cross-entropy


@pytest.fixture(autouse=True)
def _speedups_on(monkeypatch):
    monkeypatch.delenv("FINETUNE_DISABLE_SPEEDUPS", raising=False)


# ---------------------------------------------------------------------------------------------
# fused LoRA


class _Net(torch.nn.Module):
    def __init__(self, features: int, outputs: int, bias: bool, linear: type = torch.nn.Linear):
        super().__init__()
        self.proj = linear(features, outputs, bias=bias)


class _LinearSubclass(torch.nn.Linear):
    pass


class _CustomDropout(torch.nn.Module):
    def forward(self, x):
        return x


def peft_layer(
    features: int = 16,
    outputs: int = 12,
    rank: int = 4,
    *,
    alpha: int = 8,
    dropout: float = 0.0,
    rslora: bool = False,
    bias: bool = True,
    seed: int = 0,
    linear: type = torch.nn.Linear,
    **config,
):
    """PEFT's LoRA Linear (base frozen, as get_peft_model leaves it) with random A and B, and its PeftModel."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, target_modules=["proj"], **config
    )
    peft_model = get_peft_model(_Net(features, outputs, bias, linear), lora)
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.3)
    return layer, peft_model


def fused_copy(layer):
    fused = copy.deepcopy(layer)
    assert model_module.fuse_lora_layers(fused) == 1
    return fused


def lora_weights(layer, adapter: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


def outputs_and_grads(layer, x: torch.Tensor, seed: int = 1):
    """The output of ``layer`` on ``x`` and the gradients of a random projection of it: (out, dx, dA, dB)."""
    x = x.detach().clone().requires_grad_(True)
    lora_a, lora_b = lora_weights(layer)
    lora_a.grad = lora_b.grad = None
    out = layer(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    return out, x.grad, lora_a.grad, lora_b.grad


def assert_close(got: torch.Tensor, want: torch.Tensor, tolerance: float = 1e-6, msg: str = "") -> None:
    """Equal up to fp32 rounding: ``tolerance`` relative to the largest magnitude (elementwise rtol fails near 0)."""
    assert got.shape == want.shape and got.dtype == want.dtype, msg
    scale = max(1.0, want.abs().max().item())
    difference = (got - want).abs().max().item() if got.numel() else 0.0
    assert difference <= tolerance * scale, f"{msg}: max difference {difference:.3g} for magnitude {scale:.3g}"


def node(tensor: torch.Tensor) -> str:
    return type(tensor.grad_fn).__name__


@pytest.mark.parametrize(
    ("features", "outputs", "rank", "rslora", "bias", "shape"),
    [
        (16, 12, 4, False, True, (3, 5, 16)),
        (16, 12, 4, True, True, (3, 5, 16)),
        (7, 9, 1, False, False, (4, 7)),
        (32, 8, 8, True, False, (2, 3, 4, 32)),
        (16, 12, 4, False, True, (16,)),
    ],
    ids=["3d", "rslora", "rank1-2d-nobias", "rslora-4d", "1d"],
)
def test_fused_lora_matches_peft_outputs_and_gradients_without_dropout(features, outputs, rank, rslora, bias, shape):
    layer, _ = peft_layer(features, outputs, rank, alpha=2 * rank + 3, rslora=rslora, bias=bias)
    expected_scaling = (2 * rank + 3) / (math.sqrt(rank) if rslora else rank)
    assert layer.scaling["default"] == pytest.approx(expected_scaling)
    fused = fused_copy(layer)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    reference = outputs_and_grads(layer, x)
    result = outputs_and_grads(fused, x)

    assert node(result[0]) == FUSED
    assert result[0].shape == reference[0].shape
    for name, got, want in zip(("output", "input grad", "A grad", "B grad"), result, reference, strict=True):
        assert_close(got, want, msg=name)


def test_fused_lora_matches_peft_for_a_non_contiguous_input():
    layer, _ = peft_layer()
    fused = fused_copy(layer)
    x = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(2)).transpose(0, 1)
    assert not x.is_contiguous()
    for got, want in zip(outputs_and_grads(fused, x), outputs_and_grads(layer, x), strict=True):
        assert_close(got, want)


def test_fused_lora_model_gives_peft_loss_and_gradients(tiny_model_dir, monkeypatch):
    """load_trainable_model on CPU fuses every LoRA Linear; the loss and all LoRA gradients stay PEFT's."""
    method = Method(type="lora", lora=LoraSettings(rank=4, alpha=8, dropout=0.0))
    inputs = packed_inputs()

    def loss_and_grads(disabled: str):
        monkeypatch.setenv("FINETUNE_DISABLE_SPEEDUPS", disabled)
        model = load(tiny_model_dir, method)
        randomise_lora(model)
        loss = losses.summed_token_loss(model, inputs)
        loss.backward()
        return model, loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fused_model, fused_loss, fused_grads = loss_and_grads("chunked_loss")
    peft_model, peft_loss, peft_grads = loss_and_grads("fused_lora,chunked_loss")
    assert count_fused(fused_model) == 14 and count_fused(peft_model) == 0  # 7 projections x 2 layers
    assert_close(fused_loss, peft_loss)
    assert fused_grads.keys() == peft_grads.keys()
    for name in fused_grads:
        assert_close(fused_grads[name], peft_grads[name], msg=name)


def test_fused_lora_dropout_changes_the_output_in_training_and_averages_to_the_undropped_output():
    rate = 0.3
    layer, _ = peft_layer(dropout=rate)
    fused = fused_copy(layer).train()
    row = torch.randn(16, generator=torch.Generator().manual_seed(2))
    samples = 20000
    x = row.expand(samples, 16).contiguous()  # one input, a fresh mask per row
    with torch.no_grad():
        undropped = fused.eval()(row)
        torch.manual_seed(3)
        dropped = fused.train()(x)

    assert not torch.allclose(dropped[0], undropped, atol=1e-3)
    assert (dropped != undropped).any(dim=-1).float().mean() > 0.9  # nearly every row lost some input
    standard_error = dropped.std(dim=0) / math.sqrt(samples)
    assert ((dropped.mean(dim=0) - undropped).abs() <= 5 * standard_error + 1e-5).all()


def test_fused_lora_dropout_keeps_the_configured_fraction_of_inputs():
    torch.manual_seed(4)
    keep, kept_fraction = model_module._dropout_keep_mask(torch.empty(200_000), 0.3)
    assert keep.dtype == torch.bool and keep.shape == (200_000,)
    assert kept_fraction == pytest.approx(0.7, abs=1 / 65536)
    assert keep.float().mean().item() == pytest.approx(0.7, abs=0.005)


def test_fused_lora_dropout_gradients_are_those_of_its_mask():
    """Output and gradients equal autograd's for base(x) + s * B A (x * mask / keep), with the same mask."""
    rate = 0.25
    layer, _ = peft_layer(dropout=rate)
    fused = fused_copy(layer).train()
    x = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(2))

    torch.manual_seed(5)
    result = outputs_and_grads(fused, x)
    assert node(result[0]) == FUSED

    torch.manual_seed(5)
    keep, kept_fraction = model_module._dropout_keep_mask(x.reshape(-1, 16), rate)
    lora_a, lora_b = (w.detach().clone().requires_grad_(True) for w in lora_weights(layer))
    xr = x.clone().requires_grad_(True)
    masked = xr * keep.view(x.shape) / kept_fraction
    base = layer.base_layer
    out = F.linear(xr, base.weight, base.bias) + F.linear(F.linear(masked, lora_a), lora_b) * layer.scaling["default"]
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()

    for name, got, want in zip(
        ("output", "input grad", "A grad", "B grad"), result, (out, xr.grad, lora_a.grad, lora_b.grad), strict=True
    ):
        assert_close(got, want, msg=name)


def test_fused_lora_dropout_is_off_in_eval_mode_and_matches_peft():
    layer, _ = peft_layer(dropout=0.5)
    fused = fused_copy(layer)
    layer.eval()
    fused.eval()
    x = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(6)
    first = outputs_and_grads(fused, x)
    second = outputs_and_grads(fused, x)
    assert node(first[0]) == FUSED
    for got, again, want in zip(first, second, outputs_and_grads(layer, x), strict=True):
        assert_close(got, want)
        assert torch.equal(got, again)


def _several_adapters(layer, peft_model):
    from peft import LoraConfig

    torch.manual_seed(11)  # the same second adapter in both copies
    peft_model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]))
    with torch.no_grad():
        layer.lora_B["second"].weight.normal_()
    peft_model.base_model.set_adapter(["default", "second"])
    layer.lora_A["second"].weight.requires_grad_(True)
    layer.lora_B["second"].weight.requires_grad_(True)


def _trainable_base_weight(layer, peft_model):
    layer.base_layer.weight.requires_grad_(True)


def _trainable_base_bias(layer, peft_model):
    layer.base_layer.bias.requires_grad_(True)


def _custom_dropout(layer, peft_model):
    layer.lora_dropout["default"] = _CustomDropout()


def _merged(layer, peft_model):
    layer.merge()


# Each case: how to build the layer (peft_layer keyword arguments), what to do to both copies, how to call them.
FALLBACKS = {
    "merged-adapter": ({}, _merged, {}),
    "several-active-adapters": ({}, _several_adapters, {}),
    "dora-variant": ({"use_dora": True}, None, {}),
    "lora-bias": ({"lora_bias": True}, None, {}),
    "base-subclass-of-linear": ({"linear": _LinearSubclass}, None, {}),
    "trainable-base-weight": ({}, _trainable_base_weight, {}),
    "trainable-base-bias": ({}, _trainable_base_bias, {}),
    "other-dropout-module": ({}, _custom_dropout, {}),
    "keyword-arguments": ({}, None, {"adapter_names": ["default"] * 4}),
}


@pytest.mark.parametrize("case", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_calls_the_fused_layer_cannot_serve_fall_back_to_peft(case):
    build, prepare, call_kwargs = case
    layer, peft_model = peft_layer(**build)
    fused_peft_model = copy.deepcopy(peft_model)
    fused = fused_peft_model.base_model.model.proj
    assert model_module.fuse_lora_layers(fused_peft_model) == 1
    if prepare is not None:
        prepare(layer, peft_model)
        prepare(fused, fused_peft_model)
    x = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(2))

    def run(module):
        xr = x.clone().requires_grad_(True)
        out = module(xr, **call_kwargs)
        out.square().sum().backward()
        grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
        return out, xr.grad, grads

    got, want = run(fused), run(layer)
    assert node(got[0]) != FUSED
    # PEFT's own forward on the same weights: the same operations, so bit for bit the same
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    assert got[2].keys() == want[2].keys() and got[2]
    for name in got[2]:
        both = got[2][name], want[2][name]
        assert both == (None, None) if None in both else torch.equal(*both), name  # merged: A and B get none


def test_disabled_adapters_fall_back_to_the_base_layer_call_by_call():
    layer, peft_model = peft_layer()
    assert model_module.fuse_lora_layers(peft_model) == 1
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with peft_model.disable_adapter():
        off = layer(x)
    on = layer(x)
    assert node(off) != FUSED and node(on) == FUSED
    torch.testing.assert_close(off, layer.base_layer(x), atol=0, rtol=0)


def test_autocast_falls_back_to_peft():
    layer, _ = peft_layer()
    fused = fused_copy(layer)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(x), layer(x)
    assert node(got) != FUSED
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_an_input_in_another_dtype_than_the_adapter_falls_back_to_peft():
    """A bf16 base with fp32 adapters (autocast_adapter_dtype) fed bf16 inputs: PEFT casts, the fused layer cannot."""
    layer, _ = peft_layer()
    layer.base_layer.to(torch.bfloat16)
    fused = fused_copy(layer)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).requires_grad_(True)
    got, want = fused(x), layer(x)
    assert node(got) != FUSED
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# chunked cross-entropy


def examples() -> list[Example]:
    """Three examples of different lengths with prompt tokens (IGNORE_INDEX) that take no loss."""
    made = []
    for i, (length, prompt) in enumerate([(9, 3), (6, 2), (11, 5)]):
        ids = [(37 * i + 11 * j) % 500 + 20 for j in range(length)]
        made.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return made


def packed_inputs(packing: bool = True):
    batch = collate(examples(), [0, 1, 2], packing=packing, pad_id=0)
    return to_model_inputs(batch, pad_token_id=0)


def load(tiny_model_dir, method: Method):
    training = Training()
    placement = model_module.placement_for(training, torch.device("cpu"))
    return model_module.load_trainable_model(tiny_model_dir, method, training, placement, micro_batch_tokens=256).model


def randomise_lora(model, seed: int = 8) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.05)


def count_fused(model) -> int:
    return sum(1 for m in model.modules() if type(m).__name__ == "FusedLoraLinear")


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """The tiny Llama with LoRA adapters (random A and B) as the trainer loads it: frozen output head."""
    model = load(tiny_model_dir, Method(type="lora", lora=LoraSettings(rank=4, alpha=8, dropout=0.0)))
    randomise_lora(model)
    return model


def nll_and_grads(model, inputs, chunked: bool):
    """Per-token NLL, its gradient w.r.t. the output head's input at the target positions, and the LoRA gradients.

    Plain (the reference): logits at every position, then cross-entropy at the target positions.
    Chunked: losses.token_nll, which must take the chunked path.
    """
    model.zero_grad()
    seen = {}

    def keep_head_input(module, args):
        seen["hidden"] = args[0]
        args[0].retain_grad()

    mask = inputs.target_mask
    hook = model.get_output_embeddings().register_forward_pre_hook(keep_head_input)
    try:
        if chunked:
            nll = losses.token_nll(model, inputs)
            assert node(nll) == CHUNKED
        else:
            logits = model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False).logits
            nll = F.cross_entropy(logits[mask].float(), inputs.targets[mask], reduction="none")
    finally:
        hook.remove()
    nll.sum().backward()
    hidden_grad = seen["hidden"].grad if chunked else seen["hidden"].grad[mask]  # chunked: targets only
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return nll.detach(), hidden_grad, grads


@pytest.mark.parametrize("budget_rows", [0, 3], ids=["budget-below-vocab", "3-rows"])
@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_chunked_loss_matches_full_logits_cross_entropy_and_gradients(lora_model, monkeypatch, packing, budget_rows):
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    # 0 rows: a budget smaller than one row of logits (one row per chunk); else a few rows per chunk
    monkeypatch.setattr(losses, "CPU_CHUNK_ELEMENTS", budget_rows * vocab + vocab // 2)
    inputs = packed_inputs(packing)
    assert inputs.target_tokens == 16  # 6 + 4 + 6: chunks of 3 rows straddle the examples, the last one is partial

    want_nll, want_hidden, want_grads = nll_and_grads(lora_model, inputs, chunked=False)
    got_nll, got_hidden, got_grads = nll_and_grads(lora_model, inputs, chunked=True)

    assert got_nll.shape == (inputs.target_tokens,)
    assert_close(got_nll, want_nll)
    assert_close(got_hidden, want_hidden)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name in got_grads:
        assert_close(got_grads[name], want_grads[name], msg=name)


def test_chunked_loss_without_gradients_matches_full_logits_cross_entropy(lora_model, monkeypatch):
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(losses, "CPU_CHUNK_ELEMENTS", 2 * vocab)
    inputs = packed_inputs()
    want_nll, _, _ = nll_and_grads(lora_model, inputs, chunked=False)
    with torch.no_grad():
        got = losses.token_nll(lora_model, inputs)
    assert got.grad_fn is None
    assert_close(got, want_nll)


def test_chunked_cross_entropy_scales_each_rows_gradient_by_its_incoming_gradient():
    """Weighted token losses (sequence sums, DPO): d/d hidden is row i's gradient times the weight of row i."""
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(13, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator)
    bias = torch.randn(50, generator=generator)
    targets = torch.randint(0, 50, (13,), generator=generator)
    upstream = torch.randn(13, generator=generator)

    got = losses.ChunkedTokenNll.apply(hidden, weight, bias, targets, 4)
    (got_grad,) = torch.autograd.grad(got, hidden, upstream)
    want = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    (want_grad,) = torch.autograd.grad(want, hidden, upstream)

    assert_close(got, want)
    assert_close(got_grad, want_grad)


# ---------------------------------------------------------------------------------------------
# FINETUNE_DISABLE_SPEEDUPS


def test_the_speedups_are_named_fused_lora_and_chunked_loss():
    assert set(model_module.SPEEDUPS) == {"fused_lora", "chunked_loss"}
    with pytest.raises(ValueError, match="unknown speed-up"):
        model_module.speedup_enabled("no_such_speedup")


@pytest.mark.parametrize(
    ("disabled", "fused_on", "chunked_on"),
    [
        ("", True, True),
        ("fused_lora,chunked_loss", False, False),
        (" chunked_loss , fused_lora ", False, False),
        ("fused_lora", False, True),
        ("chunked_loss", True, False),
    ],
    ids=["none", "both", "both-spaced", "fused-only", "chunked-only"],
)
def test_disable_speedups_turns_off_exactly_the_named_ones(tiny_model_dir, monkeypatch, disabled, fused_on, chunked_on):
    from peft.tuners.lora import Linear as PeftLoraLinear

    monkeypatch.setenv("FINETUNE_DISABLE_SPEEDUPS", disabled)
    model = load(tiny_model_dir, Method(type="lora", lora=LoraSettings(rank=4, alpha=8, dropout=0.1)))
    lora_layers = [m for m in model.modules() if isinstance(m, PeftLoraLinear)]
    assert len(lora_layers) == 14
    if fused_on:
        assert count_fused(model) == 14
    else:
        assert all(type(m) is PeftLoraLinear for m in lora_layers)

    nll = losses.token_nll(model, packed_inputs())
    assert node(nll) == (CHUNKED if chunked_on else "NllLossBackward0")
    assert model_module.speedup_enabled("fused_lora") is fused_on
    assert model_module.speedup_enabled("chunked_loss") is chunked_on


def test_a_misspelt_speedup_name_is_a_configuration_error(monkeypatch):
    from finetune_trainer.errors import ConfigError
    from finetune_trainer.model import speedup_enabled

    monkeypatch.setenv("FINETUNE_DISABLE_SPEEDUPS", "fused-lora")
    with pytest.raises(ConfigError, match="fused-lora"):
        speedup_enabled("fused_lora")
