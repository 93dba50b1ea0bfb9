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
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_manifest(folder, options)
    storage.makedirs(folder, options)
    fs, path = storage.filesystem(storage.join(folder, "a.parquet"), options)
    with fs.open(path, "wb") as f:
        pq.write_table(pa.table({"x": list(range(10))}), f)
    # parts written, no manifest yet (an S3 prefix exists only once it holds an object)
    with pytest.raises(StorageError, match="has not finished"):
        storage.read_manifest(folder, options)
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


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remote_folder(root, options, files: dict[str, bytes]) -> str:
    folder = storage.join(root, "model")
    fs, path = storage.filesystem(folder, options)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    for name, data in files.items():
        storage.write_bytes(storage.join(folder, name), data, options)
    return folder


def test_a_folder_rewritten_in_place_is_fetched_anew(s3_bucket, tmp_path, monkeypatch):
    root, options = s3_bucket
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    # a plain HF folder: no laconic.json, still cached
    folder = _remote_folder(root, options, {"config.json": b"{}", "w.safetensors": b"v1"})
    first = storage.localize(folder, options)
    assert _read(os.path.join(first, "w.safetensors")) == b"v1"
    assert storage.localize(folder, options) == first  # unchanged: the cached copy
    folder = _remote_folder(root, options, {"config.json": b"{}", "w.safetensors": b"v2"})  # same size
    second = storage.localize(folder, options)
    assert second != first and _read(os.path.join(second, "w.safetensors")) == b"v2"
    assert _read(os.path.join(first, "w.safetensors")) == b"v1"  # a reader of v1 is not cut off
    with pytest.raises(StorageError, match="not found"):
        storage.localize(storage.join(root, "nothing-here"), options)


def test_concurrent_localisation_downloads_once(s3_bucket, tmp_path, monkeypatch):
    import threading

    root, options = s3_bucket
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    folder = _remote_folder(root, options, {f"part-{i}.bin": os.urandom(200_000) for i in range(8)})
    fs = storage.filesystem(folder, options)[0]  # s3fs keeps one instance per set of arguments
    downloads, real_get = [], fs.get

    def counting_get(*args, **kwargs):
        downloads.append(args[0])
        return real_get(*args, **kwargs)

    monkeypatch.setattr(fs, "get", counting_get)
    paths, errors = [], []

    def worker():
        try:
            paths.append(storage.localize(folder, options))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]  # e.g. eight GPU workers of one node
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(set(paths)) == 1 and len(downloads) == 1
    assert sorted(os.listdir(paths[0])) == sorted([f"part-{i}.bin" for i in range(8)] + [".laconic-complete"])


def test_a_corrupt_cached_copy_is_evicted(s3_bucket, tmp_path, monkeypatch):
    root, options = s3_bucket
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    folder = _remote_folder(root, options, {"a.bin": b"good"})
    local = storage.localize(folder, options)
    with open(os.path.join(local, "a.bin"), "wb") as f:
        f.write(b"bad!")
    storage.evict(folder, local)
    again = storage.localize(folder, options)
    assert _read(os.path.join(again, "a.bin")) == b"good"
