"""Encoder quantization at load (none | bfloat16 | int8 on CPU): within a stated tolerance of fp32 on SciFact
texts, inference only, recorded in the settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from laconic_ray.model import SparseEncoder
from tests.models import save_masked_lm, tiny_encoder

# Tolerances, per text: relative L1 error of the weights, and overlap of the 32 heaviest ids with fp32's.
# Measured on the quickstart's trained model (64 SciFact queries / passages): int8 median 3.0% (max 4.3%),
# overlap median 1.0 (min 0.94); bf16 0.9% / 1.0. On this test's random tiny model: int8 1.2-1.8%, bf16 1.0-1.3%,
# overlap 1.0. int8 activations are quantized per tensor, per call: a text's vector also depends (within this
# tolerance) on the batch it was encoded in.
TOLERANCE = {"bfloat16": (0.03, 0.9), "int8": (0.05, 0.9)}


def scifact_texts(data_root, kind, n=32):
    name = "queries.jsonl" if kind == "query" else "corpus.jsonl"
    lines = (data_root / "scifact" / name).read_text().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


def errors(reference, quantized):
    a, b = reference.toarray(), quantized.toarray()
    relative = np.abs(a - b).sum(axis=1) / np.maximum(a.sum(axis=1), 1e-9)
    overlap = [len(set(np.argsort(-a[i])[:32]) & set(np.argsort(-b[i])[:32])) / 32 for i in range(a.shape[0])]
    return float(np.median(relative)), float(np.median(overlap))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "tiny"
    tiny_encoder(seed=5, logit_bias=1.0).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["bfloat16", "int8"])
def test_quantized_vectors_stay_within_tolerance_of_fp32(model_dir, data_root, method):
    reference = SparseEncoder.from_pretrained(model_dir)
    quantized = SparseEncoder.from_pretrained(model_dir, quantization=method)
    assert quantized.quantized == method and quantized.settings.quantization == method
    max_relative, min_overlap = TOLERANCE[method]
    for kind in ("query", "passage"):
        texts = scifact_texts(data_root, kind)
        relative, overlap = errors(reference.encode(texts, kind), quantized.encode(texts, kind))
        print(f"{method} {kind}: relative L1 {relative:.4f}, top-32 overlap {overlap:.3f}")
        assert relative <= max_relative and overlap >= min_overlap
        assert relative > 0  # it did quantize


def test_int8_quantizes_every_linear_and_the_head_in_chunks(model_dir):
    encoder = SparseEncoder.from_pretrained(model_dir, quantization="int8", vocab_chunk=4096)
    plain = [n for n, m in encoder.lm.named_modules() if type(m) is nn.Linear and m is not encoder.lm_head]
    quantized = [
        n for n, m in encoder.lm.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    ]
    assert not plain and len(quantized) == 2 * 7  # two layers x (q, k, v, o, gate, up, down)
    assert len(encoder._head_chunks) == -(-encoder.vocab_size // 4096)
    # the table is only looked up now: kept in bf16, still tied to the (unused) fp32 head's place
    table = encoder.lm.get_input_embeddings().weight
    assert table.dtype == torch.bfloat16 and encoder.lm_head.weight is table


def test_int8_masked_lm_keeps_its_head_bias(tmp_path, data_root):
    folder = save_masked_lm(tmp_path / "splade")
    reference, quantized = (
        SparseEncoder.from_pretrained(folder),
        SparseEncoder.from_pretrained(folder, quantization="int8"),
    )
    texts = scifact_texts(data_root, "passage", 8)
    relative, overlap = errors(reference.encode(texts, "passage"), quantized.encode(texts, "passage"))
    assert relative <= TOLERANCE["int8"][0] and overlap >= TOLERANCE["int8"][1]


def test_quantized_encoders_encode_only_and_refuse_what_they_cannot_do(model_dir, tmp_path):
    encoder = SparseEncoder.from_pretrained(model_dir, quantization="int8")
    batch = encoder.prepare(["aspirin"], "query")
    with pytest.raises(RuntimeError, match="encodes only"):
        encoder(batch.input_ids, batch.attention_mask, batch.pool_mask)
    with pytest.raises(RuntimeError, match="not saved"):
        encoder.save_pretrained(tmp_path / "no")
    with pytest.raises(RuntimeError, match="already quantized"):
        encoder.quantize("bfloat16")
    with pytest.raises(ValueError, match="int4 on cpu"):
        SparseEncoder.from_pretrained(model_dir, quantization="int4")
    with pytest.raises(ValueError, match="quantization must be one of"):
        SparseEncoder.from_pretrained(model_dir, quantization="fp8")


def test_a_checkpoint_can_ask_for_its_quantization(model_dir, tmp_path):
    """The setting lives in laconic.json: a full-precision checkpoint that asks for int8 loads quantized, and
    an explicit argument overrides it."""
    encoder = SparseEncoder.from_pretrained(model_dir)
    encoder.settings.quantization = "int8"
    encoder.save_pretrained(tmp_path / "asks")
    assert json.loads((tmp_path / "asks" / "laconic.json").read_text())["quantization"] == "int8"
    assert SparseEncoder.from_pretrained(tmp_path / "asks").quantized == "int8"
    assert SparseEncoder.from_pretrained(tmp_path / "asks", quantization="none").quantized == "none"
