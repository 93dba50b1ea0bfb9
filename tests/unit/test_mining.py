"""Training data: hard negatives on SciFact train through real BM25 (pyserini), weak pairs, guard rails."""

from __future__ import annotations

import json
import os

import pytest

from laconic_ray.config import ConfigError, MineConfig, load_config
from laconic_ray.data import lucene
from laconic_ray.data.beir import BeirDataset
from laconic_ray.data.examples import EXAMPLES_KIND, read_examples
from laconic_ray.data.mining import filter_candidates, run_mine
from laconic_ray.storage import read_manifest


def mine(output, *overrides):
    return run_mine(load_config(MineConfig, "conf/mine.yaml", [f"output={output}", *overrides]))


@pytest.fixture(scope="module")
def scifact_negatives(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("mine") / "neg"
    summary = mine(str(out), "dataset=scifact", "phase=2", "split=train")
    return str(out), summary


def test_every_example_has_one_positive_and_fifteen_clean_negatives(scifact_negatives):
    out, summary = scifact_negatives
    ds = BeirDataset("scifact")
    train, test = ds.qrels("train"), ds.qrels("test")
    examples = list(read_examples(out))
    assert len(examples) == summary["examples"] > 700
    for ex in examples:
        assert len(ex.negative_ids) == len(ex.negatives) == 15 and len(set(ex.negative_ids)) == 15
        judged = {d for d, rel in train[ex.query_id].items() if rel > 0}
        assert ex.positive_id in judged and not judged & set(ex.negative_ids)
        assert ex.query_id not in test  # no test query leaks into training data
        assert ex.source == "bm25:scifact/train"
    # nothing silently dropped: every judged pair is either an example or counted as skipped
    pairs = sum(1 for q in train.values() for rel in q.values() if rel > 0)
    assert (
        summary["examples"] + sum(summary["skipped"].values())
        >= pairs - summary["skipped"]["query_text_missing"]
    )
    assert sum(summary["positive_rank"].values()) == pairs
    assert read_manifest(out, kind=EXAMPLES_KIND).metadata["num_negatives"] == 15


def test_same_seed_same_output_other_seed_other_output(scifact_negatives, tmp_path):
    out, _ = scifact_negatives
    again = tmp_path / "again"
    mine(str(again), "dataset=scifact", "phase=2")
    assert [e.__dict__ for e in read_examples(out)] == [e.__dict__ for e in read_examples(str(again))]
    other = tmp_path / "other"
    mine(str(other), "dataset=scifact", "phase=2", "seed=1")
    first = {e.query_id + e.positive_id: e.negative_ids for e in read_examples(out)}
    second = {e.query_id + e.positive_id: e.negative_ids for e in read_examples(str(other))}
    assert first.keys() == second.keys() and first != second


def test_bm25_top1_matches_pyserini_directly(scifact_negatives, data_root):
    ds = BeirDataset("scifact")
    index = lucene.build_bm25_index(ds)  # cached by the mining run
    searcher = lucene.import_pyserini().LuceneSearcher(index)
    searcher.set_bm25(0.9, 0.4)
    ours = lucene.BM25(index)
    queries = list(ds.queries("train"))[:25]
    batch = ours.batch_search([q.text for q in queries], [q.id for q in queries], 10)
    for q in queries:
        direct = searcher.search(q.text, k=1)
        assert batch[q.id][0][0] == direct[0].docid
        assert batch[q.id][0][1] == pytest.approx(direct[0].score)


def test_no_placeholder_key_leaks_into_the_environment(scifact_negatives):
    lucene.import_pyserini()
    assert "OPENAI_API_KEY" not in os.environ


def test_java_discovery(monkeypatch, tmp_path):
    def jdk(name, version):
        home = tmp_path / name
        home.mkdir()
        (home / "release").write_text(f'JAVA_VERSION="{version}"\n')
        return str(home)

    old, new = jdk("jdk17", "17.0.15"), jdk("jdk25", "25.0.1")
    monkeypatch.setattr(lucene, "JVM_ROOTS", (str(tmp_path),))
    monkeypatch.setenv("JAVA_HOME", old)
    assert lucene.find_java_home() == new  # JAVA_HOME too old: the newest good one instead
    monkeypatch.setenv("JAVA_HOME", new)
    assert lucene.find_java_home() == new
    os.remove(os.path.join(new, "release"))
    monkeypatch.setenv("JAVA_HOME", old)
    with pytest.raises(
        lucene.JavaNotFoundError, match=r"needs Java 21\+; found: JAVA_HOME=.*jdk17 \(Java 17\)"
    ):
        lucene.find_java_home()


def test_mining_the_test_split_is_refused_unless_forced(tmp_path):
    with pytest.raises(ConfigError, match="split: refusing to mine the test split"):
        load_config(MineConfig, "conf/mine.yaml", ["dataset=scifact", f"output={tmp_path}", "split=test"])
    load_config(
        MineConfig, "conf/mine.yaml", ["dataset=scifact", f"output={tmp_path}", "split=test", "force=true"]
    )


def test_filter_candidates():
    ranked = [("a", 10.0), ("pos", 9.0), ("b", 8.9), ("c", 5.0), ("d", 4.0), ("e", 1.0)]
    pool, dropped = filter_candidates(ranked, {"pos"}, 9.0, window=(0, 5), margin=0.95)
    # a and b score >= 0.95 * 9.0 (likely false negatives); e is outside the window
    assert pool == ["c", "d"] and dropped == {"judged": 1, "margin": 2}
    assert filter_candidates(ranked, {"pos"}, 9.0, window=(0, 6), margin=0.0)[0] == ["a", "b", "c", "d", "e"]


def keep_none(query, positive, candidates):
    return [False] * len(candidates)


def test_rescorer_hook_and_problem_queries_are_reported(tmp_path):
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"apples and oranges number {i} " * 3} for i in range(40)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [
        {"_id": "q1", "text": "apples oranges"},
        {"_id": "q2", "text": "apples"},
        {"_id": "q3", "text": "oranges"},
    ]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\nq3\tmissing\t1\nq9\td3\t1\n"
    )
    cache = str(tmp_path / "lucene")
    summary = mine(
        str(tmp_path / "out"),
        f"dataset={root}",
        f"index_cache={cache}",
        "depth=40",
        "window_end=40",
        "false_negative_margin=0",
    )
    assert summary["examples"] == 1
    assert summary["skipped"] == {
        "no_judged_positive": 1,
        "positive_not_in_corpus": 1,
        "too_few_candidates": 0,
        "query_text_missing": 1,
    }
    reasons = (tmp_path / "out" / "skipped.jsonl").read_text()
    assert "no judged positive" in reasons and "not in the corpus" in reasons
    hooked = mine(
        str(tmp_path / "hooked"),
        f"dataset={root}",
        f"index_cache={cache}",
        "depth=40",
        "window_end=40",
        "false_negative_margin=0",
        "rescorer=tests.unit.test_mining:keep_none",
    )
    assert hooked["examples"] == 0 and hooked["skipped"]["too_few_candidates"] == 1
    assert hooked["dropped_candidates"]["rescorer"] > 15
    filled = mine(
        str(tmp_path / "filled"),
        f"dataset={root}",
        f"index_cache={cache}",
        "depth=40",
        "window_end=40",
        "rescorer=tests.unit.test_mining:keep_none",
        "fill=random",
    )
    assert filled["examples"] == 1


