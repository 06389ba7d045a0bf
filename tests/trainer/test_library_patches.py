"""The run-time patches of library internals (finetune_trainer.patches) hold on the installed libraries.

fused_lora swaps the class of PEFT's LoRA Linear layers; chunked_loss replaces the output head's
forward while the model runs. When a library upgrade changes what either relies on, a test here
fails and names the internal; outside the versions a patch was written for, the trainer takes the
unpatched path.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from finetune_core.api import Method, Training
from finetune_core.api.finetunejob import LoraSettings
from finetune_trainer import losses, patches
from finetune_trainer import model as model_module
from finetune_trainer.batching import collate
from finetune_trainer.data.types import Example
from finetune_trainer.inputs import to_model_inputs

pytestmark = pytest.mark.trainer

LORA = Method(type="lora", lora=LoraSettings(rank=4, alpha=8, dropout=0.1))
# What FusedLoraLinear.forward and _fusable_adapter read on a PEFT LoRA Linear.
LORA_LINEAR_ATTRIBUTES = (
    "base_layer",
    "lora_A",
    "lora_B",
    "lora_dropout",
    "scaling",
    "active_adapters",
    "disable_adapters",
    "merged",
    "lora_variant",
)


@pytest.fixture(autouse=True)
def _speedups_on(monkeypatch):
    monkeypatch.delenv("FINETUNE_DISABLE_SPEEDUPS", raising=False)
    monkeypatch.setattr(patches, "_skipped", set())  # each test sees its own first warning


def load(tiny_model_dir, method: Method = LORA) -> torch.nn.Module:
    training = Training()
    placement = model_module.placement_for(training, torch.device("cpu"))
    return model_module.load_trainable_model(tiny_model_dir, method, training, placement, micro_batch_tokens=256).model


def inputs():
    rows = [Example(input_ids=[5, 6, 7, 8, 9, 10], labels=[-100, -100, 7, 8, 9, 10])]
    return to_model_inputs(collate(rows, [0], packing=True, pad_id=0), pad_token_id=0)


def out_of_range(monkeypatch, name: str) -> None:
    """The patch ``name`` as if written for releases long past: the installed library is outside its range."""
    patch = patches.LIBRARY_PATCHES[name]
    monkeypatch.setitem(patches.LIBRARY_PATCHES, name, dataclasses.replace(patch, lowest=(0, 0), below=(0, 1)))


@pytest.mark.parametrize("name", sorted(patches.LIBRARY_PATCHES))
def test_the_installed_library_is_one_the_patch_was_written_for(name):
    patch = patches.LIBRARY_PATCHES[name]
    version = patches.installed_version(patch.package)
    assert patch.fits(version or ""), (
        f"{patch.package} {version} is outside {patch.written_for}, the versions the {name} patch was written for, "
        f"so the trainer skips it. It relies on: {patch.relies_on}. Check that in the new release (the other tests "
        "here, tests/trainer/test_speedups.py), then move its range in finetune_trainer/patches.py."
    )


@pytest.mark.parametrize(
    ("version", "fits"),
    [("0.21.0", True), ("0.21.2", True), ("0.21.0rc1", True), ("0.20.9", False), ("0.22.0.dev0", False), ("x", False)],
)
def test_a_patch_fits_the_minor_releases_it_was_written_for(version, fits):
    patch = patches.LibraryPatch(package="peft", lowest=(0, 21), below=(0, 22), relies_on="")
    assert patch.fits(version) is fits


def test_peft_builds_the_lora_linear_class_the_fused_layer_replaces(tiny_model_dir, monkeypatch):
    from peft.tuners.lora import Linear

    monkeypatch.setenv("FINETUNE_DISABLE_SPEEDUPS", "fused_lora")
    layers = [m for m in load(tiny_model_dir).modules() if type(m) is Linear]
    assert layers, "get_peft_model no longer wraps nn.Linear targets in peft.tuners.lora.Linear: fused_lora fuses none"
    for attribute in LORA_LINEAR_ATTRIBUTES:
        assert hasattr(layers[0], attribute), f"peft.tuners.lora.Linear lost .{attribute}, which fused_lora reads"
    adapter = layers[0].active_adapters[0]
    assert isinstance(layers[0].lora_A[adapter], torch.nn.Linear), "lora_A[adapter] is no longer an nn.Linear"
    assert isinstance(layers[0].lora_B[adapter], torch.nn.Linear), "lora_B[adapter] is no longer an nn.Linear"
    assert isinstance(float(layers[0].scaling[adapter]), float), "scaling[adapter] is no longer a number"


def test_peft_lora_linear_forward_takes_the_input_and_passes_the_rest_on():
    from peft.tuners.lora import Linear

    parameters = list(inspect.signature(Linear.forward).parameters.values())
    kinds = [(p.name, p.kind) for p in parameters[:2]] + [p.kind for p in parameters[2:]]
    assert kinds == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("x", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ], f"peft.tuners.lora.Linear.forward{inspect.signature(Linear.forward)}: fused_lora overrides forward(x, *a, **kw)"


def test_the_causal_lm_returns_its_output_heads_result_for_the_kept_positions_only(tiny_model_dir):
    model = load(tiny_model_dir)
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear, "get_output_embeddings() is no longer the output head nn.Linear"
    batch = inputs()
    calls = []

    def passing_hidden_states_through(*args, **kwargs):
        calls.append((args, kwargs))
        return args[0]

    head.forward = passing_hidden_states_through
    try:
        logits = losses.target_logits(model, batch)
    finally:
        del head.forward
    assert len(calls) == 1 and not calls[0][1] and len(calls[0][0]) == 1, (
        "the causal LM's forward no longer calls its output head once with the hidden states as the only argument: "
        f"saw {[(len(a), sorted(k)) for a, k in calls]}; chunked_loss replaces that call"
    )
    kept = int(batch.target_mask.sum())
    assert logits.shape == (kept, head.in_features), (
        f"with logits_to_keep=mask the model returned {tuple(logits.shape)} from its head, not the hidden states of "
        f"the {kept} kept positions: chunked_loss relies on the head's result being returned as the logits"
    )
    assert "forward" not in head.__dict__


def test_the_chunked_loss_runs_on_the_written_for_transformers(tiny_model_dir):
    model = load(tiny_model_dir)
    assert losses._frozen_output_head(model) is model.get_output_embeddings()
    assert losses.token_nll(model, inputs()).grad_fn.name() == "ChunkedTokenNllBackward"


def test_outside_the_written_for_peft_the_lora_layers_stay_pefts_own(tiny_model_dir, monkeypatch, trainer_log):
    out_of_range(monkeypatch, "fused_lora")
    model = load(tiny_model_dir)
    assert not [m for m in model.modules() if type(m).__name__ == "FusedLoraLinear"]
    (skipped,) = trainer_log.fields_of("library_patch_skipped")
    assert skipped["patch"] == "fused_lora" and skipped["package"] == "peft" and skipped["written_for"] == ">=0.0,<0.1"


def test_outside_the_written_for_transformers_the_loss_takes_the_full_logits(tiny_model_dir, monkeypatch, trainer_log):
    model = load(tiny_model_dir)
    out_of_range(monkeypatch, "chunked_loss")
    batch = inputs()
    first = losses.token_nll(model, batch)
    losses.token_nll(model, batch)
    assert first.grad_fn.name() != "ChunkedTokenNllBackward"
    skipped = [fields["patch"] for fields in trainer_log.fields_of("library_patch_skipped")]
    assert skipped == ["chunked_loss"], "logged once per process, not once per micro-batch"
