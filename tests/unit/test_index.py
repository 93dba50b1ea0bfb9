"""The index engine against exhaustive scoring: exact equality (ids, scores, ties), approximate recall, batch
search, save/load, and every error case."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from laconic_ray import sparse, storage
from laconic_ray.index import IndexFormatError, InvertedIndex, QueryError, merge_topk
from laconic_ray.index.build import quantize_impacts
from laconic_ray.index.reorder import bisection_order
from tests.vectors import bm25_queries, collection_vectors, splade_toy


def exhaustive(index: InvertedIndex, docs: sp.csr_matrix, doc_ids: list[str], query: sp.csr_matrix, k: int):
    """Ground truth: float64 dot products of the query with the *quantized* documents; ties by doc id."""
    impacts, _ = quantize_impacts(docs.data, index.meta.quantization, index.meta.scale)
    quantized = sp.csr_matrix((impacts.astype(np.float64), docs.indices, docs.indptr), shape=docs.shape)
    scores = (quantized @ query.astype(np.float64).T).toarray().ravel() * index.meta.scale
    ids = np.asarray(doc_ids)
    matching = np.flatnonzero(scores > 0)
    order = matching[np.lexsort((ids[matching], -scores[matching]))][:k]
    return ids[order].tolist(), scores[order]


def random_vectors(n_docs: int, n_queries: int, vocab: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)

    def draw(n, density):
        m = sp.random(n, vocab, density=density, format="csr", random_state=rng, dtype=np.float32)
        m.data = rng.lognormal(-0.5, 0.8, m.nnz).astype(np.float32)
        m.sort_indices()
        return m

    return draw(n_docs, 0.02), draw(n_queries, 0.01)


@pytest.fixture(scope="module")
def random_setup():
    docs, queries = random_vectors(5000, 40, 3000, seed=1)
    ids = [f"doc-{i:05d}" for i in np.random.default_rng(2).permutation(5000)]  # ids not in row order
    return docs, ids, queries


# the exact kernels: block-max pruning scoring block by block (switch 0), the blocks left under flat bounds term
# at a time (switch huge), either by cost (the default), and term at a time over the whole shard (small
# shards: accumulate_docs); name -> (accumulate_docs, switch)
PATHS = {
    "blocks": (0, 0.0),
    "flat bounds term at a time": (0, 1e18),
    "block-max default": (0, InvertedIndex.SWITCH),
    "accumulate": (10**9, InvertedIndex.SWITCH),
}


def use_path(index: InvertedIndex, path: str) -> None:
    index.accumulate_docs, index.switch = PATHS[path]


@pytest.mark.parametrize("reorder", ["bp", "none"])
@pytest.mark.parametrize("quantization", ["uint8", "uint16"])
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_exact_equals_exhaustive_on_random_vectors(random_setup, quantization, k, reorder):
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids, quantization=quantization, block_size=32, reorder=reorder)
    for path in PATHS:
        use_path(index, path)
        for qi in range(queries.shape[0]):
            got_ids, got_scores = index.search(queries[qi].indices, queries[qi].data, k)
            exp_ids, exp_scores = exhaustive(index, docs, ids, queries[qi], k)
            assert got_ids == exp_ids, (path, qi)
            np.testing.assert_array_equal(got_scores, exp_scores)


def head_heavy_vectors(n_docs: int, n_queries: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Few frequent terms in most documents (Zipf over a 600-id vocabulary): block bounds are flat, so the
    block-max kernel scores the blocks left term at a time (issue 24's regime, small)."""
    rng = np.random.default_rng(seed)
    vocab = 600
    p = 1.0 / (np.arange(vocab) + 5.0)
    p /= p.sum()

    def draw(n: int, length: int) -> sp.csr_matrix:
        rows = np.repeat(np.arange(n), length)
        cols = rng.choice(vocab, size=n * length, p=p)
        values = rng.lognormal(-0.4, 0.8, n * length).astype(np.float32)
        m = sp.csr_matrix((values, (rows, cols)), shape=(n, vocab))  # duplicates summed
        m.sort_indices()
        return m

    return draw(n_docs, 40), draw(n_queries, 12)


