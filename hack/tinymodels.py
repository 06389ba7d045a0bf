"""Build a tiny Llama-architecture model and tokenizer locally, without any network.

Tests, the demo and the CPU benchmark need a real base model on machines that cannot reach a
model hub. It lives in hack/, not in the trainer package: the trainer image builds models only
from the URIs a job names, and ships no model builder. This writes a directory that loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` like any Hub checkpoint: config.json, model.safetensors, a
byte-level BPE tokenizer trained on the given (or a built-in) corpus, and a ChatML chat template
with ``{% generation %}`` markers so assistant turns can be masked.

    python -m hack.tinymodels --out /tmp/tiny-llama [--corpus FILE ...] [--layers 2 --hidden 64]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

# ChatML with generation markers, and tools as Qwen-style templates render them: the definitions in a
# system block, each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>, results as "tool" turns.
CHATML_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n# Tools\\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<tool_call>' }}{{ call['function'] | tojson }}{{ '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_BUILTIN_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Kubernetes schedules pods onto nodes; a Job runs pods to completion and retries failed ones.
Fine-tuning adapts a pretrained language model to a task with a small amount of labelled data.
Low-rank adapters train two small matrices per layer instead of the full weight matrix.
Question: what is the capital of France? Answer: Paris is the capital of France.
{"name": "alice", "age": 30, "city": "Lisbon"} {"status": "ok", "items": [1, 2, 3]}
def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)
The weather today is sunny with a light breeze from the west and temperatures around twenty degrees.
User: translate 'good morning' to Spanish. Assistant: buenos dias. User: and to French? Assistant: bonjour.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 3.14 2.71 42.
"""


def build_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (like Llama 3's and Qwen's) trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",  # noqa: S106 a token string of the tokenizer, not a password
        pad_token="<|pad|>",  # noqa: S106 a token string of the tokenizer, not a password
        unk_token=None,
        model_max_length=1 << 20,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out: Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write a randomly initialised Llama and its tokenizer to ``out``; returns ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(corpus) if corpus is not None else _BUILTIN_CORPUS.splitlines()
    tokenizer = build_tokenizer(texts, vocab_size)
    if not chat_template:
        tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _read_corpus(paths: list[Path]) -> list[str]:
    lines: list[str] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if path.suffix == ".jsonl" and line.strip():
                lines.extend(str(v) for v in _strings(json.loads(line)))
            elif line.strip():
                lines.append(line)
    return lines


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a tiny Llama model and tokenizer locally (no network).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, action="append", default=[], help="text or JSONL to train BPE on")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = _read_corpus(args.corpus) if args.corpus else None
    build_tiny_model(
        args.out,
        corpus=corpus,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        seed=args.seed,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
