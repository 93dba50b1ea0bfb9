"""Merge per-shard top-k lists into one (the gather half of scatter-gather)."""

from __future__ import annotations

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
    ids, scores = merge_lists(partials, k)
    return ids, np.asarray(scores, dtype=np.float64)


def merge_lists(
    partials: Sequence[tuple[Sequence[str], Sequence[float]]], k: int
) -> tuple[list[str], list[float]]:
    """:func:`merge_topk` with the scores as a list (the service's hot path: a few microseconds a query)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if len(partials) == 1:  # one shard answered: its list is already in order, unique, and at most its k
        ids, scores = partials[0]
        return list(ids[:k]), [float(s) for s in scores[:k]]
    # shards send at most k each: sorting them all on (-score, doc_id) beats a lazy k-way merge at that size
    ranked = sorted((-float(s), d) for ids, scores in partials for d, s in zip(ids, scores, strict=True))
    out_ids: list[str] = []
    out_scores: list[float] = []
    seen: set[str] = set()
    for neg, doc in ranked:
        if doc in seen:
            continue
        seen.add(doc)
        out_ids.append(doc)
        out_scores.append(-neg)
        if len(out_ids) == k:
            break
    return out_ids, out_scores