@pytest.mark.parametrize("quantization", ["uint8", "uint16", "float32"])
def test_exact_equals_exhaustive_where_bounds_prune_weakly(quantization):
    docs, queries = head_heavy_vectors(6000, 30, seed=3)
    ids = [f"h{i:05d}" for i in range(docs.shape[0])]
    index = InvertedIndex.build(docs, ids, quantization=quantization, block_size=32)
    for path in PATHS:
        use_path(index, path)
        batch = index.batch_search(queries, 20, num_threads=2)
        for qi in range(queries.shape[0]):
            got_ids, got_scores = index.search(queries[qi].indices, queries[qi].data, 20)
            exp_ids, exp_scores = exhaustive(index, docs, ids, queries[qi], 20)
            assert got_ids == exp_ids == batch[qi][0], (path, qi)
            if quantization == "float32":
                np.testing.assert_allclose(got_scores, exp_scores, rtol=1e-12)
            else:
                np.testing.assert_array_equal(got_scores, exp_scores)
        # approximate: scoring term at a time keeps the recall of block by block
        for alpha in (0.9, 0.6):
            recalls = [
                len(
                    set(index.search(q.indices, q.data, 10, alpha=alpha)[0])
                    & set(exhaustive(index, docs, ids, q, 10)[0])
                )
                / 10
                for q in (queries[i] for i in range(queries.shape[0]))
            ]
            assert np.mean(recalls) >= (0.95 if alpha == 0.9 else 0.7), (path, alpha)


@pytest.mark.parametrize("quantization", ["uint8", "uint16", "float32"])
def test_candidate_search_with_whole_heads_is_exact_and_recall_grows_with_its_knobs(quantization):
    """Candidate search (documents from the query terms' heaviest postings, scored through the forward view):
    with heads holding every posting and room for every document it is the exhaustive top k, scores and
    ties included; smaller heads and fewer candidates trade recall; single and batch search agree."""
    docs, queries = head_heavy_vectors(6000, 30, seed=3)
    ids = [f"h{i:05d}" for i in np.random.default_rng(4).permutation(docs.shape[0])]
    index = InvertedIndex.build(docs, ids, quantization=quantization, block_size=32)
    index.accumulate_docs = (
        0  # a shard this small would be searched term at a time (exact, candidates unused)
    )
    assert index.stats()["candidate_view_bytes"] == 0
    index.head_postings = docs.shape[0]
    batch = index.batch_search(queries, 20, num_threads=2, candidates=docs.shape[0])
    for qi in range(queries.shape[0]):
        got_ids, got_scores = index.search(
            queries[qi].indices, queries[qi].data, 20, candidates=docs.shape[0]
        )
        exp_ids, exp_scores = exhaustive(index, docs, ids, queries[qi], 20)
        assert got_ids == exp_ids == batch[qi][0], qi
        if quantization == "float32":
            np.testing.assert_allclose(got_scores, exp_scores, rtol=1e-12)
        else:
            np.testing.assert_array_equal(got_scores, exp_scores)
    # forward view: every posting once (term id and impact); heads: every posting of every term
    assert index.stats()["candidate_view_bytes"] > docs.nnz * 2

    def recall(head: int, candidates: int) -> float:
        index.head_postings = head
        found = index.batch_search(queries, 10, num_threads=2, candidates=candidates)
        assert [r[0] for r in found] == [
            index.search(q.indices, q.data, 10, candidates=candidates)[0] for q in queries
        ]
        truth = [exhaustive(index, docs, ids, q, 10)[0] for q in queries]
        return float(np.mean([len(set(f[0]) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))

    small, large = recall(100, 30), recall(1000, 300)
    assert 0.3 < small < large, (small, large)
    assert large >= 0.95
    # a shard searched term at a time ignores candidates: exact, and no view derived
    exact_index = InvertedIndex.build(docs, ids, quantization=quantization, block_size=32)
    q = queries[0]
    assert (
        exact_index.search(q.indices, q.data, 10, candidates=5)[0]
        == exhaustive(exact_index, docs, ids, q, 10)[0]
    )
    assert exact_index.stats()["candidate_view_bytes"] == 0


def test_a_shard_server_in_candidates_mode_derives_its_view_before_the_first_query(tmp_path):
    from laconic_ray.distributed.serving import ShardServer

    docs, queries = head_heavy_vectors(InvertedIndex.ACCUMULATE_DOCS + 3000, 8, seed=5)
    ids = [f"h{i:05d}" for i in range(docs.shape[0])]
    index = InvertedIndex.build(docs, ids, reorder="none")
    index.save(str(tmp_path / "shard"))
    server = ShardServer(str(tmp_path / "shard"), 0, mode="candidates")
    assert server.index.stats()["candidate_view_bytes"] > 0 and server.index.stats()["queries"] == 0
    q = sp.csr_matrix(queries)
    answers = server.batch_search(q.indptr, q.indices, q.data, docs.shape[1], 10, "candidates", 2)
    for qi, (got_ids, got_scores) in enumerate(answers):
        ids_, scores_ = index.search(queries[qi].indices, queries[qi].data, 10, mode="candidates")
        assert got_ids == ids_ and got_scores == scores_.tolist()


def test_float32_exact_matches_exhaustive(random_setup):
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids, quantization="float32")
    for qi in range(queries.shape[0]):
        got_ids, got_scores = index.search(queries[qi].indices, queries[qi].data, 10)
        exp_ids, exp_scores = exhaustive(index, docs, ids, queries[qi], 10)
        assert got_ids == exp_ids
        np.testing.assert_allclose(got_scores, exp_scores, rtol=1e-12)


@pytest.mark.parametrize("reorder", ["bp", "none"])
def test_ties_are_broken_by_doc_id(reorder):
    # every document has term 0 with the same weight: all tie on it; each also has one of terms 1-20, so that
    # the bisection moves documents away from doc-id order
    n = 300
    rows = np.r_[np.arange(n), np.arange(n)]
    cols = np.r_[np.zeros(n, np.int32), 1 + (np.arange(n) % 20)]
    docs = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, 25))
    ids = [f"z{(i * 37) % n:04d}" for i in range(n)]
    index = InvertedIndex.build(docs, ids, block_size=16, reorder=reorder)
    assert index.meta.reorder == reorder
    if reorder == "bp":
        assert not np.array_equal(index.arrays["doc_rank"], np.arange(n))
    got, scores = index.search([0], [1.0], 25)
    assert got == sorted(ids)[:25] and len(set(scores.tolist())) == 1
    with_term_2 = sorted(ids[i] for i in range(1, n, 20))
    assert index.search([0, 2], [1.0, 1.0], 10)[0] == with_term_2[:10]


