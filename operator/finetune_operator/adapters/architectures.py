"""Linear module names of the architectures serving stacks load LoRA adapters for, by model_type.

Used to check that an adapter's target modules exist in its base model. Unknown architectures are
not guessed at: the check says it could not be made.
"""

from __future__ import annotations

_LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})

LINEAR_MODULES: dict[str, frozenset[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "mixtral": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"}),
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "gpt_neox": frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
    "falcon": frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
    "starcoder2": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"}),
}


def linear_modules(model_type: str | None) -> frozenset[str] | None:
    return LINEAR_MODULES.get(model_type or "")
