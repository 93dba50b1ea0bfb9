"""Synthetic SPLADE-like vectors with topic structure, for engine benchmarks (and large-scale tests).

Documents: ~120 non-zero weights over the Llama-3 vocabulary (128,256 ids); queries: ~30. Term popularity is
Zipfian over a random permutation of the vocabulary (a few ids appear in a large share of documents, most in
almost none); each document and query draws most of its terms from one of ``topics`` topic vocabularies and
the rest from the global distribution, so that the collection has the cluster structure real corpora have and
pruning methods exploit. Weights are log-normal (SPLADE weights: mostly 0.1-2, a long tail to ~4), higher for
topic terms than for background terms. Deterministic in ``seed``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

LLAMA3_VOCAB = 128_256


def _zipf_probs(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _sample(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """``size`` draws of indices from the distribution with cumulative probabilities ``cdf``."""
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def _merge_max(rows: np.ndarray, terms: np.ndarray, weights: np.ndarray, vocab: int):
    """Duplicate (row, term) draws merged, keeping the largest weight: ``(rows, terms, weights)`` in row, term
    order."""
    keys = rows.astype(np.int64) * vocab + terms
    order = np.argsort(keys, kind="stable")
    keys, weights = keys[order], weights[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    keys, weights = keys[starts], np.maximum.reduceat(weights, starts)
    return keys // vocab, keys % vocab, weights


def generate(
    n_docs: int,
    n_queries: int,
    *,
    vocab: int = LLAMA3_VOCAB,
    doc_nnz: int = 120,
    query_nnz: int = 30,
    topics: int = 2000,
    topic_size: int = 400,
    topic_share: float = 0.6,
    zipf: float = 1.05,
    seed: int = 0,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(docs, queries)`` as float32 CSR matrices with sorted indices and positive weights."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(vocab)
    global_p = _zipf_probs(vocab, zipf)
    # topic vocabularies: mid-frequency terms, each topic its own Zipf over its members
    mid = perm[200 : min(vocab, 60_000)]
    topic_terms = np.stack([rng.choice(mid, size=topic_size, replace=False) for _ in range(topics)])
    topic_p = _zipf_probs(topic_size, 0.8)

    def sample(cdf: np.ndarray, size: int) -> np.ndarray:
        return _sample(rng, cdf, size)

    global_cdf, topic_cdf = np.cumsum(global_p), np.cumsum(topic_p)

    def draw(n: int, nnz: int, boost: float, oversample: float) -> sp.csr_matrix:
        # Sample with replacement, vectorised over all rows, then merge duplicates within a row (keeping the
        # largest weight): rows end up with slightly fewer than their drawn length, as distinct terms.
        lengths = np.clip(rng.poisson(nnz * oversample, size=n), max(4, nnz // 4), nnz * 3)
        n_topic = (lengths * topic_share).astype(np.int64)
        n_global = lengths - n_topic
        rows_t = np.repeat(np.arange(n), n_topic)
        topic_of_row = rng.integers(0, topics, size=n)
        terms_t = topic_terms[topic_of_row[rows_t], sample(topic_cdf, len(rows_t))]
        rows_g = np.repeat(np.arange(n), n_global)
        terms_g = perm[sample(global_cdf, len(rows_g))]
        rows = np.concatenate([rows_t, rows_g])
        terms = np.concatenate([terms_t, terms_g])
        weights = rng.lognormal(mean=-0.6, sigma=0.7, size=len(rows))
        weights[: len(rows_t)] *= boost  # topic terms weigh more
        weights = np.minimum(weights, 4.0)
        rows, terms, weights = _merge_max(rows, terms, weights, vocab)
        mat = sp.csr_matrix((weights.astype(np.float32), (rows, terms)), shape=(n, vocab))
        mat.sort_indices()
        return mat

    # oversampling compensates the duplicates merged away (frequent terms repeat within long rows)
    return draw(n_docs, doc_nnz, 1.6, 1.34), draw(n_queries, query_nnz, 2.0, 1.1)


def written(n_docs: int, n_queries: int, seed: int = 0):
    """A synthetic collection for the serving benchmarks: ``(docs, queries, ids, folder, rows)``, the documents
    written as a finished sparse folder ``folder / "vecs"`` (a new temporary folder) and the queries as JSON
    rows (``{"indices": [...], "values": [...]}``). The folder (~300 MB at 200k documents, index builds
    included) is removed when the process exits."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from laconic_ray import sparse

    docs, queries = generate(n_docs, n_queries, seed=seed)
    ids = [f"d{i}" for i in range(docs.shape[0])]
    folder = Path(tempfile.mkdtemp(prefix="laconic-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    sparse.write_sparse(str(folder / "vecs"), ids, docs, docs.shape[1])
    rows = [
        {"indices": queries[i].indices.tolist(), "values": queries[i].data.tolist()}
        for i in range(queries.shape[0])
    ]
    return docs, queries, ids, folder, rows


BERT_VOCAB = 30_522


def generate_head_heavy(
    n_docs: int,
    n_queries: int,
    *,
    vocab: int = BERT_VOCAB,
    topics: int = 0,
    topic_size: int = 400,
    topic_share: float = 0.6,
    seed: int = 0,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The regime of issue 24, where a Llama-vocabulary generator flattered block-max pruning: BERT's 30,522
    ids (classic SPLADE), document lengths normal(120, 35) clipped to [30, 300], term ids Zipf(s=1, r0=20)
    (``p(r) ~ 1 / (r + 20)``) over a random permutation of the vocabulary, so a few hundred ids sit in a large
    share of documents; log-normal weights capped at 8. Queries: 20-40 non-zeros, ~40% of them the heaviest
    terms of a random source document, the rest drawn like a document's. With ``topics`` > 0, 60% of each
    row's draws come from its topic's vocabulary (mid-frequency ids). At 200k documents an exact query touches
    a median 564k postings (141k with 2,000 topics)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(vocab)
    ranks = np.arange(vocab, dtype=np.float64)
    global_cdf = np.cumsum(1.0 / (ranks + 20.0))
    global_cdf /= global_cdf[-1]
    if topics:
        mid = perm[300 : min(vocab, 20_000)]
        topic_terms = np.stack([rng.choice(mid, size=topic_size, replace=False) for _ in range(topics)])
        topic_cdf = np.cumsum(_zipf_probs(topic_size, 0.8))

    def sample(cdf: np.ndarray, size: int) -> np.ndarray:
        return _sample(rng, cdf, size)

    def rows_of(lengths: np.ndarray, topic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(lengths)
        draws = (lengths * 1.25).astype(np.int64)  # oversampled: duplicates are merged away below
        rows = np.repeat(np.arange(n), draws)
        terms = perm[sample(global_cdf, len(rows))]
        if topics:
            from_topic = rng.random(len(rows)) < topic_share
            picked = topic_terms[topic[rows[from_topic]], sample(topic_cdf, int(from_topic.sum()))]
            terms[from_topic] = picked
        return rows, terms

    def matrix(rows: np.ndarray, terms: np.ndarray, weights: np.ndarray, n: int, cap: np.ndarray):
        rows, terms, weights = _merge_max(rows, terms, weights, vocab)
        # trim each row to its drawn length, keeping its heaviest terms
        order = np.lexsort((-weights, rows))
        rows, terms, weights = rows[order], terms[order], weights[order]
        first = np.searchsorted(rows, np.arange(n))
        keep = np.arange(len(rows)) - first[rows] < cap[rows]
        mat = sp.csr_matrix((weights[keep].astype(np.float32), (rows[keep], terms[keep])), shape=(n, vocab))
        mat.sort_indices()
        return mat

    doc_len = np.clip(np.rint(rng.normal(120, 35, n_docs)), 30, 300).astype(np.int64)
    doc_topic = rng.integers(0, max(topics, 1), n_docs)
    rows, terms = rows_of(doc_len, doc_topic)
    weights = np.minimum(rng.lognormal(-0.4, 0.8, len(rows)), 8.0)
    docs = matrix(rows, terms, weights, n_docs, doc_len)

    q_len = rng.integers(20, 41, n_queries)
    source = rng.integers(0, n_docs, n_queries)
    from_source = np.rint(q_len * 0.4).astype(np.int64)
    rows, terms = rows_of(q_len - from_source, doc_topic[source])
    weights = np.minimum(rng.lognormal(-0.4, 0.8, len(rows)), 8.0)
    src_rows, src_terms, src_weights = [], [], []
    for i, d in enumerate(source):
        lo, hi = docs.indptr[d], docs.indptr[d + 1]
        heavy = np.argsort(-docs.data[lo:hi], kind="stable")[: from_source[i]]
        src_rows.append(np.full(len(heavy), i))
        src_terms.append(docs.indices[lo:hi][heavy])
        src_weights.append(docs.data[lo:hi][heavy].astype(np.float64))
    queries = matrix(
        np.concatenate([rows, *src_rows]),
        np.concatenate([terms, *src_terms]),
        np.concatenate([weights, *src_weights]),
        n_queries,
        q_len,
    )
    return docs, queries
