"""The sparse contract: lossless round trips (local and S3), every invalid-row case, top-k and quantization."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from laconic_ray import sparse, storage
from laconic_ray.sparse import SparseFormatError
from tests.vectors import collection_vectors


def assert_same(ids_a, a, ids_b, b):
    assert ids_a == ids_b
    assert a.shape == b.shape
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data.astype(np.float32), b.data)  # bit-exact


@pytest.mark.parametrize("where", ["local", "s3"])
def test_scifact_round_trip_is_lossless(where, tmp_path, request):
    ids, csr = collection_vectors("scifact")
    assert len(ids) == 5183 and csr.nnz > 0
    if where == "local":
        uri, options = str(tmp_path / "vecs"), None
    else:
        base, options = request.getfixturevalue("s3_bucket")
        uri = storage.join(base, "vecs")
    manifest = sparse.write_sparse(
        uri,
        ids,
        csr,
        csr.shape[1],
        rows_per_file=2000,
        metadata={"model": "bm25-bert", "weight_format": "float"},
        options=options,
    )
    assert [f.path for f in manifest.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert manifest.total_rows == 5183
    got_ids, got, meta = sparse.read_sparse(uri, options)
    assert_same(ids, csr, got_ids, got)
    assert meta["vocab_size"] == 30522 and meta["model"] == "bm25-bert"
    # each part also carries the metadata in its Parquet schema
    fs, path = storage.filesystem(storage.join(uri, "part-00001.parquet"), options)
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    assert schema.metadata[b"vocab_size"] == b"30522" and schema.metadata[b"weight_format"] == b"float"
    assert schema.field("indices").type.value_type == pa.int32()
    assert schema.field("values").type.value_type == pa.float32()


def test_reader_trusts_only_the_manifest(tmp_path):
    ids, csr = ["a", "b"], sp.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 3.0]], np.float32))
    uri = str(tmp_path / "v")
    sparse.write_sparse(uri, ids, csr, 3)
    # a stray part from a crashed rerun is ignored
    sparse.write_part(
        uri, "part-00099.parquet", ["zzz"], sp.csr_matrix(np.array([[1.0, 0, 0]], np.float32)), 3
    )
    assert sparse.read_sparse(uri)[0] == ["a", "b"]
    storage.remove(storage.join(uri, "manifest.json"))
    with pytest.raises(storage.StorageError, match="has not finished"):
        sparse.read_sparse(uri)


def csr_from(rows, vocab=10):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    idx = np.array([i for r in rows for i, _ in r], np.int32)
    val = np.array([v for r in rows for _, v in r], np.float32)
    return sp.csr_matrix(
        (val, idx, indptr), shape=(len(rows), max(vocab, (idx.max() + 1) if len(idx) else 0))
    )


@pytest.mark.parametrize(
    ("rows", "ids", "pattern"),
    [
        ([[(1, 1.0)], [(3, 1.0), (2, 1.0)]], ["d0", "d1"], r"doc 'd1': indices not strictly ascending"),
        ([[(1, 1.0), (1, 2.0)]], ["d0"], r"doc 'd0': .*duplicate index 1"),
        ([[(1, 1.0)], [(2, 0.0)]], ["d0", "d1"], r"doc 'd1': value 0.0 at index 2 is not finite and > 0"),
        ([[(4, -1.0)]], ["d0"], r"doc 'd0': value -1.0"),
        ([[(4, float("nan"))]], ["d0"], r"doc 'd0': value nan"),
        ([[(1, 1.0)], [(12, 1.0)]], ["d0", "d1"], r"doc 'd1': index 12 outside \[0, 10\)"),
        ([[(1, 1.0)], [(2, 1.0)]], ["d0"], r"1 doc ids for 2 rows \(length mismatch\)"),
        ([[(1, 1.0)], [(2, 1.0)]], ["d0", "d0"], r"doc 'd0' appears twice"),
        ([[(1, 1.0)]], [""], r"doc id '' is not a non-empty string"),
    ],
)
def test_invalid_rows_name_the_doc_and_write_nothing(rows, ids, pattern, tmp_path):
    csr = csr_from(rows)
    uri = str(tmp_path / "bad")
    with pytest.raises(SparseFormatError, match=pattern):
        sparse.write_sparse(uri, ids, csr, 10)
    assert not storage.exists(uri)


def test_invalid_rows_in_a_foreign_file_are_caught_on_read(tmp_path):
    # a Parquet file written by someone else: lengths of indices and values disagree, then unsorted indices
    table = pa.table({"doc_id": ["x", "y"], "indices": [[1, 2], [3]], "values": [[1.0, 2.0], [1.0, 2.0]]})
    with pytest.raises(SparseFormatError, match=r"doc 'y': 1 indices but 2 values"):
        sparse.from_table(table, 10, source="foreign.parquet")
    table = pa.table({"doc_id": ["x"], "indices": [[5, 2]], "values": [[1.0, 2.0]]})
    with pytest.raises(SparseFormatError, match=r"foreign.parquet: doc 'x': indices not strictly ascending"):
        sparse.from_table(table, 10, source="foreign.parquet")
    with pytest.raises(SparseFormatError, match="missing column"):
        sparse.from_table(pa.table({"doc_id": ["x"]}), 10)


def test_corrupt_part_names_the_file(tmp_path):
    uri = str(tmp_path / "v")
    sparse.write_sparse(uri, ["a"], csr_from([[(1, 1.0)]]), 10)
    part = tmp_path / "v" / "part-00000.parquet"
    original = part.read_bytes()
    part.write_bytes(original[:20])
    with pytest.raises(storage.StorageError, match=r"part-00000.parquet: 20 bytes, the manifest says"):
        sparse.read_sparse(uri)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    part.write_bytes(bytes(flipped))
    with pytest.raises(storage.StorageError, match=r"part-00000.parquet: checksum differs"):
        sparse.read_sparse(uri)
    # without a manifest entry to check against, the Parquet reader itself names the file
    part.write_bytes(original[:20])
    with pytest.raises(SparseFormatError, match=r"part-00000.parquet: not a readable Parquet file"):
        sparse.read_part(uri, "part-00000.parquet", 10)


def test_empty_matrix_round_trips(tmp_path):
    uri = str(tmp_path / "e")
    sparse.write_sparse(uri, [], sp.csr_matrix((0, 7), dtype=np.float32), 7)
    ids, csr, _ = sparse.read_sparse(uri)
    assert ids == [] and csr.shape == (0, 7)
    # documents with no weight at all are kept as empty rows
    sparse.write_sparse(uri, ["a", "b"], csr_from([[], [(3, 1.0)]], 7), 7)
    ids, csr, _ = sparse.read_sparse(uri)
    assert ids == ["a", "b"] and np.diff(csr.indptr).tolist() == [0, 1]


def test_top_k_keeps_largest_and_breaks_ties_by_id():
    csr = csr_from([[(0, 0.5), (3, 2.0), (5, 2.0), (7, 1.0)], [(1, 1.0)], []])
    out = sparse.top_k(csr, 2)
    assert out[0].indices.tolist() == [3, 5] and out[0].data.tolist() == [2.0, 2.0]
    assert out[1].indices.tolist() == [1] and out[2].nnz == 0
    rng = np.random.default_rng(0)
    dense = rng.random((50, 200)).astype(np.float32) * (rng.random((50, 200)) < 0.3)
    pruned = sparse.top_k(sp.csr_matrix(dense), 10).toarray()
    for row, full in zip(pruned, dense, strict=True):
        expected = np.sort(full[full > 0])[::-1][:10]
        assert np.array_equal(np.sort(row[row > 0])[::-1], expected)
    with pytest.raises(ValueError):
        sparse.top_k(csr, 0)


def test_quantize_rounds_to_integer_impacts_and_drops_zeros():
    csr = csr_from([[(0, 0.004), (1, 0.006), (2, 1.234), (3, 0.995)]])
    q = sparse.quantize(csr)
    assert q.indices.tolist() == [1, 2, 3] and q.data.tolist() == [1.0, 123.0, 100.0]
    with pytest.raises(ValueError):
        sparse.quantize(csr, 0)
