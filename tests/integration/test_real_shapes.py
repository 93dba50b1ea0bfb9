"""Llama-3 1B and 8B at their real widths (vocabulary 128,256; hidden 2,048 tied / 4,096 untied), cut to one
decoder layer, random weights, through the researchers' path on 2 gloo processes: FSDP2 + LoRA + bf16 +
gradient checkpointing + the dense pooling layout, one phase-1 micro-step, exported, and (1B: the phase-2
layout is width-independent, and the 8B's second spawn cost CI 70 s) one phase-2 micro-step from that export;
then the last export reloaded from a hub-layout folder (sharded safetensors with an index, a tokenizer.json whose
post-processor adds BOS), encoded and searched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from laconic_ray.config import ModelConfig, load_config
from laconic_ray.index import InvertedIndex
from laconic_ray.model import SparseEncoder
from tests.distributed_training import Run, spawn
from tests.models import tokenizer_path

BOS = "<|begin_of_text|>"


def add_bos_post_processor(folder: str) -> None:
    """What Meta's hub tokenizer.json does: a template that puts BOS in front of every text."""
    path = os.path.join(folder, "tokenizer.json")
    with open(path) as f:
        spec = json.load(f)
    bos_id = spec["added_tokens"][0]["id"] if spec["added_tokens"][0]["content"] == BOS else 128000
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
    }
    with open(path, "w") as f:
        json.dump(spec, f)


@pytest.mark.parametrize(("preset", "tied"), [("llama3-1b", True), ("llama3-8b", False)])
def test_real_widths_train_export_reload_encode_and_search(preset, tied, tmp_path):
    model_config = load_config(ModelConfig, f"conf/model/{preset}.yaml")
    architecture = {**model_config.architecture, "num_hidden_layers": 1}
    assert architecture["tie_word_embeddings"] is tied and architecture["vocab_size"] == 128_256
    start = SparseEncoder.from_config(architecture, tokenizer_path("llama3"), dtype="bfloat16", seed=0)
    start.save_pretrained(str(tmp_path / "start"), max_shard_size="400MB")
    del start
    assert os.path.exists(tmp_path / "start" / "model.safetensors.index.json")  # sharded, as on the hub
    add_bos_post_processor(str(tmp_path / "start"))

    common = {"steps": 1, "accumulation": 1, "micro_batch": 1, "export": True, "vocab_chunk": 32768}
    spawn(Run(str(tmp_path / "start"), str(tmp_path), "phase1", group_size=1, **common))
    export = tmp_path / "phase1-export"
    if tied:
        spawn(Run(str(export), str(tmp_path), "phase2", group_size=2, **common))
        export = tmp_path / "phase2-export"

    encoder = SparseEncoder.from_pretrained(str(export))
    assert encoder.vocab_size == 128_256 and not encoder.has_lora
    assert len(list(export.glob("*.safetensors"))) >= 1
    bos = encoder.tokenizer.convert_tokens_to_ids(BOS)
    assert encoder.tokenizer("hello").input_ids[0] == bos  # the tokenizer alone adds BOS ...
    docs = ["aspirin lowers the risk of heart attacks", "cells divide by mitosis", "rainbows need sunlight"]
    inputs = encoder.prepare(docs, "passage")
    assert not (inputs.input_ids == bos).any()  # ... the encoder never feeds it (LACONIC's contract)
    vectors = encoder.encode_documents(docs)
    assert vectors.shape == (3, 128_256) and vectors.nnz > 0 and np.isfinite(vectors.data).all()
    index = InvertedIndex.build(vectors, ["a", "b", "c"], quantization="float32")
    query = encoder.encode_queries(["heart attack risk"])
    ids, scores = index.search(query.indices, query.data, k=3)
    assert sorted(ids) == ["a", "b", "c"] and np.all(np.diff(scores) <= 0)
