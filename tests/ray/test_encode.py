"""The Ray Data encode pipeline: exact vectors, local and S3, fault tolerance, resume, bad rows."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import ray

from laconic_ray import sparse, storage
from laconic_ray.config import EncodeConfig, load_config
from laconic_ray.data.beir import iter_documents
from laconic_ray.distributed.encode import FAULT_ENV, run_encode
from laconic_ray.model import SparseEncoder
from tests.models import tiny_encoder

N_DOCS = 240


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_encoder(seed=7, top_k=64).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_root):
    lines = (data_root / "scifact" / "corpus.jsonl").read_text().splitlines(keepends=True)[:N_DOCS]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(lines))
    return str(path)


def encode(model_dir, corpus, output, **overrides):
    args = [
        f"model={model_dir}",
        f"corpus={corpus}",
        f"output={output}",
        "shard_bytes=60000",  # top_k: the default, "model": the checkpoint's own 64
        "batch_size=16",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return run_encode(load_config(EncodeConfig, "conf/encode.yaml", args))


def reference(model_dir, corpus):
    docs = list(iter_documents(corpus))
    encoder = SparseEncoder.from_pretrained(model_dir)
    return [d.id for d in docs], encoder.encode_documents([d.full_text() for d in docs], top_k=64)


def assert_matches_reference(uri, options, model_dir, corpus):
    ids, csr, meta = sparse.read_sparse(uri, options)  # validates every row against the contract
    ref_ids, ref = reference(model_dir, corpus)
    assert len(ids) == len(ref_ids) == N_DOCS and len(set(ids)) == N_DOCS
    order = {d: i for i, d in enumerate(ids)}
    got = csr[[order[d] for d in ref_ids]]
    np.testing.assert_allclose(got.toarray(), ref.toarray(), atol=1e-5, rtol=0)
    assert meta["weight_format"] == "float" and int(meta["vocab_size"]) == 30522 and meta["top_k"] == 64


def test_encode_locally_equals_in_process_encoding(ray_session, model_dir, corpus, tmp_path):
    out = str(tmp_path / "vecs")
    summary = encode(model_dir, corpus, out, num_actors=2)
    assert summary["documents"] == N_DOCS and summary["shards"] > 2 and summary["rejects"] == 0
    assert summary["tokens"] > 0 and summary["mean_nnz"] <= 64
    assert_matches_reference(out, None, model_dir, corpus)
    # a finished output is not rewritten unless asked
    part = tmp_path / "vecs" / "parts" / "part-00000.parquet"
    stamp = part.stat().st_mtime_ns
    assert encode(model_dir, corpus, out)["skipped"] == "already complete"
    assert part.stat().st_mtime_ns == stamp
    # ... nor passed off as what other settings would have made
    with pytest.raises(RuntimeError, match=r"already encoded with other settings \(top_k: 'model' -> 32\)"):
        encode(model_dir, corpus, out, top_k=32)
    assert encode(model_dir, corpus, out, overwrite="true")["encoded_this_run"] == N_DOCS


def test_encode_to_s3(ray_session, model_dir, corpus, s3_bucket):
    base, options = s3_bucket
    out = storage.join(base, "vecs")
    # the actor takes every CPU of the test cluster: the read stage must still run (it once deadlocked)
    summary = encode(
        model_dir, corpus, out, num_cpus_per_actor=4, **{"storage.endpoint_url": options.endpoint_url}
    )
    assert summary["documents"] == N_DOCS
    assert_matches_reference(out, options, model_dir, corpus)


def test_killed_actor_is_retried_and_output_is_complete(
    ray_session, model_dir, corpus, tmp_path, monkeypatch
):
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAULT_ENV, f"encode:1:{marker}")
    out = str(tmp_path / "vecs")
    summary = encode(model_dir, corpus, out, num_actors=1, max_retries=2)
    assert marker.exists()  # the actor really died once
    assert summary["documents"] == N_DOCS
    assert_matches_reference(out, None, model_dir, corpus)


def test_rerun_completes_a_crashed_output(ray_session, model_dir, corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "vecs")
    monkeypatch.setenv(FAULT_ENV, f"encode:2:{tmp_path / 'marker'}")
    with pytest.raises(ray.exceptions.RayError):  # no retries: the job dies with its actor
        encode(model_dir, corpus, out, num_actors=1, max_retries=0)
    assert not storage.exists(storage.join(out, "manifest.json"))
    done_before = len([f for f in os.listdir(tmp_path / "vecs" / "_progress") if f.startswith("part-")])
    monkeypatch.delenv(FAULT_ENV)
    summary = encode(model_dir, corpus, out)
    assert summary["shards_resumed"] == done_before >= 1
    assert summary["encoded_this_run"] < N_DOCS
    assert_matches_reference(out, None, model_dir, corpus)
    # a partial output of another corpus is refused rather than mixed
    other = tmp_path / "other.jsonl"
    other.write_text('{"_id": "x", "text": "y"}\n')
    os.remove(tmp_path / "vecs" / "manifest.json")
    with pytest.raises(RuntimeError, match="different corpus"):
        encode(model_dir, str(other), out)
    with pytest.raises(RuntimeError, match=r"different settings \(kind: 'passage' -> 'query'\)"):
        encode(model_dir, corpus, out, kind="query")


BAD = [
    (b'{"_id": "e1", "title": "", "text": "   "}', "empty text"),
    (b'{"title": "no id", "text": "body"}', "missing field '_id'"),
    (b'{"_id": "m1", "title": "no text"}', "missing field 'text'"),
    (b'{"_id": "u1", "text": "caf\xe9"}', "invalid UTF-8"),
    (b'{"_id": "j1", "text": ', "invalid JSON"),
    (b'{"_id": "ok-1", "text": "again"}', "duplicate id 'ok-1'"),
]


@pytest.fixture
def bad_corpus(tmp_path):
    good = [
        json.dumps({"_id": f"ok-{i}", "title": "t", "text": f"document number {i}"}).encode()
        for i in range(8)
    ]
    lines = good[:4] + [b for b, _ in BAD] + good[4:]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    # a second file repeats an id of the first: a cross-shard duplicate
    (tmp_path / "bad2.jsonl").write_bytes(json.dumps({"_id": "ok-2", "text": "copy"}).encode() + b"\n")
    return path


def test_bad_rows_are_rejected_with_reasons(ray_session, model_dir, bad_corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.replace(bad_corpus, folder / "a.jsonl")
    os.replace(tmp_path / "bad2.jsonl", folder / "b.jsonl")
    out = str(tmp_path / "vecs")
    summary = encode(model_dir, str(folder), out)
    assert summary["documents"] == 8 and summary["rejects"] == len(BAD) + 1
    manifest = storage.read_manifest(out)
    assert manifest.metadata["rejects"] == len(BAD) + 1 and manifest.total_rows == 8
    rejects = [
        json.loads(line)
        for f in sorted(os.listdir(tmp_path / "vecs" / "rejects"))
        for line in (tmp_path / "vecs" / "rejects" / f).read_text().splitlines()
    ]
    reasons = " | ".join(r["reason"] for r in rejects)
    for _, reason in BAD:
        assert reason in reasons
    assert "duplicate id 'ok-2' (kept in shard 0)" in reasons
    lines = sorted(r["line"] for r in rejects if "line" in r)
    assert lines == list(range(5, 5 + len(BAD)))  # the real line numbers of the bad rows
    ids, _, _ = sparse.read_sparse(out)
    assert sorted(ids) == [f"ok-{i}" for i in range(8)]


def test_raise_policy_names_file_and_line(ray_session, model_dir, bad_corpus, tmp_path):
    with pytest.raises(Exception, match=r"bad\.jsonl:5: empty text"):
        encode(model_dir, str(bad_corpus), str(tmp_path / "vecs"), on_bad_row="raise")


def test_quantized_encoding_is_recorded_in_the_manifest(ray_session, model_dir, corpus, tmp_path):
    encode(model_dir, corpus, str(tmp_path / "int8"), quantization="int8")
    ids, csr, meta = sparse.read_sparse(str(tmp_path / "int8"))
    assert meta["quantization"] == "int8"
    ref_ids, ref = reference(model_dir, corpus)
    got = csr[[ids.index(d) for d in ref_ids]].toarray()
    relative = np.abs(got - ref.toarray()).sum(axis=1) / ref.toarray().sum(axis=1)
    assert 0 < np.median(relative) < 0.05  # tests/unit/test_quantization.py's int8 tolerance


def test_queries_are_encoded_with_the_query_prefix(ray_session, model_dir, tmp_path, data_root):
    queries = tmp_path / "queries.jsonl"
    queries.write_text((data_root / "scifact" / "queries.jsonl").read_text().splitlines(keepends=True)[0] * 1)
    out = str(tmp_path / "qvecs")
    encode(model_dir, str(queries), out, kind="query")
    _ids, csr, meta = sparse.read_sparse(out)
    encoder = SparseEncoder.from_pretrained(model_dir)
    text = json.loads(queries.read_text())["text"]
    # top_k=model: queries uncapped, as laconic eval and the service encode them (the model's cap is 64)
    np.testing.assert_allclose(csr.toarray(), encoder.encode_queries([text]).toarray(), atol=1e-5)
    assert meta["kind"] == "query" and meta["top_k"] is None and csr.nnz > 64


def test_a_classic_splade_model_goes_through_every_stage_unchanged(ray_session, corpus, tmp_path):
    """A masked-LM SPLADE folder as downloaded from the hub (no laconic.json): Ray Data encoding gives
    sentence-transformers' vectors; the index, `laconic eval` and `laconic search` take it as they take ours."""
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from laconic_ray.config import EvalConfig, IndexConfig, ServeConfig
    from laconic_ray.distributed.index import run_index
    from laconic_ray.distributed.service import run_search
    from laconic_ray.eval.evaluate import run_eval
    from laconic_ray.eval.runs import read_run
    from tests.models import save_masked_lm

    model = save_masked_lm(tmp_path / "splade")
    encode(model, corpus, str(tmp_path / "vecs"), top_k=64)  # a cap given, as sentence-transformers' below
    ids, csr, meta = sparse.read_sparse(str(tmp_path / "vecs"))
    docs = {d.id: d.full_text() for d in iter_documents(corpus)}
    theirs = STSparseEncoder(model, device="cpu").encode_document(
        [docs[i] for i in ids], max_active_dims=64, convert_to_tensor=True
    )
    np.testing.assert_allclose(csr.toarray(), theirs.to_dense().numpy(), atol=1e-5)
    assert meta["model"] == model

    index = str(tmp_path / "index")
    run_index(load_config(IndexConfig, "conf/index.yaml", [f"input={tmp_path / 'vecs'}", f"output={index}",
                                                           "num_cpus_per_task=0.5", "quantization=float32"]))  # fmt: skip
    summary = run_eval(
        load_config(
            EvalConfig, "conf/eval.yaml", [f"index={index}", f"model={model}", "dataset=scifact", "k=100"]
        )
    )
    assert summary["queries"] == 300 and summary["metrics"]["nDCG@10"] >= 0
    # hybrid: the same learned run fused with BM25 (RRF), each component's figures beside the fused ones
    hybrid = run_eval(load_config(EvalConfig, "conf/eval.yaml", [
        f"index={index}", f"model={model}", "dataset=scifact", "k=100", "retriever=hybrid", f"output={tmp_path}/hy",
    ]))  # fmt: skip
    assert hybrid["components"]["laconic"] == summary["metrics"] and hybrid["fusion"]["fusion"] == "rrf"
    assert hybrid["components"]["bm25"]["nDCG@10"] == pytest.approx(0.665, abs=0.003)  # BEIR's BM25, k=100
    assert hybrid["metrics"]["nDCG@10"] > summary["metrics"]["nDCG@10"]  # a random model gains from BM25
    assert read_run(f"{tmp_path}/hy/run.trec")  # the fused run is the one scored
    query = "sodium channels in heart muscle"
    found = run_search(load_config(ServeConfig, "conf/serve.yaml", [
        f"index={index}", f"model={model}", "num_cpus_per_shard=0.5", f"query={query}", "k=5", "port=1",
    ]))  # fmt: skip
    assert found["via"] == "shard actors"
    vector = SparseEncoder.from_pretrained(model).encode_queries([query])
    expected = (csr @ vector.T).toarray().ravel()
    assert [h["doc_id"] for h in found["hits"]] == [ids[i] for i in np.argsort(-expected, kind="stable")[:5]]
