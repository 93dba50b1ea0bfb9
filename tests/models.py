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


MASKED_FAMILIES = {
    "bert": ("BertConfig", "BertForMaskedLM", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}),
}  # fmt: skip


def save_masked_lm(folder, family: str = "bert", seed: int = 0, head_bias: float = -1.0) -> str:
    """A tiny random ``*ForMaskedLM`` (a classic SPLADE model's layout) saved with the real BERT tokenizer.

    The MLM head's bias is drawn around ``head_bias`` (SPLADE checkpoints' biases are mostly negative) so that
    vectors are sparse-ish, as a trained model's are, rather than every id active."""
    import torch
    import transformers

    from laconic_ray.model.tokenization import load_tokenizer

    config_class, model_class, sizes = MASKED_FAMILIES[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(vocab_size=30522, **sizes))
    with torch.no_grad():
        bias = model.get_output_embeddings().bias
        bias.copy_(torch.randn_like(bias) * 0.5 + head_bias)
    model.save_pretrained(str(folder))
    load_tokenizer(tokenizer_path("bert-base-uncased")).save_pretrained(str(folder))
    return str(folder)
