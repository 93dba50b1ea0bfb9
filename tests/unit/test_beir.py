"""BEIR readers: real collection counts, every malformed-record case, gz / Parquet / folders / S3."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laconic_ray import storage
from laconic_ray.data.beir import (
    BeirDataset,
    DataFormatError,
    Rejects,
    corpus_of,
    iter_documents,
    read_qrels,
    resolve_dataset,
)
from laconic_ray.data.shards import plan_shards


def test_scifact_counts(data_root):
    ds = BeirDataset("scifact")
    docs = list(ds.corpus())
    assert len(docs) == 5183 and len({d.id for d in docs}) == 5183
    assert docs[0].id == "4983" and docs[0].title.startswith("Microstructural development")
    assert docs[0].full_text().startswith(docs[0].title + " Alterations")
    assert len(list(ds.queries())) == 1109
    assert ds.splits() == ["test", "train"]
    test = ds.qrels("test")
    assert sum(len(v) for v in test.values()) == 339 and len(test) == 300
    assert len(list(ds.queries("test"))) == 300 and len(list(ds.queries("train"))) == 809
    with pytest.raises(FileNotFoundError, match="no qrels for split 'dev'"):
        ds.qrels("dev")


def test_other_collections_and_trec_qrels(data_root):
    assert sum(1 for _ in BeirDataset("cacm").corpus()) == 3204
    assert sum(1 for _ in BeirDataset("cranfield").corpus()) == 1400
    trec = read_qrels(str(data_root / "scifact" / "anserini" / "qrels.beir-v1.0.0-scifact.test.txt"))
    assert trec == BeirDataset("scifact").qrels("test")


def test_resolve_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("LACONIC_DATA", str(tmp_path))
    assert resolve_dataset("scifact") == str(tmp_path / "scifact")
    assert resolve_dataset("s3://b/scifact") == "s3://b/scifact"
    monkeypatch.delenv("LACONIC_DATA")
    with pytest.raises(FileNotFoundError, match="set LACONIC_DATA"):
        resolve_dataset("scifact")


GOOD = {"_id": "d1", "title": "T", "text": "body"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json}", "invalid JSON"),
        (b'["a", "list"]', "expected a JSON object, got list"),
        (b'{"title": "no id", "text": "x"}', "missing field '_id'"),
        (b'{"_id": "d9", "title": "no text"}', "missing field 'text'"),
        (b'{"_id": "d9", "text": 5}', "field 'text' must be a string, got int"),
        (b'{"_id": "", "text": "x"}', "empty '_id'"),
        (b'{"_id": "d9", "text": "caf\xe9"}', "invalid UTF-8"),
    ],
)
def test_malformed_line_is_named_or_rejected(tmp_path, line, reason):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode() + b"\n\n" + line + b"\n" + json.dumps({**GOOD, "_id": "d2"}).encode()
    )
    with pytest.raises(DataFormatError, match=rf"corpus.jsonl:3: {reason}"):
        list(iter_documents(str(path)))
    rejects = Rejects()
    docs = list(iter_documents(str(path), on_error="skip", rejects=rejects))
    assert [d.id for d in docs] == ["d1", "d2"]  # nothing else lost
    assert len(rejects) == 1 and rejects.records[0]["line"] == 3 and reason in rejects.records[0]["reason"]
    rejects.write(str(tmp_path / "rejects.jsonl"))
    assert json.loads((tmp_path / "rejects.jsonl").read_text())["file"].endswith("corpus.jsonl")


def test_truncated_gzip_is_named(tmp_path):
    body = gzip.compress(b"".join(json.dumps({**GOOD, "_id": f"d{i}"}).encode() + b"\n" for i in range(2000)))
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl.gz: unreadable after line \d+"):
        list(iter_documents(str(path)))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\tx\n", r"qrels.tsv:2: score 'x' is not an integer"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"qrels.tsv:2: expected 'query-id<TAB>corpus-id<TAB>score'"),
    ],
)
def test_malformed_qrels(tmp_path, text, pattern):
    path = tmp_path / "qrels.tsv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=pattern):
        read_qrels(str(path))


def make_collection(root, n=5):
    root.mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"} for i in range(n)]
    with gzip.open(root / "corpus.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    pq.write_table(
        pa.Table.from_pylist([{"_id": "q1", "text": "what"}, {"_id": "q2", "text": "who"}]),
        root / "queries.parquet",
    )
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    return docs


def test_gz_and_parquet_collection(tmp_path):
    make_collection(tmp_path / "mini")
    ds = BeirDataset(str(tmp_path / "mini"))
    assert [d.id for d in ds.corpus()] == [f"d{i}" for i in range(5)]
    assert [q.id for q in ds.queries("train")] == ["q1"]
    assert ds.qrels("train") == {"q1": {"d1": 1, "d2": 2}}


def test_folder_of_many_files_in_name_order(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for part, ids in [("b.jsonl", ["3", "4"]), ("a.jsonl", ["1", "2"])]:
        (folder / part).write_text("".join(json.dumps({"_id": i, "text": "t"}) + "\n" for i in ids))
    (folder / "notes.txt").write_text("ignored")
    assert [d.id for d in iter_documents(str(folder))] == ["1", "2", "3", "4"]


def test_a_collections_folder_as_a_corpus_means_its_corpus_file(tmp_path):
    """`laconic encode corpus=scifact` encoded queries.jsonl's 1,109 queries as documents too."""
    make_collection(tmp_path / "mini")
    (tmp_path / "mini" / "queries.jsonl").write_text(json.dumps({"_id": "q9", "text": "a query"}) + "\n")
    assert corpus_of(str(tmp_path / "mini")) == str(tmp_path / "mini" / "corpus.jsonl.gz")
    assert [d.id for d in iter_documents(str(tmp_path / "mini"))] == [f"d{i}" for i in range(5)]
    shards = plan_shards(corpus_of(str(tmp_path / "mini")), 1 << 20)
    assert [s.uri for s in shards] == [str(tmp_path / "mini" / "corpus.jsonl.gz")]
    assert corpus_of(str(tmp_path / "mini" / "qrels")) == str(tmp_path / "mini" / "qrels")  # any other folder