def test_non_ascii_doc_ids_survive_search_and_save_load(random_setup, tmp_path):
    # ids are kept as one str when all are ASCII (slices by byte offset) and as bytes otherwise (decoded per
    # id): both lookups must give back exactly the ids that went in
    docs, ids, queries = random_setup
    names = {"ascii": ids, "unicode": [f"{d}-{'éß文書'[i % 4]}" for i, d in enumerate(ids)]}
    for kind, doc_ids in names.items():
        index = InvertedIndex.build(docs, doc_ids, quantization="uint16")
        index.save(str(tmp_path / kind))
        loaded = InvertedIndex.load(str(tmp_path / kind))
        assert loaded.doc_ids() == sorted(doc_ids)
        for qi in range(5):
            got_ids, got_scores = loaded.search(queries[qi].indices, queries[qi].data, 20)
            exp_ids, exp_scores = exhaustive(loaded, docs, doc_ids, queries[qi], 20)
            assert got_ids == exp_ids, (kind, qi)
            np.testing.assert_array_equal(got_scores, exp_scores)
        assert isinstance(loaded._id_text, str) == (kind == "ascii")  # both lookup paths were taken


def test_bisection_groups_documents_that_share_terms():
    # 40 topics of 64 documents, each drawing 20 of its topic's 30 terms, shuffled: the bisection should put
    # each topic back into (about) one block, i.e. far fewer (term, block) entries than the shuffled order
    rng = np.random.default_rng(0)
    n_topics, per_topic, block = 40, 64, 64
    rows, cols = [], []
    for d in range(n_topics * per_topic):
        topic = d // per_topic
        terms = topic * 30 + rng.choice(30, size=20, replace=False)
        rows += [d] * 20
        cols += terms.tolist()
    docs = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_topics * per_topic, 1200))
    shuffled = docs[rng.permutation(docs.shape[0])]
    ids = [f"d{i:05d}" for i in range(docs.shape[0])]
    plain = InvertedIndex.build(shuffled, ids, block_size=block, reorder="none")
    ordered = InvertedIndex.build(shuffled, ids, block_size=block, reorder="bp")
    perm = bisection_order(shuffled, block_size=block)
    assert sorted(perm.tolist()) == list(range(docs.shape[0]))
    assert np.array_equal(perm, bisection_order(shuffled, block_size=block))  # deterministic
    assert ordered.meta.n_entries < 0.5 * plain.meta.n_entries
    assert ordered.meta.n_postings == plain.meta.n_postings


