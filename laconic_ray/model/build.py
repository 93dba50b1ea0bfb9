"""Builders: a ``ModelConfig`` becomes plain arguments for ``SparseEncoder`` (configs never enter components)."""

from __future__ import annotations

from typing import Any

import torch

from laconic_ray.config import ModelConfig
from laconic_ray.model.encoder import SparseEncoder, auto_model_class, build_hf_config


def encoder_settings(model: ModelConfig) -> dict[str, Any]:
    return {
        "mode": model.mode,
        "query_prefix": model.query_prefix,
        "passage_prefix": model.passage_prefix,
        "special_tokens": model.special_tokens,
        "query_max_length": model.query_max_length,
        "passage_max_length": model.passage_max_length,
        "top_k": model.top_k,
        "logit_bias": model.logit_bias,
    }


def build_encoder(model: ModelConfig, *, device: str | torch.device | None = None) -> SparseEncoder:
    """Load ``model.name_or_path`` or, when empty, initialise ``model.architecture`` randomly."""
    common = {
        "dtype": model.dtype,
        "attn_implementation": model.attn_implementation,
        "device": device,
        "vocab_chunk": model.vocab_chunk,
        "pooling_layout": model.pooling_layout,
    }
    if model.name_or_path:
        return SparseEncoder.from_pretrained(
            model.name_or_path, tokenizer=model.tokenizer or None, **common, **encoder_settings(model)
        )
    return SparseEncoder.from_config(
        dict(model.architecture), model.tokenizer, seed=model.seed, **common, **encoder_settings(model)
    )


def meta_model(model: ModelConfig):
    """The LM of ``model.architecture`` on the meta device: shapes and parameter counts, no memory."""
    config = build_hf_config(dict(model.architecture))
    with torch.device("meta"):
        return auto_model_class(config.to_dict()).from_config(config)
