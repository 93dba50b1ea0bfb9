"""SparseEncoder: attention modes, tokenization contract, pooling numerics, LoRA, save/load, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laconic_ray import storage
from laconic_ray.config import ModelConfig, load_config
from laconic_ray.model import SparseEncoder
from laconic_ray.model.build import build_encoder, meta_model
from laconic_ray.model.encoder import activate, max_pool_logits, max_pool_logits_naive
from laconic_ray.model.tokenization import load_tokenizer, tokenize
from tests.models import tiny_encoder, tokenizer_path

TEXTS = [
    "Aspirin reduces the risk of heart attacks in adults over fifty.",
    "short one",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
]


def first_position_hidden(encoder, ids):
    inputs = encoder.prepare_ids([ids])
    with torch.no_grad():
        return encoder.hidden_states(inputs.input_ids, inputs.attention_mask)[0, 0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_first_position_sees_the_last_token(family, attn):
    encoder = tiny_encoder("bidirectional", family=family, attn=attn)
    ids = encoder.tokenize(["the cat sat on the mat"], "passage")[0]
    changed = [*ids[:-1], (ids[-1] + 1) % 30000]
    assert not torch.allclose(first_position_hidden(encoder, ids), first_position_hidden(encoder, changed))
    # with padding in the batch (a mask tensor instead of sdpa's is_causal flag), too
    batch = encoder.prepare_ids([ids, changed, ids[:2]])
    with torch.no_grad():
        hidden = encoder.hidden_states(batch.input_ids, batch.attention_mask)
    assert not torch.allclose(hidden[0, 0], hidden[1, 0])


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_causal_first_position_ignores_the_last_token(family, attn):
    encoder = tiny_encoder("causal", family=family, attn=attn)
    ids = encoder.tokenize(["the cat sat on the mat"], "passage")[0]
    changed = [*ids[:-1], (ids[-1] + 1) % 30000]
    torch.testing.assert_close(first_position_hidden(encoder, ids), first_position_hidden(encoder, changed))


def test_echo_pools_only_the_second_copy():
    encoder = tiny_encoder("echo")
    ids = encoder.tokenize(["echo embeddings repeat the input"], "query")[0]
    batch = encoder.prepare_ids([ids, ids[:3]])
    n = len(ids)
    assert batch.input_ids[0, : 2 * n].tolist() == ids + ids
    assert batch.pool_mask[0].tolist() == [False] * n + [True] * n
    assert batch.pool_mask[1].tolist() == [False] * 3 + [True] * 3 + [False] * (2 * n - 6)
    with torch.no_grad():
        weights = encoder(batch.input_ids, batch.attention_mask, batch.pool_mask)
        hidden = encoder.hidden_states(batch.input_ids, batch.attention_mask)
        logits = hidden[0] @ encoder.lm_head.weight.T
    expected = activate(logits[n:].amax(dim=0))  # second copy only
    torch.testing.assert_close(weights[0], expected)
    assert not torch.allclose(weights[0], activate(logits.amax(dim=0)))  # the first copy would change it


@pytest.mark.parametrize("mode", ["bidirectional", "echo", "causal"])
def test_padding_invariance(mode):
    encoder = tiny_encoder(mode)
    batch = encoder.encode_documents(TEXTS, batch_size=3)
    for i, text in enumerate(TEXTS):
        alone = encoder.encode_documents([text], batch_size=1)
        np.testing.assert_allclose(batch[i].toarray(), alone.toarray(), atol=1e-5, rtol=0)


def test_no_bos_in_any_input_with_the_real_llama3_tokenizer():
    tokenizer = load_tokenizer(tokenizer_path("llama3"))
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]
    texts = ["Hello world", "<|begin_of_text|>injected bos", "", "ends with <|end_of_text|>"]
    encoder = tiny_encoder(tokenizer="llama3")
    for kind in ("query", "passage"):
        ids = tokenize(encoder.tokenizer, texts, kind, encoder.settings.text_format)
        assert all(tokenizer.bos_token_id not in seq for seq in ids)
        assert all(tokenizer.eos_token_id not in seq for seq in ids)  # no EOS appended either
        # every text starts with its prefix ("query:" / "passage:"; the space merges into the next word)
        assert all(seq[:2] == ids[2][:2] for seq in ids)
        batch = encoder.prepare_ids(ids)
        assert tokenizer.bos_token_id not in batch.input_ids
        # right padding with EOS, masked out of attention and pooling
        short = int(batch.attention_mask[2].sum())
        assert (batch.input_ids[2, short:] == tokenizer.eos_token_id).all()
        assert not batch.pool_mask[2, short:].any()


def test_prefix_and_truncation_contract():
    encoder = tiny_encoder(query_max_length=8, passage_max_length=12)
    q = encoder.tokenize(["word " * 50], "query")[0]
    p = encoder.tokenize(["word " * 50], "passage")[0]
    assert len(q) == 8 and len(p) == 12
    prefix = encoder.tokenizer("query: ", add_special_tokens=False)["input_ids"]
    assert q[: len(prefix)] == prefix


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("chunk", [1000, 7, 30522, 50000])
def test_chunked_pooling_equals_naive(chunk, per_row):
    torch.manual_seed(0)
    # float64 so that summation order (chunked vs not) is far below the tolerance
    hidden = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30522, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(30522, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, :] = False  # an empty text: every weight 0 after ReLU
    chunked = max_pool_logits(hidden, weight, bias, mask, chunk, per_row=per_row)
    naive = max_pool_logits_naive(hidden, weight, bias, mask)
    torch.testing.assert_close(chunked, naive.float())
    assert (activate(chunked)[2] == 0).all()
    # gradients agree too (what training relies on)
    g = torch.randn(3, 30522, dtype=torch.float64)
    grads_chunked = torch.autograd.grad((activate(chunked) * g).sum(), (hidden, weight, bias))
    grads_naive = torch.autograd.grad(
        (activate(max_pool_logits_naive(hidden, weight, bias, mask)) * g).sum(), (hidden, weight, bias)
    )
    for a, b in zip(grads_chunked, grads_naive, strict=True):
        torch.testing.assert_close(a, b)


def test_encode_top_k_and_order():
    encoder = tiny_encoder()
    full = encoder.encode_documents(TEXTS, batch_size=2)
    top = encoder.encode_documents(TEXTS, batch_size=2, top_k=5)
    for i in range(len(TEXTS)):
        row, row_top = full[i].toarray().ravel(), top[i]
        assert row_top.nnz == 5 and list(row_top.indices) == sorted(row_top.indices)
        assert np.allclose(np.sort(row[row > 0])[-5:], np.sort(row_top.data))
    # rows come back in input order whatever the length sorting did
    np.testing.assert_allclose(full[1].toarray(), encoder.encode_documents([TEXTS[1]]).toarray(), atol=1e-6)


def test_parallel_batches_give_the_same_vectors_and_restore_torch_threads():
    encoder = tiny_encoder()
    texts = TEXTS * 3
    before = torch.get_num_threads()
    stats_one, stats_two = {}, {}
    one = encoder.encode(texts, "passage", batch_size=2, threads=1, stats=stats_one)
    two = encoder.encode(texts, "passage", batch_size=2, threads=2, stats=stats_two)
    assert torch.get_num_threads() == before
    assert one.shape == two.shape
    np.testing.assert_allclose(one.toarray(), two.toarray(), atol=1e-5)
    assert stats_one["tokens"] == stats_two["tokens"] and stats_two["pool_s"] > 0
    # one torch thread per batch: a batch's CPU time cannot exceed its wall time
    wall = stats_two["pad_s"] + stats_two["forward_s"] + stats_two["pool_s"]
    assert 0 < stats_two["model_cpu"] <= wall + 1e-3 * len(texts)


def test_lora_only_adapters_get_gradients():
    encoder = tiny_encoder()
    encoder.add_lora(r=4, alpha=8, dropout=0.0)
    batch = encoder.prepare(TEXTS, "passage")
    encoder(batch.input_ids, batch.attention_mask, batch.pool_mask).sum().backward()
    with_grad = {n for n, p in encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    frozen = [n for n, p in encoder.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for n, p in encoder.named_parameters() if n in frozen)
    assert {n.split("lora_")[0].rsplit(".", 2)[-2] for n in with_grad} >= {"q_proj", "v_proj", "down_proj"}
    # merging folds the adapters in: same vectors, plain module again
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    before = encoder.encode_documents(TEXTS)
    encoder.merge_lora()
    assert not encoder.has_lora
    np.testing.assert_allclose(encoder.encode_documents(TEXTS).toarray(), before.toarray(), atol=1e-5)


def test_lora_applied_after_bidirectional():
    encoder = tiny_encoder("bidirectional")
    encoder.add_lora(r=4, alpha=8)
    ids = encoder.tokenize(["the cat sat on the mat"], "passage")[0]
    changed = [*ids[:-1], (ids[-1] + 1) % 30000]
    assert not torch.allclose(first_position_hidden(encoder, ids), first_position_hidden(encoder, changed))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        encoder = tiny_encoder(seed=3)
        if checkpointing:
            encoder.enable_gradient_checkpointing()
        encoder.train()
        batch = encoder.prepare(TEXTS, "passage")
        encoder(batch.input_ids, batch.attention_mask, batch.pool_mask).sum().backward()
        grads.append(encoder.lm.get_decoder().layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("mode", ["bidirectional", "echo"])
def test_save_load_gives_identical_vectors(tmp_path, mode):
    encoder = tiny_encoder(mode, query_prefix="q> ", top_k=100)
    encoder.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    loaded = SparseEncoder.from_pretrained(tmp_path / "ckpt")
    assert loaded.settings == encoder.settings
    for kind in ("query", "passage"):
        a = encoder.encode(TEXTS, kind).toarray()
        b = loaded.encode(TEXTS, kind).toarray()
        np.testing.assert_array_equal(a, b)


def test_save_load_through_s3(tmp_path, s3_bucket):
    base, options = s3_bucket
    encoder = tiny_encoder()
    uri = storage.join(base, "ckpt")
    encoder.save_pretrained(uri, options)
    loaded = SparseEncoder.from_pretrained(uri, options=options)
    np.testing.assert_array_equal(
        encoder.encode_queries(TEXTS).toarray(), loaded.encode_queries(TEXTS).toarray()
    )


def test_plain_causal_lm_dir_loads_with_default_settings(tmp_path):
    encoder = tiny_encoder("causal")
    encoder.lm.save_pretrained(tmp_path / "plain")
    encoder.tokenizer.save_pretrained(tmp_path / "plain")
    loaded = SparseEncoder.from_pretrained(tmp_path / "plain")  # no laconic.json: LACONIC defaults
    assert loaded.settings.mode == "bidirectional" and loaded.settings.top_k == 512
    assert loaded.lm.config.is_causal is False


def test_save_refuses_unmerged_lora(tmp_path):
    encoder = tiny_encoder()
    encoder.add_lora(r=2, alpha=4)
    with pytest.raises(RuntimeError, match="merge_lora"):
        encoder.save_pretrained(tmp_path / "x")


def test_presets_load_and_8b_instantiates_on_meta():
    tiny = load_config(ModelConfig, "conf/model/tiny.yaml")
    encoder = build_encoder(tiny)
    assert encoder.vocab_size == 30522 and encoder.settings.mode == "bidirectional"
    params = {
        name: sum(
            p.numel() for p in meta_model(load_config(ModelConfig, f"conf/model/{name}.yaml")).parameters()
        )
        for name in ("llama3-1b", "llama3-3b", "llama3-8b")
    }
    assert params["llama3-8b"] == 8_030_261_248  # Llama-3.1-8B
    assert 1.23e9 < params["llama3-1b"] < 1.24e9 and 3.2e9 < params["llama3-3b"] < 3.22e9


def test_model_config_errors():
    from laconic_ray.config import ConfigError

    with pytest.raises(ConfigError, match="mode: must be one of"):
        load_config(ModelConfig, "conf/model/tiny.yaml", ["mode=sideways"])
    with pytest.raises(ConfigError, match="name_or_path: give weights"):
        load_config(ModelConfig, None, [])


def test_bfloat16_compute_returns_float32_weights_close_to_fp32():
    fp32 = tiny_encoder(seed=5)
    bf16 = tiny_encoder(seed=5, dtype="bfloat16")
    assert next(bf16.lm.parameters()).dtype == torch.bfloat16
    batch = bf16.prepare(TEXTS, "passage")
    with torch.no_grad():
        w16 = bf16(batch.input_ids, batch.attention_mask, batch.pool_mask)
        w32 = fp32(batch.input_ids, batch.attention_mask, batch.pool_mask)
    assert w16.dtype == torch.float32
    # same strongest terms per document (bf16 keeps ~3 significant digits)
    for a, b in zip(w16, w32, strict=True):
        top_a, top_b = set(a.topk(20).indices.tolist()), set(b.topk(20).indices.tolist())
        assert len(top_a & top_b) >= 15


def test_logit_bias_shifts_before_relu_and_survives_save_load(tmp_path):
    plain = tiny_encoder(top_k=None)
    biased = tiny_encoder(top_k=None, logit_bias=0.5)
    batch = plain.prepare(TEXTS, "passage")
    with torch.no_grad():
        pooled = max_pool_logits(
            plain.hidden_states(batch.input_ids, batch.attention_mask),
            plain.lm.get_output_embeddings().weight,
            None,
            batch.pool_mask,
        )
        expected = torch.log1p(torch.relu(pooled - 0.5))
        got = biased(batch.input_ids, batch.attention_mask, batch.pool_mask)
    torch.testing.assert_close(got, expected)
    dense, sparse = plain.encode(TEXTS, "passage"), biased.encode(TEXTS, "passage")
    assert sparse.nnz < dense.nnz  # the offset drops ids whose max logit is small
    biased.save_pretrained(tmp_path / "ckpt")
    loaded = SparseEncoder.from_pretrained(tmp_path / "ckpt")
    assert loaded.settings.logit_bias == 0.5
    np.testing.assert_array_equal(loaded.encode(TEXTS, "passage").toarray(), sparse.toarray())


def test_saved_models_carry_a_weights_digest_that_indexes_are_matched_by(tmp_path):
    from laconic_ray.index.partition import ModelMismatchError, check_query_model

    a, b = tiny_encoder(seed=0), tiny_encoder(seed=1)
    a.save_pretrained(str(tmp_path / "a"))
    b.save_pretrained(str(tmp_path / "b"))
    loaded = SparseEncoder.from_pretrained(str(tmp_path / "a"))
    assert loaded.model_id == a.model_id and loaded.model_id.startswith("sha256:")
    assert a.model_id != b.model_id
    metadata = {"vocab_size": 30522, "model": "runs/a", "model_id": a.model_id}
    check_query_model(metadata, loaded, "idx")  # the same model: fine
    with pytest.raises(ModelMismatchError, match=r"idx: documents were encoded by runs/a.*check_model=false"):
        check_query_model(metadata, SparseEncoder.from_pretrained(str(tmp_path / "b")), "idx")
    check_query_model(metadata, b, "idx", strict=False)  # overridden: a warning
    with pytest.raises(ModelMismatchError, match="vocabulary of 128256 ids, the query model 30522"):
        check_query_model({**metadata, "vocab_size": 128256}, loaded, "idx", strict=False)
    check_query_model({"vocab_size": 30522}, loaded, "idx")  # an index without a model id: vocabulary only


def test_a_peft_adapter_folder_loads_onto_its_base(tmp_path):
    base_dir = str(tmp_path / "base")
    tiny_encoder(seed=2).save_pretrained(base_dir)
    tuned = SparseEncoder.from_pretrained(base_dir)
    tuned.add_lora(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tuned.model.save_pretrained(str(tmp_path / "adapter"))  # adapter_config.json + adapter weights only
    assert not (tmp_path / "adapter" / "config.json").exists()
    loaded = SparseEncoder.from_pretrained(str(tmp_path / "adapter"))
    assert not loaded.has_lora  # applied and merged
    texts = ["aspirin and heart attacks", "cells divide"]
    np.testing.assert_allclose(
        loaded.encode_documents(texts).toarray(), tuned.encode_documents(texts).toarray(), atol=1e-5
    )


def test_loading_an_unreachable_hub_id_says_what_to_do(monkeypatch):
    from huggingface_hub import constants

    # the hub client reads HF_HUB_OFFLINE once, at import (earlier in the session): the variable alone left
    # this test retrying the network for ~24 s before the same message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"gated repo .* HF_TOKEN here, and on Ray workers in the nodes' own"):
        SparseEncoder.from_pretrained("meta-llama/Llama-3.2-1B")