@pytest.mark.parametrize("name", ["scifact", "cacm"])
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_exact_equals_exhaustive_on_bm25_vectors(name, k, data_root):
    doc_ids, docs = collection_vectors(name)
    _, queries = bm25_queries(name, "test")
    index = InvertedIndex.build(docs, doc_ids)
    for path in PATHS:
        use_path(index, path)
        results = index.batch_search(queries[:60], k, num_threads=2)
        for qi, (got_ids, got_scores) in enumerate(results):
            exp_ids, exp_scores = exhaustive(index, docs, doc_ids, queries[qi], k)
            assert got_ids == exp_ids, f"{path}: query {qi}"
            np.testing.assert_array_equal(got_scores, exp_scores)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_exact_equals_exhaustive_on_real_splade_vectors(k, data_root):
    doc_ids, docs, _, queries = splade_toy()
    index = InvertedIndex.build(docs, doc_ids, quantization="uint16", block_size=4)
    for path in PATHS:
        use_path(index, path)
        for qi in range(queries.shape[0]):
            got_ids, got_scores = index.search(queries[qi].indices, queries[qi].data, k)
            exp_ids, exp_scores = exhaustive(index, docs, doc_ids, queries[qi], k)
            assert got_ids == exp_ids, (path, qi)
            np.testing.assert_array_equal(got_scores, exp_scores)
    matching = int(((docs @ queries[0].T).toarray() > 0).sum())
    assert 0 < matching < 20 and len(index.search(queries[0].indices, queries[0].data, 1000)[0]) == matching


def test_approximate_recall_at_default_setting(data_root):
    doc_ids, docs = collection_vectors("scifact")
    _, queries = bm25_queries("scifact", "test")
    index = InvertedIndex.build(docs, doc_ids)
    assert index.n_docs <= index.accumulate_docs  # a shard this small is searched term at a time: exact
    for qi in range(20):
        row = queries[qi]
        assert (
            index.search(row.indices, row.data, 10, mode="approximate")[0]
            == index.search(row.indices, row.data, 10)[0]
        )
    index.accumulate_docs = 0  # the block-max kernel, where alpha < 1 prunes
    recalls = []
    for qi in range(queries.shape[0]):
        exact = set(index.search(queries[qi].indices, queries[qi].data, 10)[0])
        approx = set(index.search(queries[qi].indices, queries[qi].data, 10, mode="approximate")[0])
        recalls.append(len(exact & approx) / max(len(exact), 1))
    recall = float(np.mean(recalls))
    print(f"approximate recall@10 at the default setting on SciFact BM25 vectors: {recall:.4f}")
    assert recall >= 0.98


