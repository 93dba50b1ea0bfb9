"""A fixed per-id weight on every output of an encoder: a lexical prior from a corpus's statistics.

A term's weight in a query-document score becomes ``q_t * d_t * scale_t**2``. With ``scale_t = sqrt(idf_t)``
(BM25's idf, ``ln(1 + (N - df + 0.5) / (df + 0.5))``) on both sides, the product carries the idf once, which
is what a bag-of-words encoder lacks against BM25: ``a``, ``the``, ``of`` and a query prefix match every
document with the weight of a rare word. Nothing is learned in the table; training learns around it. Measured
on the quickstart's tiny model before any training (issue 27): SciFact nDCG@10 0.470 -> 0.525, Cranfield
0.215 -> 0.264, CACM 0.188 -> 0.257 (benchmarks/term_weights.py).

Stored beside the weights as ``term_weights.json`` (one float per vocabulary id, plus how it was made).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from laconic_ray import storage

TERM_WEIGHTS_FILE = "term_weights.json"
IDF_PREFIX = "idf:"  # ModelConfig.term_weights="idf:<collection>": computed from that corpus


def idf_scale(
    tokenize: Callable[[Sequence[str]], list[list[int]]],
    texts: Iterable[str],
    vocab_size: int,
    *,
    batch: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """(sqrt(BM25 idf) per id [vocab] float32, documents counted) over ``texts`` as ``tokenize`` splits them.
    Ids no document holds get the largest idf (a document never matches them, so nothing rests on it)."""
    df = np.zeros(vocab_size, dtype=np.int64)
    n = 0
    chunk: list[str] = []

    def count() -> None:
        nonlocal n
        for ids in tokenize(chunk):
            present = np.unique(np.asarray(ids, dtype=np.int64))
            df[present[(present >= 0) & (present < vocab_size)]] += 1
        n += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
        chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) >= batch:
            count()
    if chunk:
        count()
    if n == 0:
        raise ValueError("term weights: the corpus has no documents")
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    return np.sqrt(idf).astype(np.float32), n


def write(
    uri: str, scale: np.ndarray, meta: dict[str, Any], options: storage.StorageOptions | None = None
) -> str:
    path = uri if uri.endswith(".json") else os.path.join(uri, TERM_WEIGHTS_FILE)
    body = {**meta, "weights": [round(float(w), 6) for w in scale]}
    storage.write_bytes(path, json.dumps(body).encode(), options)
    return path


def read(
    uri: str, vocab_size: int, options: storage.StorageOptions | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """([vocab] float32, how it was made) from a ``term_weights.json`` (or the folder holding one); a wrong length, a negative
    or non-finite weight fails with the file's name."""
    path = uri if uri.endswith(".json") else os.path.join(uri, TERM_WEIGHTS_FILE)
    try:
        raw = storage.read_bytes(path, options)
    except storage.StorageError as e:
        raise storage.StorageError(f"term weights: {e}") from None
    try:
        body = json.loads(raw)
        weights = body["weights"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a term-weights file ({type(e).__name__}: {e}); expected "
                         '{"weights": [one float per vocabulary id], ...}') from None  # fmt: skip
    if not isinstance(weights, list) or len(weights) != vocab_size:
        size = len(weights) if isinstance(weights, list) else type(weights).__name__
        raise ValueError(f"{path}: weights has {size} entries, the model's vocabulary {vocab_size}")
    try:
        table = torch.tensor(weights, dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: weights must be numbers ({e})") from None
    bad = ~torch.isfinite(table) | (table < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{path}: weights[{i}] = {weights[i]}: must be finite and >= 0")
    return table, {k: v for k, v in body.items() if k != "weights"}


def from_corpus(
    encoder: Any, dataset: str, options: storage.StorageOptions | None = None
) -> tuple[np.ndarray, dict]:
    """sqrt(idf) over a BEIR collection's corpus, each document tokenized as the encoder tokenizes passages."""
    from laconic_ray.data.beir import BeirDataset
    from laconic_ray.progress import Progress

    collection = BeirDataset(dataset, options=options)
    with Progress(None, "docs", "term weights (idf)") as progress:
        scale, n = idf_scale(
            lambda texts: encoder.tokenize(texts, "passage"),
            (doc.full_text() for doc in collection.corpus()),
            encoder.vocab_size,
            on_batch=progress.update,
        )
    meta = {
        "kind": "sqrt_idf",
        "formula": "sqrt(ln(1 + (N - df + 0.5) / (df + 0.5))), df over passages as the encoder tokenizes them",
        "corpus": collection.root,
        "documents": n,
        "mean": round(float(scale.mean()), 4),
        "min": round(float(scale.min()), 4),
        "max": round(float(scale.max()), 4),
        "max_possible": round(math.sqrt(math.log1p((n + 0.5) / 0.5)), 4),
    }
    return scale, meta
