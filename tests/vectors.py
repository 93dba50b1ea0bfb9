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
