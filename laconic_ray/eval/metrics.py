"""Metrics through ir-measures (pytrec_eval, i.e. trec_eval's definitions), per query and aggregate, and the
paired comparison of two runs.

Every query judged in the qrels counts: a query the run does not answer scores 0 (ir-measures' behaviour,
checked in tests), which is what a reader of "nDCG@10 over the test queries" expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = DEFAULT_MEASURES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(aggregate, per_query)``: mean over the judged queries, and ``{qid: {measure: value}}``."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    names = {p: m for p, m in zip(parsed, measures, strict=True)}
    evaluator = ir_measures.evaluator(parsed, {q: dict(d) for q, d in qrels.items()})
    per_query: dict[str, dict[str, float]] = {q: dict.fromkeys(measures, 0.0) for q in qrels}
    for metric in evaluator.iter_calc({q: dict(d) for q, d in run.items()}):
        if metric.query_id in per_query:
            per_query[metric.query_id][names[metric.measure]] = float(metric.value)
    aggregate = {
        m: float(np.mean([v[m] for v in per_query.values()])) if per_query else 0.0 for m in measures
    }
    return aggregate, per_query


def compare(
    per_query: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    measure: str,
    min_delta: float = 1e-9,
) -> dict[str, Any]:
    """Per-query wins/losses/ties of a run against a baseline on ``measure``, with a paired t-test and a
    two-sided paired randomization test (10,000 sign flips, seeded)."""
    from scipy import stats

    queries = sorted(set(per_query) & set(baseline))
    a = np.array([per_query[q][measure] for q in queries])
    b = np.array([baseline[q][measure] for q in queries])
    delta = a - b
    result = {
        "measure": measure,
        "queries": len(queries),
        "mean": float(a.mean()) if len(a) else 0.0,
        "baseline_mean": float(b.mean()) if len(b) else 0.0,
        "delta": float(delta.mean()) if len(a) else 0.0,
        "wins": int((delta > min_delta).sum()),
        "losses": int((delta < -min_delta).sum()),
        "ties": int((np.abs(delta) <= min_delta).sum()),
    }
    if len(queries) > 1 and np.any(delta != 0):
        result["t_test_p"] = float(stats.ttest_rel(a, b).pvalue)
        rng = np.random.default_rng(0)
        signs = rng.choice([-1.0, 1.0], size=(10_000, len(delta)))
        observed = abs(delta.mean())
        result["randomization_p"] = float((np.abs((signs * delta).mean(axis=1)) >= observed - 1e-12).mean())
    else:
        result["t_test_p"] = result["randomization_p"] = 1.0
    result["per_query_delta"] = dict(zip(queries, delta.tolist(), strict=True))
    return result
