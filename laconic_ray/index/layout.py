"""The on-disk form of one index shard: a folder of ``.npy`` arrays plus ``shard.json`` (written last).

Every array is memory-mappable (``np.load(mmap_mode="r")``), so loading a shard costs page-table setup, not a
copy, and several processes on a node share one page cache. ``shard.json`` records each file's dtype, shape,
size and sha256; loading checks sizes always, checksums when asked, and the structural invariants the search
kernels rely on (numba does not bounds-check, so a corrupt offset must be caught here, not by a segfault).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any

import numpy as np

from laconic_ray import storage
from laconic_ray.storage import StorageOptions

SHARD_FILE = "shard.json"
FORMAT = "laconic-ray-index"
FORMAT_VERSION = 2  # 2: doc_rank (documents reordered by bisection)

# name -> what it holds (all arrays are 1-D)
ARRAYS = {
    "term_ptr": "int64 [vocab + 1]: range of a term's block entries",
    "entry_block": "uint16|uint32 [entries]: block id of each (term, block) entry, ascending within a term",
    "entry_max": "impact dtype [entries]: max impact of the term within the block (the block-max bound)",
    "entry_post": "uint32|int64 [entries + 1]: start of the entry's postings; the next entry's start ends it "
    "(equal for the empty entries of dense terms, which have one entry per block)",
    "post_doc": "uint8 [postings or 0]: document offset within its block (block_size <= 256); empty if packed",
    "post_imp": "uint16|uint32 [postings]: impact << 8 | offset (integer impacts), or float32 impacts",
    "doc_len": "int32 [docs]: non-zero weights per document, in rank (doc-id) order",
    "doc_rank": "uint32 [docs or 0]: rank in doc-id order of each internal document; empty = identity",
    "id_bytes": "uint8 [...]: UTF-8 doc ids, concatenated in internal order",
    "id_offsets": "int64 [docs + 1]: doc id i is id_bytes[id_offsets[i]:id_offsets[i + 1]]",
}


class IndexFormatError(RuntimeError):
    """A shard folder is missing, truncated, corrupt or inconsistent; the message names the file."""

    def __init__(self, message: str, folder: str | None = None) -> None:
        super().__init__(message)
        self.folder = folder  # the local folder that failed (a cached copy of a remote shard, to evict)


@dataclasses.dataclass
class ShardMeta:
    n_docs: int
    vocab_size: int
    block_size: int
    quantization: str  # uint8 | uint16 | float32
    scale: float  # score = scale * sum(q_w * impact)
    n_postings: int
    n_entries: int
    reorder: str = "none"  # how internal numbers were assigned (bp | none)
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = FORMAT
    version: int = FORMAT_VERSION


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_shard(
    uri: str, arrays: dict[str, np.ndarray], meta: ShardMeta, options: StorageOptions | None = None
) -> None:
    """Write every array then ``shard.json``; a crash before the last write leaves no loadable shard."""
    storage.makedirs(uri, options)
    storage.remove(
        storage.join(uri, SHARD_FILE), options
    )  # an older complete shard must not survive half-replaced
    files = {}
    for name in ARRAYS:
        data = _npy_bytes(arrays[name])
        storage.write_bytes(storage.join(uri, f"{name}.npy"), data, options)
        files[name] = {
            "dtype": str(arrays[name].dtype),
            "shape": list(arrays[name].shape),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    meta.files = files
    storage.write_bytes(
        storage.join(uri, SHARD_FILE), json.dumps(dataclasses.asdict(meta), indent=1).encode(), options
    )


def read_meta(uri: str, options: StorageOptions | None = None) -> ShardMeta:
    path = storage.join(uri, SHARD_FILE)
    if not storage.exists(path, options):
        raise IndexFormatError(f"{uri}: no {SHARD_FILE}; not an index shard, or its build never finished")
    try:
        raw = json.loads(storage.read_bytes(path, options))
        meta = ShardMeta(**raw)
    except (ValueError, TypeError) as e:
        raise IndexFormatError(f"{path}: not a valid shard description ({e})") from None
    if meta.format != FORMAT or meta.version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format {meta.format} v{meta.version}, this build reads {FORMAT} v{FORMAT_VERSION}"
        )
    return meta


def load_shard(
    uri: str,
    *,
    mmap: bool = True,
    verify: bool = True,
    options: StorageOptions | None = None,
    expect_sha256: str | None = None,
) -> tuple[dict[str, np.ndarray], ShardMeta]:
    """Load a shard folder (``s3://`` folders are first cached locally); check it; return arrays and meta.

    ``expect_sha256`` is the index manifest's checksum of this shard's ``shard.json``: a shard rebuilt since
    the manifest was written (or a manifest of another build) is refused instead of searched. A cached copy
    that fails a check is dropped and fetched once more before the error is raised.
    """
    try:
        return _load_local(storage.localize(uri, options), mmap, verify, expect_sha256)
    except IndexFormatError as first:
        if not storage.is_remote(uri):
            raise
        storage.evict(uri, str(first.folder))
        try:
            return _load_local(storage.localize(uri, options), mmap, verify, expect_sha256)
        except IndexFormatError as e:
            raise IndexFormatError(f"{uri}: {e}", e.folder) from None


def _load_local(
    local: str, mmap: bool, verify: bool, expect_sha256: str | None
) -> tuple[dict[str, np.ndarray], ShardMeta]:
    try:
        return _load_folder(local, mmap, verify, expect_sha256)
    except IndexFormatError as e:
        e.folder = local
        raise


def _load_folder(
    local: str, mmap: bool, verify: bool, expect_sha256: str | None
) -> tuple[dict[str, np.ndarray], ShardMeta]:
    if expect_sha256 is not None:
        description = os.path.join(local, SHARD_FILE)
        if os.path.exists(description) and storage.sha256_of(description) != expect_sha256:
            raise IndexFormatError(
                f"{description}: not the shard the index manifest lists (its checksum differs): the shard "
                "was rebuilt after the manifest was written, or the manifest belongs to another build"
            )
    meta = read_meta(local)
    arrays = {}
    for name in ARRAYS:
        path = os.path.join(local, f"{name}.npy")
        info = meta.files.get(name)
        if info is None:
            raise IndexFormatError(f"{local}/{SHARD_FILE}: no entry for {name}.npy")
        if not os.path.exists(path):
            raise IndexFormatError(f"{path}: missing")
        size = os.path.getsize(path)
        if size != info["bytes"]:
            raise IndexFormatError(
                f"{path}: {size} bytes, {SHARD_FILE} says {info['bytes']} (truncated or replaced)"
            )
        if verify and storage.sha256_of(path) != info["sha256"]:
            raise IndexFormatError(f"{path}: checksum differs from {SHARD_FILE} (corrupt)")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as e:
            raise IndexFormatError(f"{path}: not a readable .npy array ({e})") from None
        if str(array.dtype) != info["dtype"] or list(array.shape) != info["shape"]:
            raise IndexFormatError(
                f"{path}: {array.dtype}{list(array.shape)}, expected {info['dtype']}{info['shape']}"
            )
        arrays[name] = array
    check_structure(arrays, meta, local)
    return arrays, meta


def check_structure(arrays: dict[str, np.ndarray], meta: ShardMeta, where: str) -> None:
    """The invariants the kernels index by; O(size) vectorised passes, run on every load."""

    def fail(name: str, what: str) -> None:
        raise IndexFormatError(f"{where}/{name}.npy: {what}")

    n_blocks = -(-meta.n_docs // meta.block_size)
    term_ptr, entry_post = arrays["term_ptr"], arrays["entry_post"]
    if len(term_ptr) != meta.vocab_size + 1 or term_ptr[0] != 0 or term_ptr[-1] != meta.n_entries:
        fail("term_ptr", "length or end points disagree with the shard description")
    if np.any(np.diff(term_ptr) < 0):
        fail("term_ptr", "not non-decreasing")
    if len(arrays["entry_block"]) != meta.n_entries or len(arrays["entry_max"]) != meta.n_entries:
        fail("entry_block", "entry arrays disagree in length")
    if meta.n_entries and int(arrays["entry_block"].max()) >= n_blocks:
        fail("entry_block", f"block id >= {n_blocks} blocks")
    if len(entry_post) != meta.n_entries + 1 or entry_post[0] != 0 or entry_post[-1] != meta.n_postings:
        fail("entry_post", "length or end points disagree with the shard description")
    if np.any(np.diff(entry_post.astype(np.int64)) < 0):
        fail("entry_post", "entry posting ranges must not decrease")
    packed = len(arrays["post_doc"]) == 0
    if len(arrays["post_imp"]) != meta.n_postings or not (
        packed or len(arrays["post_doc"]) == meta.n_postings
    ):
        fail("post_imp", "posting arrays disagree in length")
    if packed and arrays["post_imp"].dtype.kind != "u":
        fail("post_imp", "packed postings must be unsigned integers")
    if meta.n_postings:
        offsets = arrays["post_imp"] & 0xFF if packed else arrays["post_doc"]
        if int(offsets.max()) >= meta.block_size:
            fail("post_doc", f"offset >= block size {meta.block_size}")
    offsets = arrays["id_offsets"]
    if len(offsets) != meta.n_docs + 1 or offsets[0] != 0 or offsets[-1] != len(arrays["id_bytes"]):
        fail("id_offsets", "does not cover id_bytes")
    if len(arrays["doc_len"]) != meta.n_docs:
        fail("doc_len", f"length {len(arrays['doc_len'])}, expected {meta.n_docs}")
    rank = arrays["doc_rank"]
    if len(rank) and (len(rank) != meta.n_docs or np.any(np.bincount(rank, minlength=meta.n_docs) != 1)):
        fail("doc_rank", f"not a permutation of {meta.n_docs} documents")
