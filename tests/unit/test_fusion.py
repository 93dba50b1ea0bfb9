"""Hybrid fusion equals pyserini's own fusion on the same runs (RRF; min-max normalised interpolation), with
the edge cases a query meets: a run with no answer, equal scores, a depth cut."""

from __future__ import annotations

import numpy as np
import pytest

from laconic_ray.config import ConfigError, HybridConfig, load_config
from laconic_ray.eval.fusion import cross_validate, fuse, fuse_runs, ranked
from laconic_ray.eval.runs import write_run


def random_runs(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(60)]
    learned, lexical = {}, {}
    for q in range(8):
        a = rng.choice(docs, 30, replace=False)
        b = rng.choice(docs, 25, replace=False)
        learned[f"q{q}"] = {d: float(s) for d, s in zip(a, rng.integers(0, 40, 30) * 0.25, strict=True)}
        lexical[f"q{q}"] = {d: float(s) for d, s in zip(b, rng.gamma(2.0, 5.0, 25), strict=True)}
    return learned, lexical


def pyserini_fused(learned, lexical, tmp_path, config: HybridConfig, k: int):
    from pyserini.fusion import reciprocal_rank_fusion
    from pyserini.trectools import AggregationMethod, RescoreMethod, TrecRun

    write_run(str(tmp_path / "a.trec"), learned, "a")
    write_run(str(tmp_path / "b.trec"), lexical, "b")
    runs = [TrecRun(str(tmp_path / "a.trec")), TrecRun(str(tmp_path / "b.trec"))]
    if config.fusion == "rrf":
        fused = reciprocal_rank_fusion(runs, rrf_k=config.rrf_k, depth=config.depth, k=k)
    else:
        scaled = [r.clone().rescore(method=RescoreMethod.NORMALIZE).rescore(method=RescoreMethod.SCALE, scale=w)
                  for r, w in zip(runs, (config.weight, 1 - config.weight), strict=True)]  # fmt: skip
        fused = TrecRun.merge(scaled, AggregationMethod.SUM, depth=config.depth, k=k)
    out: dict[str, dict[str, float]] = {}
    for row in fused.run_data.itertuples():
        out.setdefault(str(row.topic), {})[row.docid] = row.score
    return out


@pytest.mark.parametrize(
    "fields",
    [
        {"fusion": "rrf"},
        {"fusion": "rrf", "rrf_k": 10, "depth": 12},
        {"fusion": "interpolation"},
        {"fusion": "interpolation", "weight": 0.3},
    ],
)
def test_fusion_equals_pyserinis(fields, tmp_path):
    config = HybridConfig(**fields)
    learned, lexical = random_runs(0)
    ours = fuse_runs(learned, lexical, config, k=20)
    theirs = pyserini_fused(learned, lexical, tmp_path, config, k=20)
    assert ours.keys() == theirs.keys()
    for q in ours:
        pool = {d for run in (learned[q], lexical[q]) for d, _ in ranked(run, config.depth)}
        assert len(ours[q]) == len(theirs[q]) == min(20, len(pool))
        # the same scores (to the run files' 6 decimals); the same documents wherever the 20th place is not a tie
        assert sorted(ours[q].values()) == pytest.approx(sorted(theirs[q].values()))
        cut = min(ours[q].values())
        assert {d for d, s in ours[q].items() if s > cut + 1e-6} == {
            d for d, s in theirs[q].items() if s > cut + 1e-6
        }


def test_fusion_edge_cases():
    rrf, interpolation = HybridConfig(), HybridConfig(fusion="interpolation", weight=0.75)
    # one run has nothing: the other's ranking stands
    assert list(fuse({"a": 1.0, "b": 3.0}, {}, rrf)) == ["b", "a"]
    assert fuse({}, {"x": 2.0, "y": 1.0}, interpolation) == {"x": 0.25, "y": 0.0}
    # a run whose scores are all equal counts fully (1), as pyserini's normalisation does
    assert fuse({"a": 5.0, "b": 5.0}, {"b": 9.0, "c": 1.0}, interpolation) == {"b": 1.0, "a": 0.75, "c": 0.0}
    # found by both beats found by one at the same rank; k cuts; ties go by document id
    fused = fuse({"a": 2.0, "b": 1.0}, {"b": 7.0, "c": 3.0}, rrf, k=2)
    assert list(fused) == ["b", "a"] and fused["b"] == pytest.approx(1 / 61 + 1 / 62)
    assert list(fuse({"z": 1.0, "y": 1.0}, {}, rrf)) == ["y", "z"]
    for bad, message in [("fusion=max", "fusion: must be one of"), ("weight=1.5", "weight: must be in"),
                         ("rrf_k=0", "rrf_k: must be > 0")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_config(HybridConfig, None, [bad])


def test_cross_validation_scores_each_fold_with_a_choice_made_on_the_others():
    queries = [f"q{i:02d}" for i in range(10)]  # sorted by id: fold = position % 5, (q00, q05) is fold 0
    # "high" is better on the whole (0.44 vs 0.4) only through fold 4 (q04, q09): the folds that hold fold 4
    # in their choosing set take it; fold 4 itself, chosen for on the others only, does not
    low = dict.fromkeys(queries, 0.4)
    high = {q: 1.0 if q in ("q04", "q09") else 0.3 for q in queries}
    cv = cross_validate({"low": low, "high": high}, 5)
    assert [f["chosen"] for f in cv["folds"]] == ["high"] * 4 + ["low"]
    assert cv["folds"][0] == {"fold": 0, "queries": 2, "chosen": "high", "train_mean": pytest.approx(0.475)}
    assert cv["per_query"] == {q: 0.4 if q in ("q04", "q09") else 0.3 for q in queries}
    assert cv["mean"] == pytest.approx(0.32)
    # where a choice wins on the other folds, the held-out fold gets it, good or bad for that fold
    high = {q: 0.9 if q not in ("q04", "q09") else 0.1 for q in queries}  # wins on the others, loses on 4
    cv = cross_validate({"low": low, "high": high}, 5)
    assert [f["chosen"] for f in cv["folds"]] == ["high"] * 5
    assert cv["per_query"]["q09"] == 0.1 and cv["mean"] == pytest.approx(np.mean(list(high.values())))
    # equal means: the earlier choice; folds that cannot be made and choices on other queries are refused
    assert cross_validate({"a": low, "b": dict(low)}, 2)["folds"][0]["chosen"] == "a"
    for bad, folds, message in [({"a": low}, 1, "folds must be in"), ({"a": low}, 11, "folds must be in"),
                                ({"a": low, "b": {"q00": 1.0}}, 2, "other queries"), ({}, 2, "no choices")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            cross_validate(bad, folds)