def test_collection_on_s3(tmp_path, s3_bucket):
    base, options = s3_bucket
    make_collection(tmp_path / "mini")
    fs, path = storage.filesystem(base, options)
    fs.put(str(tmp_path / "mini"), f"{path}/mini", recursive=True)
    ds = BeirDataset(storage.join(base, "mini"), options=options)
    assert [d.id for d in ds.corpus()] == [f"d{i}" for i in range(5)]
    assert ds.splits() == ["train"] and ds.qrels("train")["q1"] == {"d1": 1, "d2": 2}
    assert [q.text for q in ds.queries()] == ["what", "who"]
    # a folder of parts on S3
    fs.put(str(tmp_path / "mini" / "corpus.jsonl.gz"), f"{path}/parts/x.jsonl.gz")
    assert sum(1 for _ in iter_documents(storage.join(base, "parts"), options=options)) == 5


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset: .*nope: not found"):
        BeirDataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no corpus\.jsonl"):
        list(BeirDataset(str(tmp_path / "empty")).corpus())
    shutil.rmtree(tmp_path / "empty")


def test_a_dev_split_carved_from_train_is_disjoint_from_what_mining_sees(data_root, tmp_path):
    from laconic_ray.quickstart import carve_dev

    source = BeirDataset(str(data_root / "scifact"))
    carved = BeirDataset(carve_dev(source.root, str(tmp_path / "scifact"), 5))
    train, dev = carved.qrels("train"), carved.qrels("dev")
    original = source.qrels("train")
    assert not set(train) & set(dev) and {**train, **dev} == original
    assert len(dev) == len(original) // 5  # 1 in 5, every 5th by id: the same split on every machine
    assert carved.qrels("test") == source.qrels("test") and carved.name == "scifact"
    assert sum(1 for _ in carved.corpus()) == sum(1 for _ in source.corpus())  # linked, not copied
    assert carve_dev(source.root, str(tmp_path / "scifact"), 5) == carved.root  # a rerun keeps the split
    with pytest.raises(ValueError, match="already has a dev split"):
        carve_dev(carved.root, str(tmp_path / "again"), 5)
    with pytest.raises(ValueError, match=r"no qrels/train\.tsv"):
        carve_dev(str(data_root / "cacm"), str(tmp_path / "cacm"), 5)


def test_a_failed_download_says_what_to_set_instead(tmp_path):
    from laconic_ray.data.beir import download_beir

    with pytest.raises(
        FileNotFoundError, match=r"downloading http://127\.0\.0\.1:9/nfcorpus\.zip failed.*set LACONIC_DATA"
    ):
        download_beir("nfcorpus", str(tmp_path), url="http://127.0.0.1:9/{name}.zip")
    assert list(tmp_path.iterdir()) == []  # nothing that looks like a collection