def test_batch_search_equals_single_search(random_setup):
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids)
    for threads in (1, 2):
        batch = index.batch_search(queries, 10, num_threads=threads)
        for qi, (got_ids, got_scores) in enumerate(batch):
            one_ids, one_scores = index.search(queries[qi].indices, queries[qi].data, 10)
            assert got_ids == one_ids
            np.testing.assert_array_equal(got_scores, one_scores)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_save_load_round_trip(random_setup, tmp_path, where, request):
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids, quantization="uint16", metadata={"model": "x"})
    if where == "local":
        uri, options = str(tmp_path / "shard"), None
    else:
        base, options = request.getfixturevalue("s3_bucket")
        uri = storage.join(base, "shard")
    index.save(uri, options)
    loaded = InvertedIndex.load(uri, options=options)
    assert loaded.meta.metadata == {"model": "x"} and loaded.stats()["postings"] == index.stats()["postings"]
    assert loaded.doc_ids() == sorted(ids)
    for qi in range(10):
        a = index.search(queries[qi].indices, queries[qi].data, 50)
        b = loaded.search(queries[qi].indices, queries[qi].data, 50)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    if where == "local":
        assert isinstance(loaded.arrays["post_imp"], np.memmap)


def test_builds_from_write_sparse_output(tmp_path, data_root):
    doc_ids, docs = collection_vectors("cacm")
    quantized = sparse.quantize(docs)  # Lucene-style integer impacts
    sparse.write_sparse(
        str(tmp_path / "vecs"),
        doc_ids,
        quantized,
        docs.shape[1],
        metadata={"weight_format": "impact", "model": "bm25"},
    )
    index = InvertedIndex.from_sparse(str(tmp_path / "vecs"))
    # integers kept exactly: scale 1, the narrowest integer type that holds them
    assert index.meta.scale == 1.0
    assert index.meta.quantization == ("uint8" if quantized.data.max() <= 255 else "uint16")
    assert index.meta.metadata["weight_format"] == "impact"
    _, queries = bm25_queries("cacm", "test")
    _got_ids, got_scores = index.search(queries[0].indices, queries[0].data, 10)
    exp = (quantized.astype(np.float64) @ queries[0].astype(np.float64).T).toarray().ravel()
    assert np.array_equal(got_scores, np.sort(exp)[::-1][:10])


def test_merge_topk_of_partitions_equals_one_index(random_setup):
    docs, ids, queries = random_setup
    whole = InvertedIndex.build(docs, ids)
    parts = [np.arange(i, docs.shape[0], 3) for i in range(3)]  # hash-like partition
    # partitions must share one quantization scale (each would otherwise fit its own maximum)
    shards = [InvertedIndex.build(docs[p], [ids[i] for i in p], scale=whole.meta.scale) for p in parts]
    for qi in range(queries.shape[0]):
        q = queries[qi]
        partials = [s.search(q.indices, q.data, 20) for s in shards]
        merged = merge_topk(partials, 20)
        single = whole.search(q.indices, q.data, 20)
        assert merged[0] == single[0]
        np.testing.assert_array_equal(merged[1], single[1])
    assert merge_topk([(["a", "b"], [2.0, 1.0]), (["a"], [2.0])], 5)[0] == ["a", "b"]  # replicas deduplicated
    with pytest.raises(ValueError):
        merge_topk([], 0)


def test_query_errors(random_setup):
    docs, ids, _ = random_setup
    index = InvertedIndex.build(docs, ids)
    with pytest.raises(QueryError, match=r"term id 3000 outside the vocabulary \[0, 3000\)"):
        index.search([1, 3000], [1.0, 1.0])
    with pytest.raises(QueryError, match="term id -1"):
        index.search([-1], [1.0])
    with pytest.raises(QueryError, match="weight nan"):
        index.search([1, 2], [1.0, float("nan")])
    with pytest.raises(QueryError, match=r"weight -0\.5"):
        index.search([1], [-0.5])
    with pytest.raises(QueryError, match="weight inf"):
        index.search([1], [float("inf")])
    for k in (0, -3):
        with pytest.raises(QueryError, match="k must be a positive integer"):
            index.search([1], [1.0], k)
    with pytest.raises(QueryError, match="equal-length"):
        index.search([1, 2], [1.0])
    with pytest.raises(QueryError, match="alpha"):
        index.search([1], [1.0], alpha=1.5)
    for bad in (-1, 2.5, "many"):
        with pytest.raises(QueryError, match="candidates must be an integer >= 0"):
            index.search([1], [1.0], candidates=bad)
    with pytest.raises(ValueError, match="head_postings must be >= 1"):
        index.head_postings = 0
    with pytest.raises(QueryError, match="term id 3000"):
        index.batch_search(sp.csr_matrix(([1.0], ([0], [3000])), shape=(1, 4000)))
    # empty queries, zero weights, duplicates
    assert index.search([], [], 10)[0] == []
    assert index.search([5], [0.0], 10)[0] == []
    a = index.search([5, 5], [0.5, 0.5], 10)
    b = index.search([5], [1.0], 10)
    assert a[0] == b[0]


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["entry_post", "post_imp", "term_ptr", "doc_rank"])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_shard_files_are_named(random_setup, tmp_path, name, how):
    docs, ids, _ = random_setup
    InvertedIndex.build(docs, ids).save(str(tmp_path / "shard"))
    corrupt(tmp_path / "shard" / f"{name}.npy", how)
    with pytest.raises(IndexFormatError, match=rf"{name}\.npy: .*(truncated|corrupt)"):
        InvertedIndex.load(str(tmp_path / "shard"))


