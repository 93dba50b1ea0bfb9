"""Classic SPLADE models (masked LMs: BERT, DistilBERT) behind the same SparseEncoder, checked against
sentence-transformers' own SparseEncoder on tiny random models saved as the hub's are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from laconic_ray.model import SparseEncoder
from laconic_ray.model.encoder import UnsupportedModel
from tests.models import save_masked_lm

TEXTS = [
    "Aspirin reduces the risk of heart attacks in adults over fifty.",
    "short one",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation. " * 40,
    "",
]


def reference(folder, **kwargs):
    """sentence-transformers' SparseEncoder on the same folder: a fill-mask model becomes its
    (MLM) Transformer + SpladePooling, as naver/splade-* load."""
    from sentence_transformers import SparseEncoder as STSparseEncoder

    return STSparseEncoder(folder, device="cpu", **kwargs)


def st_vectors(model, texts, kind):
    encode = model.encode_query if kind == "query" else model.encode_document
    return encode(texts, convert_to_tensor=True).to_dense().numpy()


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_masked_lm_vectors_equal_sentence_transformers(tmp_path, family):
    folder = save_masked_lm(tmp_path / family, family)
    ours = SparseEncoder.from_pretrained(folder)
    assert ours.masked and ours.settings.special_tokens and ours.settings.query_prefix == ""
    theirs = reference(folder)
    assert theirs.max_seq_length == ours.settings.passage_max_length == 512
    for kind in ("query", "passage"):
        want = st_vectors(theirs, TEXTS, kind)
        np.testing.assert_allclose(ours.encode(TEXTS, kind).toarray(), want, atol=1e-5, rtol=0)
        assert (want[3] > 0).sum() > 0  # an empty text is [CLS] [SEP]: both pooled, as in SPLADE
    # the special tokens are in: [CLS] first, [SEP] last, truncated at 512 with both kept
    ids = ours.tokenize([TEXTS[0], TEXTS[2]], "passage")
    tok = ours.tokenizer
    assert ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id
    assert len(ids[1]) == 512 and ids[1][-1] == tok.sep_token_id


def test_opensearch_activation_equals_sentence_transformers_log1p_relu(tmp_path):
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    folder = save_masked_lm(tmp_path / "m")
    ours = SparseEncoder.from_pretrained(folder, activation="log1p_log1p_relu")
    mlm = MLMTransformer(folder)
    theirs = STSparseEncoder(
        modules=[mlm, SpladePooling("max", activation_function="log1p_relu")], device="cpu"
    )
    np.testing.assert_allclose(
        ours.encode(TEXTS, "passage", top_k=None).toarray(), st_vectors(theirs, TEXTS, "passage"), atol=1e-5
    )


def test_saved_masked_model_round_trips_settings_and_vectors(tmp_path):
    ours = SparseEncoder.from_pretrained(save_masked_lm(tmp_path / "m"), passage_max_length=256)
    ours.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "laconic.json").read_text())
    assert saved["special_tokens"] is True and saved["passage_max_length"] == 256
    again = SparseEncoder.from_pretrained(tmp_path / "saved")
    assert again.settings == ours.settings and again.masked
    np.testing.assert_array_equal(
        again.encode_documents(TEXTS).toarray(), ours.encode_documents(TEXTS).toarray()
    )


def test_training_forward_matches_inference_and_has_gradients(tmp_path):
    """The training path (forward with grads: PooledProjection's sparse backward) works on a masked LM."""
    ours = SparseEncoder.from_pretrained(save_masked_lm(tmp_path / "m"))
    batch = ours.prepare(TEXTS[:3], "passage")
    weights = ours(batch.input_ids, batch.attention_mask, batch.pool_mask)
    np.testing.assert_allclose(
        weights.detach().numpy(), ours.encode(TEXTS[:3], "passage", top_k=None).toarray(), atol=1e-5
    )
    weights.sum().backward()
    grad = ours.lm_head.weight.grad
    assert grad is not None and torch.count_nonzero(grad) > 0


def test_what_would_encode_wrongly_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    folder = save_masked_lm(tmp_path / "m")
    with pytest.raises(UnsupportedModel, match="bidirectionally only"):
        SparseEncoder.from_pretrained(folder, mode="echo")
    # a bare encoder (no MLM head): AutoModelForMaskedLM would add a random one
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertModel(config).save_pretrained(str(tmp_path / "bare"))
    with pytest.raises(UnsupportedModel, match="without a masked-LM head"):
        SparseEncoder.from_pretrained(tmp_path / "bare", tokenizer="laconic:bert-base-uncased")


def test_sentence_transformers_api_gives_their_outputs(tmp_path):
    folder = save_masked_lm(tmp_path / "m")
    ours, theirs = SparseEncoder.from_pretrained(folder), reference(folder)
    queries, docs = TEXTS[:2], TEXTS[:3]
    q, d = ours.encode_query(queries), ours.encode_document(docs)
    assert q.is_sparse and q.shape == (2, 30522)
    torch.testing.assert_close(q.to_dense(), theirs.encode_query(queries).to_dense(), atol=1e-5, rtol=0)
    one = ours.encode_query(queries[0])
    assert one.shape == (30522,) and torch.equal(one.to_dense(), q.to_dense()[0])
    torch.testing.assert_close(
        ours.similarity(q, d), theirs.similarity(theirs.encode_query(queries), theirs.encode_document(docs))
    )
    assert [t for t, _ in ours.decode(one, top_k=5)] == [
        t for t, _ in theirs.decode(theirs.encode_query(queries[0]), top_k=5)
    ]
    # every format the encode methods give is accepted back, with the same answer
    csr = ours.encode_query(queries, output="scipy")
    assert ours.decode(csr, top_k=3) == ours.decode(q, top_k=3) == ours.decode(q.to_dense(), top_k=3)
    assert torch.equal(ours.similarity(csr, d), ours.similarity(q, d))
    top = ours.encode_document(docs, max_active_dims=7, output="scipy")
    assert top.getnnz(axis=1).max() == 7
    with pytest.raises(ValueError, match="output must be"):
        ours.encode_query("x", output="list")


def test_folders_move_both_ways_between_us_and_sentence_transformers(tmp_path):
    """A SPLADE model saved by sentence-transformers (its prompts, max length and activation) loads with those
    settings; one we save loads in sentence-transformers with the same vectors."""
    folder = save_masked_lm(tmp_path / "m")
    theirs = reference(folder)
    theirs.max_seq_length = 128
    theirs.prompts = {"query": "q: ", "document": "d: "}
    theirs.save(str(tmp_path / "st"))
    ours = SparseEncoder.from_pretrained(tmp_path / "st")
    from_object = SparseEncoder.from_sentence_transformers(theirs)  # the object itself, through a temp folder
    assert from_object.settings == ours.settings
    np.testing.assert_array_equal(
        from_object.encode_documents(TEXTS).toarray(), ours.encode_documents(TEXTS).toarray()
    )
    s = ours.settings
    assert (s.query_prefix, s.passage_prefix, s.passage_max_length, s.special_tokens) == (
        "q: ",
        "d: ",
        128,
        True,
    )
    for kind in ("query", "passage"):
        np.testing.assert_allclose(
            ours.encode(TEXTS, kind).toarray(), st_vectors(theirs, TEXTS, kind), atol=1e-5
        )

    mine = SparseEncoder.from_pretrained(folder, passage_max_length=100, query_max_length=100,
                                         activation="log1p_log1p_relu", passage_prefix="doc: ")  # fmt: skip
    mine.save_pretrained(tmp_path / "ours")
    back = reference(str(tmp_path / "ours"))
    assert back.max_seq_length == 100
    for kind in ("query", "passage"):
        np.testing.assert_allclose(
            mine.encode(TEXTS, kind).toarray(), st_vectors(back, TEXTS, kind), atol=1e-5
        )
    assert SparseEncoder.from_pretrained(tmp_path / "ours").settings == mine.settings


def test_lora_on_a_masked_lm_adapts_every_linear_but_the_projection_and_merges(tmp_path):
    ours = SparseEncoder.from_pretrained(save_masked_lm(tmp_path / "m"))
    ours.add_lora(r=4, alpha=8, dropout=0.0)  # the default targets are Llama's names: all-linear instead
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("attention" in n for n in trainable) and not any("decoder" in n for n in trainable)
    batch = ours.prepare(TEXTS[:2], "passage")
    ours.train()
    ours(batch.input_ids, batch.attention_mask, batch.pool_mask).sum().backward()
    with torch.no_grad():  # move the adapters so that merging changes something
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    adapted = ours.encode_documents(TEXTS[:2]).toarray()
    ours.merge_lora()
    np.testing.assert_allclose(ours.encode_documents(TEXTS[:2]).toarray(), adapted, atol=1e-5)
    ours.save_pretrained(tmp_path / "merged")
    again = SparseEncoder.from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(again.encode_documents(TEXTS[:2]).toarray(), adapted, atol=1e-5)


def test_document_only_models_encode_queries_from_their_table_as_sentence_transformers(tmp_path):
    """An inference-free model saved by sentence-transformers (a Router: MLM + SpladePooling for documents, a
    SparseStaticEmbedding idf table for queries) loads with query_encoder=idf and gives their vectors; saved
    by us it carries idf.json (OpenSearch's layout), which loads back the same."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        MLMTransformer,
        Router,
        SparseStaticEmbedding,
        SpladePooling,
    )

    folder = save_masked_lm(tmp_path / "m")
    mlm = MLMTransformer(folder)
    generator = torch.Generator().manual_seed(0)
    idf = torch.rand(30522, generator=generator) * (torch.rand(30522, generator=generator) > 0.3)
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(mlm.tokenizer, weight=idf, frozen=True)],
        document_modules=[mlm, SpladePooling("max", activation_function="log1p_relu")],
    )
    theirs = STSparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    theirs.save(str(tmp_path / "st"))
    ours = SparseEncoder.from_pretrained(tmp_path / "st")
    assert ours.settings.query_encoder == "idf" and ours.settings.activation == "log1p_log1p_relu"
    queries = ["what causes rainbows rainbows", "Aspirin and the heart", ""]
    np.testing.assert_allclose(
        ours.encode(queries, "query").toarray(), st_vectors(theirs, queries, "query"), atol=1e-6
    )
    np.testing.assert_allclose(
        ours.encode(TEXTS, "passage").toarray(), st_vectors(theirs, TEXTS, "passage"), atol=1e-5
    )
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "idf.json").is_file() and not (tmp_path / "ours" / "modules.json").exists()
    again = SparseEncoder.from_pretrained(tmp_path / "ours")
    np.testing.assert_allclose(
        again.encode(queries, "query").toarray(), ours.encode(queries, "query").toarray()
    )
    with pytest.raises(UnsupportedModel, match=r"idf\.json"):
        SparseEncoder.from_pretrained(folder, query_encoder="idf")
