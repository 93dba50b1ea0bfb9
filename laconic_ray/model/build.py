"""Builders: a ``ModelConfig`` becomes plain arguments for ``SparseEncoder`` (configs never enter components)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import torch

from laconic_ray import storage
from laconic_ray.config import ModelConfig
from laconic_ray.model import term_weights
from laconic_ray.model.encoder import SparseEncoder, auto_model_class, build_hf_config

log = logging.getLogger(__name__)


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


def build_encoder(
    model: ModelConfig,
    *,
    device: str | torch.device | None = None,
    options: storage.StorageOptions | None = None,
) -> SparseEncoder:
    """Load ``model.name_or_path`` or, when empty, initialise ``model.architecture`` randomly; then the term
    weights ``model.term_weights`` names (computed here for ``idf:<collection>``: see
    :func:`resolve_term_weights` to do it once)."""
    encoder = _build(model, device)
    if model.term_weights.startswith(term_weights.IDF_PREFIX):
        scale, meta = term_weights.from_corpus(
            encoder, model.term_weights[len(term_weights.IDF_PREFIX) :], options
        )
        encoder.term_weights_meta = meta
        encoder.set_term_weights(torch.from_numpy(scale))
    elif model.term_weights:
        encoder.load_term_weights(model.term_weights, options)
    return encoder


def resolve_term_weights(
    model: ModelConfig, folder: str, options: storage.StorageOptions | None = None
) -> ModelConfig:
    """``term_weights=idf:<collection>`` computed once, into ``<folder>/term_weights.json``, and the config
    pointing there (so that every training worker reads a file instead of tokenizing the corpus); other
    values unchanged. A file already there from the same collection is reused (a resumed run)."""
    if not model.term_weights.startswith(term_weights.IDF_PREFIX):
        return model
    collection = model.term_weights[len(term_weights.IDF_PREFIX) :]
    path = os.path.join(folder, term_weights.TERM_WEIGHTS_FILE)
    from laconic_ray.data.beir import resolve_dataset

    if storage.exists(path, options):
        done = json.loads(storage.read_bytes(path, options))
        if done.get("corpus") == resolve_dataset(collection):
            return dataclasses.replace(model, term_weights=path)
    scale, meta = term_weights.from_corpus(_build(model, "meta"), collection, options)
    term_weights.write(path, scale, meta, options)
    log.info("term weights: sqrt(idf) over %d documents of %s -> %s", meta["documents"], collection, path)
    return dataclasses.replace(model, term_weights=path)


def _build(model: ModelConfig, device: str | torch.device | None) -> SparseEncoder:
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
