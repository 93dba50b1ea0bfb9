"""Merge per-shard top-k lists into one (the gather half of scatter-gather)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def merge_topk(
    partials: Sequence[tuple[Sequence[str], Sequence[float]]], k: int
) -> tuple[list[str], np.ndarray]:
    """The best ``k`` of several ``(doc_ids, scores)`` lists, each already best first.

    Order: higher score first, equal scores by doc id (the same rule every shard applies internally), so the
    merged list of a partitioned index equals the list of one unpartitioned index exactly. A doc id that
    appears in more than one partial (a replica answered twice) is kept once, at its best position.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    # heapq.merge on (-score, doc_id) keys: each input is sorted by exactly that key
    streams = [zip((-float(s) for s in scores), ids, strict=True) for ids, scores in partials]
    out_ids: list[str] = []
    out_scores: list[float] = []
    seen: set[str] = set()
    for neg, doc in heapq.merge(*streams):
        if doc in seen:
            continue
        seen.add(doc)
        out_ids.append(doc)
        out_scores.append(-neg)
        if len(out_ids) == k:
            break
    return out_ids, np.asarray(out_scores, dtype=np.float64)
