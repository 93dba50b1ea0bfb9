"""storage: URI resolution, atomic writes, manifests that a reader can trust; local and S3 (moto server)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laconic_ray import storage
from laconic_ray.storage import FileEntry, Manifest, StorageError


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path), None
    return request.getfixturevalue("s3_bucket")


def test_uri_resolution(tmp_path):
    fs, path = storage.filesystem(f"file://{tmp_path}/x")
    assert path == f"{tmp_path}/x" and fs.protocol[0] == "file"
    assert storage.filesystem("relative/dir")[1] == os.path.abspath("relative/dir")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.filesystem("gopher://x/y")
    assert storage.join("s3://b/p", "a", "m.json") == "s3://b/p/a/m.json"


def test_atomic_write_leaves_old_file_when_body_fails(base):
    root, options = base
    uri = storage.join(root, "sub", "f.bin")
    storage.makedirs(storage.join(root, "sub"), options)
    storage.write_bytes(uri, b"old", options)
    with pytest.raises(RuntimeError), storage.open_atomic(uri, "wb", options) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert storage.read_bytes(uri, options) == b"old"
    if options is None:  # no temp files left behind on local disk
        assert sorted(os.listdir(os.path.dirname(uri))) == ["f.bin"]


def test_manifest_round_trip_and_verification(base):
    root, options = base
    folder = storage.join(root, "ds")
    storage.makedirs(folder, options)
    with pytest.raises(StorageError, match="has not finished"):
        storage.read_manifest(folder, options)
    fs, path = storage.filesystem(storage.join(folder, "a.parquet"), options)
    with fs.open(path, "wb") as f:
        pq.write_table(pa.table({"x": list(range(10))}), f)
    entry = storage.describe_file(folder, "a.parquet", 10, options)
    storage.write_manifest(folder, Manifest(kind="test", files=[entry], metadata={"k": 1}), options)
    m = storage.read_manifest(folder, options, kind="test", verify=True)
    assert m.total_rows == 10 and m.files[0] == entry and m.metadata == {"k": 1}
    with pytest.raises(StorageError, match="expected 'sparse'"):
        storage.read_manifest(folder, options, kind="sparse")
    # truncation and replacement are caught by size / checksum
    storage.write_bytes(storage.join(folder, "a.parquet"), b"PAR1", options)
    with pytest.raises(StorageError, match=r"a.parquet: 4 bytes, the manifest says"):
        storage.read_manifest(folder, options, verify=True)
    same_size = bytearray(b"x" * entry.bytes)
    storage.write_bytes(storage.join(folder, "a.parquet"), bytes(same_size), options)
    with pytest.raises(StorageError, match="checksum differs"):
        storage.verify_files(folder, [entry], options)
    storage.remove(storage.join(folder, "a.parquet"), options)
    with pytest.raises(StorageError, match="missing"):
        storage.verify_files(folder, [entry], options)


def test_corrupt_manifest_is_named(base):
    root, options = base
    storage.write_bytes(storage.join(root, "manifest.json"), b"{not json", options)
    with pytest.raises(StorageError, match=r"manifest\.json: not a valid laconic_ray manifest"):
        storage.read_manifest(root, options)


def test_pyarrow_filesystem_reads_what_s3fs_wrote(s3_bucket):
    root, options = s3_bucket
    storage.write_bytes(storage.join(root, "hello.txt"), b"hi", options)
    pafs, path = storage.pyarrow_filesystem(storage.join(root, "hello.txt"), options)
    with pafs.open_input_stream(path) as f:
        assert f.read() == b"hi"


def test_manifest_entry_types():
    m = Manifest(kind="k", files=[FileEntry("a", 1, 2, "h", {"shard": 3})])
    assert Manifest.from_json(m.to_json()) == m