def test_inconsistent_shard_is_caught_even_without_checksums(random_setup, tmp_path):
    docs, ids, _ = random_setup
    index = InvertedIndex.build(docs, ids)
    index.arrays["entry_post"] = index.arrays["entry_post"].copy()
    index.arrays["entry_post"][5] = (
        index.arrays["entry_post"][6] + 1
    )  # a posting range that ends before it starts
    index.save(str(tmp_path / "shard"))  # checksums are of the bad data, so only structure can catch it
    with pytest.raises(IndexFormatError, match=r"entry_post\.npy: entry posting ranges must not decrease"):
        InvertedIndex.load(str(tmp_path / "shard"), verify=False)
    index = InvertedIndex.build(docs, ids)
    index.arrays["doc_rank"] = index.arrays["doc_rank"].copy()
    index.arrays["doc_rank"][0] = index.arrays["doc_rank"][1]  # two documents with one rank
    index.save(str(tmp_path / "shard"))
    with pytest.raises(IndexFormatError, match=r"doc_rank\.npy: not a permutation"):
        InvertedIndex.load(str(tmp_path / "shard"), verify=False)
    os.remove(tmp_path / "shard" / "shard.json")
    with pytest.raises(IndexFormatError, match="build never finished"):
        InvertedIndex.load(str(tmp_path / "shard"))


def test_stats(random_setup):
    docs, ids, _ = random_setup
    index = InvertedIndex.build(docs, ids)
    stats = index.stats()
    assert stats["docs"] == 5000 and stats["postings"] <= docs.nnz and stats["bytes_per_doc"] > 0
    assert stats["kernel"] == "term-at-a-time"
    index.accumulate_docs = 4999
    assert index.stats()["kernel"] == "block-max"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_shard_rebuilt_under_its_manifest_is_refused_and_a_rewritten_one_refetched(
    random_setup, tmp_path, where, request, monkeypatch
):
    """A warm node must not serve old shards under a new manifest, nor a new shard under an old one."""
    docs, ids, _ = random_setup
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    if where == "local":
        uri, options = str(tmp_path / "shard"), None
    else:
        base, options = request.getfixturevalue("s3_bucket")
        uri = storage.join(base, "shard")
    old = InvertedIndex.build(docs[:2500], ids[:2500])
    old.save(uri, options)
    old_sha = storage.sha256_of(storage.join(uri, "shard.json"), options)
    assert InvertedIndex.load(uri, options=options, expect_sha256=old_sha).n_docs == 2500  # (cached on S3)
    new = InvertedIndex.build(docs, ids)  # `laconic index force=true` to the same place
    new.save(uri, options)
    new_sha = storage.sha256_of(storage.join(uri, "shard.json"), options)
    loaded = InvertedIndex.load(uri, options=options, expect_sha256=new_sha)
    assert loaded.n_docs == 5000  # the rewritten shard, not the cached old copy
    with pytest.raises(IndexFormatError, match="not the shard the index manifest lists"):
        InvertedIndex.load(uri, options=options, expect_sha256=old_sha)


