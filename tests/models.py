"""Tiny randomly initialised causal LMs for tests: real tokenizers, real architectures, seconds to build."""

from __future__ import annotations

import os

from laconic_ray.model import SparseEncoder

FAMILIES = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},
    "mistral": {"model_type": "mistral", "sliding_window": 4096},
}


def tokenizer_path(name: str) -> str:
    return os.path.join(os.environ["LACONIC_TOKENIZERS"], name)


def tiny_architecture(family: str = "llama", vocab_size: int = 30522, **overrides) -> dict:
    return {
        **FAMILIES[family],
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        **overrides,
    }


def tiny_encoder(
    mode: str = "bidirectional",
    family: str = "llama",
    attn: str = "sdpa",
    tokenizer: str = "bert-base-uncased",
    seed: int = 0,
    **settings,
) -> SparseEncoder:
    vocab = 128256 if tokenizer == "llama3" else 30522
    return SparseEncoder.from_config(
        tiny_architecture(family, vocab),
        tokenizer_path(tokenizer),
        mode=mode,
        attn_implementation=attn,
        seed=seed,
        **settings,
    )
