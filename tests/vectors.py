"""Real sparse vectors for tests: BM25 document weights over a real collection's text, real vocabulary ids.

Terms come from the BERT WordPiece tokenizer in ../shared/tokenizers (30,522 ids), weights are the BM25
document-side saturation ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``: skewed, realistic posting
lists without needing a trained model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from laconic_ray.data.beir import BeirDataset


def tokenizers_dir() -> Path:
    return Path(os.environ.get("LACONIC_TOKENIZERS", "../shared/tokenizers"))


@functools.cache
def bert_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizers_dir() / "bert-base-uncased" / "tokenizer.json"))


def bm25_vectors(texts: list[str], k1: float = 0.9, b: float = 0.4) -> sp.csr_matrix:
    tok = bert_tokenizer()
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    rows, cols = [], []
    for i, enc in enumerate(encodings):
        rows.append(np.full(len(enc.ids), i))
        cols.append(np.asarray(enc.ids))
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    tf = sp.csr_matrix(
        (np.ones(len(rows_a), np.float32), (rows_a, cols_a)), shape=(len(texts), tok.get_vocab_size())
    )
    tf.sum_duplicates()
    dl = np.asarray(tf.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * dl / max(dl.mean(), 1e-9))
    lengths = np.diff(tf.indptr)
    tf.data = (tf.data * (k1 + 1) / (tf.data + np.repeat(norm, lengths))).astype(np.float32)
    tf.sort_indices()
    return tf


@functools.cache
def collection_vectors(name: str) -> tuple[list[str], sp.csr_matrix]:
    docs = list(BeirDataset(name).corpus())
    return [d.id for d in docs], bm25_vectors([d.full_text() for d in docs])


@functools.cache
def bert_vocab() -> dict[str, int]:
    with open(tokenizers_dir() / "bert-base-uncased" / "vocab.txt", encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _term_vectors(rows: list[dict[str, float]]) -> sp.csr_matrix:
    vocab = bert_vocab()
    data, cols, indptr = [], [], [0]
    for row in rows:
        pairs = sorted((vocab[t], w) for t, w in row.items() if w > 0)
        cols.extend(p[0] for p in pairs)
        data.extend(p[1] for p in pairs)
        indptr.append(len(cols))
    return sp.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(cols), indptr), shape=(len(rows), len(vocab))
    )


@functools.cache
def splade_toy() -> tuple[list[str], sp.csr_matrix, list[str], sp.csr_matrix]:
    """The real SPLADE vectors of ../shared/datasets/splade_toy (MS MARCO passages and queries)."""
    import json

    root = Path(os.environ["LACONIC_DATA"]) / "splade_toy"
    docs = [json.loads(line) for line in (root / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    return (
        [str(d["id"]) for d in docs],
        _term_vectors([d["vector"] for d in docs]),
        [str(q["id"]) for q in queries],
        _term_vectors([q["vector"] for q in queries]),
    )


@functools.cache
def bm25_queries(name: str, split: str) -> tuple[list[str], sp.csr_matrix]:
    """Query vectors for a collection's judged queries: each distinct token weighted by its BM25 idf."""
    ds = BeirDataset(name)
    queries = list(ds.queries(split))
    _, docs = collection_vectors(name)
    df = np.bincount(docs.indices, minlength=docs.shape[1])
    idf = np.log(1 + (docs.shape[0] - df + 0.5) / (df + 0.5)).astype(np.float32)
    tok = bert_tokenizer()
    rows = []
    for enc in tok.encode_batch([q.text for q in queries], add_special_tokens=False):
        ids = np.unique(np.asarray(enc.ids, dtype=np.int64))
        ids = ids[df[ids] > 0]
        rows.append((ids, idf[ids]))
    indptr = np.cumsum([0] + [len(r[0]) for r in rows])
    q = sp.csr_matrix(
        (np.concatenate([r[1] for r in rows]), np.concatenate([r[0] for r in rows]), indptr),
        shape=(len(rows), docs.shape[1]),
    )
    return [x.id for x in queries], q