def test_a_corrupt_cached_shard_is_fetched_again(random_setup, tmp_path, s3_bucket, monkeypatch):
    docs, ids, _ = random_setup
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    base, options = s3_bucket
    uri = storage.join(base, "shard")
    InvertedIndex.build(docs, ids).save(uri, options)
    cached = storage.localize(uri, options)
    corrupt(Path(cached) / "post_imp.npy", "flip")  # e.g. a disk error on the node
    assert InvertedIndex.load(uri, options=options).n_docs == 5000  # evicted and fetched again
    assert storage.sha256_of(os.path.join(storage.localize(uri, options), "post_imp.npy")) == (
        storage.sha256_of(storage.join(uri, "post_imp.npy"), options)
    )


def test_scratch_stamps_start_again_before_they_run_out(random_setup):
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids)
    index.accumulate_docs = 0  # the block-max kernels, which use the stamped scratch tables
    expected = [index.search(queries[i].indices, queries[i].data, 10) for i in range(5)]
    index.batch_search(queries[:5], 10, num_threads=1)
    index._scratch().stamp = (1 << 31) - 3  # this thread's next batch would need stamps past 2^31
    for got, (ids_, scores) in zip(index.batch_search(queries[:5], 10, num_threads=1), expected, strict=True):
        assert got[0] == ids_
        np.testing.assert_array_equal(got[1], scores)
    assert index._scratch().stamp == 5  # numbering started again, on cleared tables
    assert index.search(queries[0].indices, queries[0].data, 10)[0] == expected[0][0]


def test_threads_search_one_index_at_once(random_setup):
    """Each searching thread has scratch of its own: concurrent searches (a shard actor answers its
    channels' batches side by side) give what one thread gives alone."""
    docs, ids, queries = random_setup
    index = InvertedIndex.build(docs, ids)
    index.accumulate_docs = 0  # the block-max kernels' stamped tables too, not only the accumulators
    n = queries.shape[0]
    expected = [index.search(queries[i].indices, queries[i].data, 10) for i in range(n)]
    errors: list[str] = []

    def run(offset: int) -> None:
        for r in range(20):
            i = (offset + r) % n
            if r % 2:
                got = index.search(queries[i].indices, queries[i].data, 10)
            else:
                got = index.batch_search(queries[i : i + 1], 10, num_threads=1)[0]
            if got[0] != expected[i][0] or not np.array_equal(got[1], expected[i][1]):
                errors.append(f"query {i} from thread {offset}")

    threads = [threading.Thread(target=run, args=(t * 7,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


@pytest.mark.parametrize("mode", ["exact", "candidates"])
def test_read_only_query_arrays_reach_the_kernels_writable(monkeypatch, mode):
    # Ray hands an actor call its numpy arguments read-only, and numba compiles every kernel again for
    # read-only types: on a fresh install the first actor call after a shard restart stalled the new process
    # (GIL held) ~5 s. Queries must reach the kernels as the channel path's do, writable.
    from laconic_ray.distributed.requests import check_vector
    from laconic_ray.index import kernels

    docs, queries = random_vectors(300, 4, 500, seed=3)
    index = InvertedIndex.build(docs, [f"d{i}" for i in range(300)])
    seen: list[bool] = []
    names = (
        "search_query",
        "candidates_query",
        "prepare_batch",
        "search_batch",
        "candidates_batch",
        "check_query",
    )
    for name in names:
        original = getattr(kernels, name)

        def spy(*args, original=original):
            seen.extend(a.flags.writeable for a in args if isinstance(a, np.ndarray))
            return original(*args)

        monkeypatch.setattr(kernels, name, spy)

    def frozen(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    row = queries[0]
    expected = index.search(row.indices, row.data, 10, mode=mode)
    got = index.search(frozen(row.indices.astype(np.int64)), frozen(row.data), 10, mode=mode)
    assert got[0] == expected[0]
    many = index.search_many(
        frozen(queries.indptr.astype(np.int64)),
        frozen(queries.indices.astype(np.int64)),
        frozen(queries.data),
        10,
        1,
        mode=mode,
    )
    assert next(ids for ids, _ in many) == expected[0]
    check_vector(frozen(row.indices.astype(np.int64)), frozen(row.data), 500)  # the client's check too
    assert seen and all(seen), seen
