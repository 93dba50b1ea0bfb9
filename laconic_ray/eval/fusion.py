"""Hybrid retrieval: a learned run fused with a lexical (BM25) one, query by query.

What practitioners deploy when a learned model is weak out of its training domain. Two documented methods:

* ``rrf``: reciprocal rank fusion (Cormack et al., SIGIR 2009), ``sum 1 / (rrf_k + rank)`` over the runs that
  retrieved the document (rank from 1, ``rrf_k`` 60 by default); scale-free, no tuning needed.
* ``interpolation``: each run's scores min-max normalised per query to [0, 1] (a run whose scores are all
  equal gives 1), then ``weight * learned + (1 - weight) * lexical``; a document one run missed gets 0 from it.

Both equal pyserini's fusion (``pyserini.fusion.reciprocal_rank_fusion``; ``normalize`` + ``SCALE`` + sum) on
the same runs (tests/unit/test_fusion.py); they are written here because the service fuses one query at a time,
where pyserini's pandas runs cost milliseconds. Ranks come from score order, ties broken by document id (as
``write_run`` orders a run file).
"""

from __future__ import annotations

from collections.abc import Mapping

from laconic_ray.config import HybridConfig
from laconic_ray.eval.runs import Run


def ranked(scores: Mapping[str, float], depth: int | None = None) -> list[tuple[str, float]]:
    order = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return order[:depth] if depth else order


def fuse(
    learned: Mapping[str, float], lexical: Mapping[str, float], config: HybridConfig, k: int | None = None
) -> dict[str, float]:
    """One query's fused scores, best first, at most ``k`` of them."""
    runs = [ranked(learned, config.depth), ranked(lexical, config.depth)]
    fused: dict[str, float] = {}
    if config.fusion == "rrf":
        for run in runs:
            for rank, (doc, _) in enumerate(run, start=1):
                fused[doc] = fused.get(doc, 0.0) + 1.0 / (config.rrf_k + rank)
    else:
        for run, weight in zip(runs, (config.weight, 1.0 - config.weight), strict=True):
            if not run:
                continue
            high, low = run[0][1], run[-1][1]
            for doc, score in run:
                normalised = (score - low) / (high - low) if high > low else 1.0
                fused[doc] = fused.get(doc, 0.0) + weight * normalised
    return dict(ranked(fused, k))


def fuse_runs(learned: Run, lexical: Run, config: HybridConfig, k: int | None = None) -> Run:
    """Every query of either run, fused (a query one run has no answer for keeps the other's ranking)."""
    return {q: fuse(learned.get(q, {}), lexical.get(q, {}), config, k) for q in sorted({*learned, *lexical})}


def cross_validate(per_query: Mapping[str, Mapping[str, float]], folds: int) -> dict:
    """K-fold choice of a fusion for collections too small to spare a dev split (CACM's 52 judged queries).

    ``per_query`` maps each candidate choice (a label) to its ``{qid: metric}`` over the same judged queries.
    Queries sorted by id go to fold ``i % folds`` (carve_dev's every-k-th rule, so fold ``folds - 1`` is the
    dev split ``dev_every=folds`` would carve); each fold is scored with the choice whose mean is best over the
    *other* folds (ties: the earlier choice), so no query's figure comes from a choice made on it. Returns the
    per-fold choices and the pooled ``{qid: metric}`` with its mean.
    """
    choices = list(per_query)
    if not choices:
        raise ValueError("cross_validate: no choices to choose from")
    queries = sorted(per_query[choices[0]])
    for choice in choices:
        if sorted(per_query[choice]) != queries:
            raise ValueError(f"cross_validate: {choice!r} is scored on other queries than {choices[0]!r}")
    if not 2 <= folds <= len(queries):
        raise ValueError(f"cross_validate: folds must be in [2, {len(queries)}] (the queries), got {folds}")
    pooled: dict[str, float] = {}
    chosen = []
    for fold in range(folds):
        held = queries[fold::folds]
        rest = [q for i, q in enumerate(queries) if i % folds != fold]
        means = {c: sum(per_query[c][q] for q in rest) / len(rest) for c in choices}
        best = max(choices, key=lambda c: means[c])  # max keeps the first of equal means
        chosen.append({"fold": fold, "queries": len(held), "chosen": best, "train_mean": means[best]})
        pooled.update({q: per_query[best][q] for q in held})
    return {"folds": chosen, "per_query": pooled, "mean": sum(pooled.values()) / len(pooled)}
