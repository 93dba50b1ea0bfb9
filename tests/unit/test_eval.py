"""Evaluation: metrics against hand computations, the BM25 reference, Lucene vs our engine on exported
impacts, the regression comparator, run files and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from laconic_ray import sparse
from laconic_ray.config import Condition, EvalConfig, load_config
from laconic_ray.data import lucene
from laconic_ray.eval.evaluate import run_eval
from laconic_ray.eval.export import export_vectors, integer_queries, vocabulary_terms
from laconic_ray.eval.metrics import compare, evaluate
from laconic_ray.eval.plots import plot_deltas, plot_latency_recall
from laconic_ray.eval.regress import classify, judge, markdown
from laconic_ray.eval.runs import RunFormatError, read_run, write_run
from laconic_ray.index import InvertedIndex
from tests.vectors import bm25_queries, collection_vectors


def test_metrics_on_a_hand_made_run():
    qrels = {"q1": {"a": 1, "b": 2, "z": 0}, "q2": {"c": 1}, "q3": {"d": 1}}
    run = {"q1": {"x": 3.0, "b": 2.0, "a": 1.0}, "q2": {"c": 5.0}}  # q3 unanswered: counts as 0
    aggregate, per_query = evaluate(run, qrels)
    # q1: gains (0, 2, 1) at ranks 1..3; trec_eval's nDCG uses linear gains (as BEIR's numbers do):
    # DCG = 2/log2(3) + 1/log2(4); ideal (2, 1): 2/log2(2) + 1/log2(3)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert per_query["q1"]["nDCG@10"] == pytest.approx(dcg / idcg, abs=1e-4)
    assert per_query["q1"]["RR@10"] == pytest.approx(0.5)
    assert per_query["q2"] == {"nDCG@10": 1.0, "R@100": 1.0, "RR@10": 1.0}
    assert per_query["q3"] == {"nDCG@10": 0.0, "R@100": 0.0, "RR@10": 0.0}
    assert aggregate["nDCG@10"] == pytest.approx((dcg / idcg + 1.0) / 3, abs=1e-4)
    assert aggregate["R@100"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)


def test_compare_counts_wins_losses_and_tests_significance():
    base = {f"q{i}": {"nDCG@10": 0.5} for i in range(30)}
    better = {f"q{i}": {"nDCG@10": 0.5 + (0.2 if i < 25 else -0.1)} for i in range(30)}
    result = compare(better, base, "nDCG@10")
    assert (result["wins"], result["losses"], result["ties"]) == (25, 5, 0)
    assert result["delta"] == pytest.approx((25 * 0.2 - 5 * 0.1) / 30)
    assert result["t_test_p"] < 0.001 and result["randomization_p"] < 0.01
    same = compare(base, base, "nDCG@10")
    assert same["ties"] == 30 and same["t_test_p"] == 1.0


def test_run_files_round_trip_and_errors(tmp_path):
    run = {"q1": {"a": 2.5, "b": 1.0}, "q2": {"c": 0.25}}
    write_run(str(tmp_path / "run.trec"), run, "tag")
    assert read_run(str(tmp_path / "run.trec")) == run
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "q1 Q0 a 1 2.500000 tag"
    (tmp_path / "bad.trec").write_text("q1 Q0 a 1 2.5 tag\nq1 a 1\n")
    with pytest.raises(RunFormatError, match=r"bad\.trec:2: expected"):
        read_run(str(tmp_path / "bad.trec"))


@pytest.mark.parametrize(
    ("expected", "actual", "at_least", "verdict"),
    [
        (0.665, 0.665, False, "OK"),
        (0.665, 0.668, False, "OK"),
        (0.665, 0.661, False, "OKish"),
        (0.665, 0.70, False, "FAIL"),
        (0.665, None, False, "FAIL"),
        (0.60, 0.75, True, "OK"),
        (0.60, 0.595, True, "OKish"),
        (0.60, 0.55, True, "FAIL"),
    ],
)
def test_regression_comparator(expected, actual, at_least, verdict):
    assert classify(expected, actual, 0.003, 0.01, at_least) == verdict


def test_regression_judge_and_table():
    condition = Condition(name="c", expected={"nDCG@10": 0.5, "R@100": 0.8}, ok=0.01, okish=0.05)
    rows = judge(condition, {"nDCG@10": 0.52})
    assert [r["verdict"] for r in rows] == ["OKish", "FAIL"]
    assert "| c | R@100 | 0.8000 | missing | FAIL |" in markdown(rows)


def test_bm25_reproduces_the_published_scifact_figures(tmp_path, data_root):
    summary = run_eval(
        load_config(EvalConfig, "conf/eval.yaml", ["dataset=scifact", "retriever=bm25", f"output={tmp_path}"])
    )
    flat = run_eval(
        load_config(EvalConfig, "conf/eval.yaml", ["dataset=scifact", "retriever=bm25", "bm25_layout=flat"])
    )
    print(f"BM25 SciFact test: multifield {summary['metrics']}, flat {flat['metrics']}")
    assert summary["queries"] == 300
    # BEIR's published BM25 (Anserini multifield) 0.665, and Anserini's flat regression 0.679
    assert summary["metrics"]["nDCG@10"] == pytest.approx(0.665, abs=0.003)
    assert flat["metrics"]["nDCG@10"] == pytest.approx(0.679, abs=0.003)
    # the run file scores back to the same numbers, and a self-comparison is all ties
    again = run_eval(
        load_config(
            EvalConfig,
            "conf/eval.yaml",
            [
                "dataset=scifact",
                "retriever=run",
                f"run={tmp_path}/run.trec",
                f"baseline={tmp_path}/run.trec",
                f"output={tmp_path}/again",
            ],
        )
    )
    assert again["metrics"] == summary["metrics"]
    assert again["comparison"]["nDCG@10"]["ties"] == 300
    assert (tmp_path / "again" / "delta-nDCG_at_10.png").stat().st_size > 1000


@pytest.mark.parametrize("terms", ["ids", "tokens"])
def test_lucene_impact_search_equals_our_engine_on_exported_vectors(tmp_path, data_root, terms):
    """Anserini's impact index built from our export gives our top 10, with terms as vocabulary ids or as the
    tokenizer's strings (what the reference implementations write and Anserini's SPLADE regressions use)."""
    doc_ids, docs = collection_vectors("scifact")
    impacts = sparse.quantize(docs)  # round(100 w): Lucene's integer impacts
    sparse.write_sparse(
        str(tmp_path / "vecs"), doc_ids, impacts, docs.shape[1], metadata={"weight_format": "impact"}
    )
    tokenizer = "laconic:bert-base-uncased"  # the vectors' vocabulary
    export = export_vectors(
        str(tmp_path / "vecs"),
        str(tmp_path / "anserini"),
        "anserini",
        files=2,
        terms=terms,
        tokenizer=tokenizer,
    )
    assert export["vectors"] == len(doc_ids) and export["impact_scale"] == 1
    strings = vocabulary_terms(tokenizer, docs.shape[1]) if terms == "tokens" else None
    first = json.loads((tmp_path / "anserini" / "part-00000.jsonl").read_text().splitlines()[0])
    expected_terms = {strings[t] if strings else str(t) for t in impacts[0].indices}
    assert set(first["vector"]) == expected_terms
    lucene.build_impact_index(str(tmp_path / "anserini"), str(tmp_path / "lucene"))
    searcher = lucene.ImpactSearcher(str(tmp_path / "lucene"))
    ours = InvertedIndex.from_sparse(str(tmp_path / "vecs"))
    _, queries = bm25_queries("scifact", "test")
    queries = integer_queries(queries)
    compared = 0
    for qi in range(queries.shape[0]):
        q = queries[qi]
        if q.nnz == 0:
            continue
        weights = {
            (strings[t] if strings else str(t)): int(w) for t, w in zip(q.indices, q.data, strict=True)
        }
        theirs = searcher.search(weights, 10)
        ids, scores = ours.search(q.indices, q.data, 10)
        assert ids == [d for d, _ in theirs], f"query {qi}"
        np.testing.assert_array_equal(scores, np.array([s for _, s in theirs]))
        compared += 1
    assert compared > 250


def test_query_topics_export_and_vectors_import_back_exactly(tmp_path, data_root):
    """Query vectors export as Anserini topics (terms repeated by weight); every export imports back to the
    same matrix, ids or token strings, integer impacts or floats; a bad line is named by file and line."""
    from laconic_ray.eval.export import import_vectors

    query_ids, queries = bm25_queries("cacm", "test")
    sparse.write_sparse(str(tmp_path / "q"), query_ids, queries, queries.shape[1], metadata={"kind": "query"})
    tokenizer = "laconic:bert-base-uncased"
    out = export_vectors(
        str(tmp_path / "q"), str(tmp_path / "topics"), "anserini", terms="tokens", tokenizer=tokenizer
    )
    assert "topics.tsv" in out["files"]
    strings = vocabulary_terms(tokenizer, queries.shape[1])
    impacts = sparse.quantize(queries)
    qid, words = (tmp_path / "topics" / "topics.tsv").read_text().splitlines()[0].split("\t")
    row = impacts[0]
    assert qid == query_ids[0]
    assert sorted(words.split()) == sorted(
        w for t, v in zip(row.indices, row.data, strict=True) for w in [strings[t]] * int(v)
    )

    for fmt, terms in (("anserini", "tokens"), ("seismic", "ids")):
        folder = tmp_path / f"{fmt}-{terms}"
        export_vectors(str(tmp_path / "q"), str(folder), fmt, terms=terms, tokenizer=tokenizer)
        back = tmp_path / f"back-{fmt}"
        kwargs = {"tokenizer": tokenizer} if terms == "tokens" else {"vocab_size": queries.shape[1]}
        summary = import_vectors(str(folder), str(back), **kwargs)
        ids, csr, _meta = sparse.read_sparse(str(back))
        want = impacts if fmt == "anserini" else queries
        assert ids == query_ids and summary["weight_format"] == ("impact" if fmt == "anserini" else "float")
        np.testing.assert_array_equal(csr.toarray(), want.toarray())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"id": "1", "vector": {"5": 2}}\n{"id": "2", "vector": {"x": 1}}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2: not a vector line"):
        import_vectors(str(bad), str(tmp_path / "never"), vocab_size=30522)
    assert not (tmp_path / "never").exists()


def test_seismic_export_and_plots(tmp_path, data_root):
    doc_ids, docs = collection_vectors("cacm")
    sparse.write_sparse(str(tmp_path / "vecs"), doc_ids, docs, docs.shape[1])
    out = export_vectors(str(tmp_path / "vecs"), str(tmp_path / "seismic"), "seismic")
    first = (tmp_path / "seismic" / "documents.jsonl").read_text().splitlines()[0]
    row = json.loads(first)
    assert out["vectors"] == len(doc_ids) and set(row) == {"id", "content", "vector"}
    assert all(isinstance(v, float) for v in row["vector"].values())
    rows = [
        {"engine": "a", "label": "a1", "recall10_float": 0.9, "latency_ms_median": 0.2},
        {"engine": "a", "label": "a2", "recall10_float": 0.99, "latency_ms_median": 0.4},
        {"engine": "b", "label": "b", "recall10_float": 1.0, "latency_ms_median": 2.0},
    ]
    assert (tmp_path / "curve.png").exists() is False
    plot_latency_recall(rows, str(tmp_path / "curve.png"))
    plot_deltas({"q1": 0.1, "q2": -0.2, "q3": 0.0}, "nDCG@10", str(tmp_path / "delta.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000 and (tmp_path / "delta.png").stat().st_size > 1000


def test_served_evaluation_refuses_partial_answers():
    # an overloaded machine once left the shards silent: the quickstart scored empty answers as nDCG@10 0.0
    from laconic_ray.distributed.serving import SearchResult
    from laconic_ray.quickstart import complete_answers

    class Searcher:
        def __init__(self, partial_batches: int) -> None:
            self.calls, self.partial_batches = 0, partial_batches

        def batch_search(self, texts, k):
            self.calls += 1
            if self.calls <= self.partial_batches:
                return [SearchResult([], [], partial=True, missing_shards=[0, 1]) for _ in texts]
            return [SearchResult(["d1"], [1.0]) for _ in texts]

    flaky = Searcher(partial_batches=1)
    assert [a.doc_ids for a in complete_answers(flaky, ["q1", "q2"], 10, 10.0)] == [["d1"], ["d1"]]
    assert flaky.calls == 2  # asked again once
    silent = Searcher(partial_batches=99)
    with pytest.raises(
        RuntimeError, match=r"2 of 2 served answers were partial \(shards \[0, 1\].*serve_timeout_s"
    ):
        complete_answers(silent, ["q1", "q2"], 10, 10.0)
    assert silent.calls == 2