@pytest.mark.parametrize("name", ["cacm", "cranfield"])
def test_weak_pairs_counts_and_determinism(name, tmp_path, data_root):
    a = mine(str(tmp_path / "a"), f"dataset={name}", "phase=1")
    b = mine(str(tmp_path / "b"), f"dataset={name}", "phase=1")
    assert a["examples"] == b["examples"] > 500
    assert [e.__dict__ for e in read_examples(str(tmp_path / "a"))] == [
        e.__dict__ for e in read_examples(str(tmp_path / "b"))
    ]
    assert a["candidates"] == a["examples"] + a.get("filtered_length", 0) + a.get("duplicates", 0)
    examples = list(read_examples(str(tmp_path / "a")))
    assert all(e.negative_ids == [] and e.query and e.positive for e in examples)
    assert {e.source for e in examples} <= {"weak:title_body", "weak:first_sentence"}
    sampled = mine(str(tmp_path / "c"), f"dataset={name}", "phase=1", "max_pairs=100", "seed=3")
    again = mine(str(tmp_path / "d"), f"dataset={name}", "phase=1", "max_pairs=100", "seed=3")
    assert sampled["examples"] == again["examples"] == 100
    assert [e.query_id for e in read_examples(str(tmp_path / "c"))] == [
        e.query_id for e in read_examples(str(tmp_path / "d"))
    ]


def test_label_free_pairs_from_a_corpus_without_titles(tmp_path, data_root):
    """Cropping and inverse cloze need nothing but text: Cranfield's bodies (lower case, ' . ' between
    sentences) give pairs whose two sides come from the same document, the same ones on every run and in any
    corpus order; an unknown source is refused by name."""
    from laconic_ray.data.weak_pairs import corpus_pairs

    args = ["dataset=cranfield", "phase=1", "weak_sources=[cropping,inverse_cloze]", "pairs_per_document=2"]
    mined = mine(str(tmp_path / "a"), *args)
    examples = list(read_examples(str(tmp_path / "a")))
    by_source = mined["by_source"]
    assert by_source["weak:cropping"] > 2000 and by_source["weak:inverse_cloze"] > 2000  # 1,400 docs x 2
    texts = {d.id: d.full_text().split() for d in BeirDataset(str(data_root / "cranfield")).corpus()}
    for e in examples:
        words = texts[e.positive_id]
        if e.source == "weak:cropping":  # both spans are runs of the document's own words
            for side in (e.query, e.positive):
                span = side.split()
                assert any(words[i : i + len(span)] == span for i in range(len(words) - len(span) + 1))
                assert len(span) <= 0.5 * len(words) + 1
        else:  # the sentence came out of the context (all but ~1 in 10 times)
            assert e.query.split()[0] in words
    kept_in = sum(e.query in e.positive for e in examples if e.source == "weak:inverse_cloze")
    assert 0.03 < kept_in / by_source["weak:inverse_cloze"] < 0.2
    docs = list(BeirDataset(str(data_root / "cranfield")).corpus())[:50]
    forward = {e.query_id: e for e in corpus_pairs(docs, ["cropping"], seed=1)}
    backward = {e.query_id: e for e in corpus_pairs(docs[::-1], ["cropping"], seed=1)}
    assert forward == backward and forward != {
        e.query_id: e for e in corpus_pairs(docs, ["cropping"], seed=2)
    }
    with pytest.raises(ConfigError, match=r"weak_sources: \['ict'\]: not sources"):
        mine(str(tmp_path / "b"), "dataset=cranfield", "phase=1", "weak_sources=[ict]")


def test_source_corpus_reads_no_labels(tmp_path, data_root):
    """`source=corpus` mines a bare corpus (no queries, no qrels: a user's own collection), even under
    split=test, since no judged pair is read; `corpus+qrels` adds the split's judged pairs; hard negatives
    (phase 2) need judged queries and say so."""
    bare = tmp_path / "mine-own"
    bare.mkdir()
    with open(data_root / "cranfield" / "corpus.jsonl") as src:
        (bare / "corpus.jsonl").write_text("".join(next(src) for _ in range(200)))
    args = ["phase=1", "source=corpus", "split=test", "weak_sources=[cropping,inverse_cloze]"]
    mined = mine(str(tmp_path / "own"), f"dataset={bare}", *args)
    assert 300 < mined["examples"] <= 400 and set(mined["by_source"]) == {
        "weak:cropping",
        "weak:inverse_cloze",
    }
    meta = read_manifest(str(tmp_path / "own")).metadata
    assert meta["source"] == "corpus" and meta["split"] is None
    with pytest.raises(FileNotFoundError, match="qrels"):
        mine(str(tmp_path / "x"), f"dataset={bare}", "phase=1", "source=corpus+qrels")
    both = mine(str(tmp_path / "both"), "dataset=scifact", "phase=1", "source=corpus+qrels")
    only = mine(str(tmp_path / "qrels"), "dataset=scifact", "phase=1", "source=qrels")
    assert only["by_source"] == {"qrels:scifact/train": only["examples"]} and only["examples"] > 800
    assert both["by_source"]["qrels:scifact/train"] == only["examples"]
    with pytest.raises(ConfigError, match=r"source: phase 2 mines from qrels \(hard negatives need judged"):
        mine(str(tmp_path / "y"), "dataset=scifact", "phase=2", "source=corpus")
    with pytest.raises(ConfigError, match="split: refusing to mine the test split"):
        mine(str(tmp_path / "z"), "dataset=scifact", "phase=1", "source=corpus+qrels", "split=test")
