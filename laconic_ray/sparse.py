"""The sparse-matrix contract between stages: Parquet rows of (doc_id, indices, values), plus helpers.

One row per document (or query)::

    doc_id:  string
    indices: list<int32>    vocabulary ids, strictly ascending within the row
    values:  list<float32>  weights, every one finite and > 0

Parquet schema metadata carries ``vocab_size``, ``model`` and ``weight_format`` (``float`` for the encoder's
``log(1 + ReLU(.))`` weights, ``impact`` for Lucene-style integer impacts ``round(scale * w)``, scale in
``impact_scale``). A folder of such files is complete only when its ``manifest.json`` exists (see storage.py).

In memory a matrix is a ``scipy.sparse.csr_matrix`` [n_docs, vocab_size] plus a list of doc ids. Conversion
is zero-copy in spirit: CSR ``indptr``/``indices``/``data`` map one-to-one onto Arrow list offsets and values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from laconic_ray import storage
from laconic_ray.storage import FileEntry, Manifest, StorageOptions

SPARSE_KIND = "sparse"
WEIGHT_FORMATS = ("float", "impact")
DEFAULT_IMPACT_SCALE = 100
PART_TEMPLATE = "part-{:05d}.parquet"


class SparseFormatError(ValueError):
    """A row or file breaks the sparse contract; the message names the file and/or doc id."""


def sparse_schema(metadata: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of the contract, with ``metadata`` (values stringified) attached."""
    fields = [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("indices", pa.list_(pa.int32()), nullable=False),
        pa.field("values", pa.list_(pa.float32()), nullable=False),
    ]
    return pa.schema(fields, metadata={str(k): str(v) for k, v in metadata.items()})


def _base_metadata(vocab_size: int, metadata: dict[str, Any] | None) -> dict[str, Any]:
    meta = {"model": "", "weight_format": "float"}
    meta.update(metadata or {})
    meta["vocab_size"] = int(vocab_size)
    if meta["weight_format"] not in WEIGHT_FORMATS:
        raise SparseFormatError(
            f"weight_format must be one of {WEIGHT_FORMATS}, got {meta['weight_format']!r}"
        )
    return meta


def validate_rows(
    doc_ids: Sequence[str],
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    vocab_size: int,
    *,
    source: str = "",
) -> None:
    """Check every row against the contract (vectorised); raise naming the first bad doc id.

    Checks: one id per row, ids non-empty and unique, indices in [0, vocab_size) and strictly ascending within
    each row, values finite and > 0, as many values as indices.
    """
    where = f"{source}: " if source else ""
    n = len(indptr) - 1
    if len(doc_ids) != n:
        raise SparseFormatError(f"{where}{len(doc_ids)} doc ids for {n} rows (length mismatch)")
    if len(indices) != len(values) or (n >= 0 and indptr[-1] != len(indices)):
        raise SparseFormatError(f"{where}{len(indices)} indices but {len(values)} values (length mismatch)")

    def row_of(position: int) -> str:
        row = int(np.searchsorted(indptr, position, side="right") - 1)
        return doc_ids[row]

    bad = np.flatnonzero((indices < 0) | (indices >= vocab_size))
    if bad.size:
        p = bad[0]
        raise SparseFormatError(
            f"{where}doc {row_of(p)!r}: index {int(indices[p])} outside [0, {vocab_size})"
        )
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
        p = bad[0]
        raise SparseFormatError(
            f"{where}doc {row_of(p)!r}: value {float(values[p])} at index "
            f"{int(indices[p])} is not finite and > 0"
        )
    if len(indices) > 1:
        not_ascending = np.diff(indices.astype(np.int64)) <= 0
        # A drop between the last entry of one row and the first of the next is fine.
        starts = indptr[1:-1]
        starts = starts[(starts > 0) & (starts < len(indices))]
        not_ascending[starts - 1] = False
        bad = np.flatnonzero(not_ascending)
        if bad.size:
            p = bad[0] + 1
            raise SparseFormatError(
                f"{where}doc {row_of(p)!r}: indices not strictly ascending (unsorted or "
                f"duplicate index {int(indices[p])})"
            )
    seen: set[str] = set()
    for doc_id in doc_ids:
        if not isinstance(doc_id, str) or not doc_id:
            raise SparseFormatError(f"{where}doc id {doc_id!r} is not a non-empty string")
        if doc_id in seen:
            raise SparseFormatError(f"{where}doc {doc_id!r} appears twice")
        seen.add(doc_id)


def to_table(
    doc_ids: Sequence[str],
    csr: sp.csr_matrix,
    vocab_size: int,
    metadata: dict[str, Any] | None = None,
    *,
    validate: bool = True,
) -> pa.Table:
    """CSR + ids -> Arrow table of the contract (validated unless told otherwise)."""
    csr = sp.csr_matrix(csr)
    indptr = csr.indptr.astype(np.int32, copy=False)
    indices = csr.indices.astype(np.int32, copy=False)
    values = csr.data.astype(np.float32, copy=False)
    if validate:
        validate_rows(doc_ids, indptr, indices, values, vocab_size)
    meta = _base_metadata(vocab_size, metadata)
    arrays = [
        pa.array(list(doc_ids), type=pa.string()),
        pa.ListArray.from_arrays(pa.array(indptr), pa.array(indices)),
        pa.ListArray.from_arrays(pa.array(indptr), pa.array(values)),
    ]
    return pa.Table.from_arrays(arrays, schema=sparse_schema(meta))


def _flatten_list(column: pa.ChunkedArray, value_type: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    flat = pc.list_flatten(column)
    flat = flat.cast(value_type) if flat.type != value_type else flat
    return indptr, flat.to_numpy()


def from_table(
    table: pa.Table, vocab_size: int | None = None, *, source: str = "", validate: bool = True
) -> tuple[list[str], sp.csr_matrix, dict[str, str]]:
    """Arrow table of the contract -> (doc ids, CSR, schema metadata)."""
    where = source or "table"
    missing = {"doc_id", "indices", "values"} - set(table.column_names)
    if missing:
        raise SparseFormatError(f"{where}: missing column(s) {sorted(missing)}")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if vocab_size is None:
        if "vocab_size" not in meta:
            raise SparseFormatError(f"{where}: no vocab_size in the schema metadata")
        vocab_size = int(meta["vocab_size"])
    if table.column("doc_id").null_count:
        raise SparseFormatError(f"{where}: null doc_id")
    doc_ids = table.column("doc_id").to_pylist()
    indptr, indices = _flatten_list(table.column("indices"), pa.int32())
    vptr, values = _flatten_list(table.column("values"), pa.float32())
    if not np.array_equal(indptr, vptr):
        row = int(np.flatnonzero(np.diff(indptr) != np.diff(vptr))[0])
        raise SparseFormatError(
            f"{where}: doc {doc_ids[row]!r}: {indptr[row + 1] - indptr[row]} indices but "
            f"{vptr[row + 1] - vptr[row]} values (length mismatch)"
        )
    if validate:
        validate_rows(doc_ids, indptr, indices, values, vocab_size, source=where)
    csr = sp.csr_matrix((values, indices, indptr), shape=(len(doc_ids), vocab_size))
    return doc_ids, csr, meta


def write_part(
    folder_uri: str,
    name: str,
    doc_ids: Sequence[str],
    csr: sp.csr_matrix,
    vocab_size: int,
    metadata: dict[str, Any] | None = None,
    options: StorageOptions | None = None,
    **extra: Any,
) -> FileEntry:
    """Write one Parquet part atomically under ``folder_uri``; return its manifest entry.

    Pipelines (Ray Data encode) call this per shard and write the manifest themselves once all parts exist.
    """
    table = to_table(doc_ids, csr, vocab_size, metadata)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    return storage.write_file(
        folder_uri, name, buffer.getvalue().to_pybytes(), table.num_rows, options, **extra
    )


def write_sparse(
    uri: str,
    doc_ids: Sequence[str],
    csr: sp.csr_matrix,
    vocab_size: int,
    *,
    rows_per_file: int = 100_000,
    metadata: dict[str, Any] | None = None,
    options: StorageOptions | None = None,
) -> Manifest:
    """Write a whole matrix as ``part-NNNNN.parquet`` files under ``uri``, then ``manifest.json`` last.

    Every row is validated before anything is written, so an invalid matrix leaves storage untouched.
    """
    if rows_per_file <= 0:
        raise ValueError(f"rows_per_file must be > 0, got {rows_per_file}")
    csr = sp.csr_matrix(csr)
    meta = _base_metadata(vocab_size, metadata)
    validate_rows(doc_ids, csr.indptr, csr.indices, csr.data, vocab_size)
    storage.makedirs(uri, options)
    n = csr.shape[0]
    entries = []
    for part, start in enumerate(range(0, max(n, 1), rows_per_file)):
        stop = min(start + rows_per_file, n)
        entries.append(
            write_part(
                uri,
                PART_TEMPLATE.format(part),
                doc_ids[start:stop],
                csr[start:stop],
                vocab_size,
                meta,
                options,
            )
        )
    manifest = Manifest(kind=SPARSE_KIND, files=entries, metadata=meta)
    storage.write_manifest(uri, manifest, options)
    return manifest


def read_part(
    folder_uri: str,
    entry: FileEntry | str,
    vocab_size: int | None = None,
    options: StorageOptions | None = None,
) -> tuple[list[str], sp.csr_matrix, dict[str, str]]:
    """Read and validate one part file (against its manifest entry's size and checksum when given one)."""
    name = entry.path if isinstance(entry, FileEntry) else entry
    uri = storage.join(folder_uri, name)
    data = storage.read_bytes(uri, options)  # one GET on object storage instead of many ranged reads
    if isinstance(entry, FileEntry):
        storage.check_bytes(uri, data, entry)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise SparseFormatError(f"{uri}: not a readable Parquet file ({e})") from None
    return from_table(table, vocab_size, source=uri)


def iter_sparse(
    uri: str, options: StorageOptions | None = None
) -> Iterator[tuple[list[str], sp.csr_matrix, dict[str, str]]]:
    """Stream a finished sparse folder part by part (bounded memory for corpora of any size)."""
    manifest = storage.read_manifest(uri, options, kind=SPARSE_KIND)
    vocab_size = int(manifest.metadata["vocab_size"])
    for entry in manifest.files:
        yield read_part(uri, entry, vocab_size, options)


def read_sparse(
    uri: str, options: StorageOptions | None = None
) -> tuple[list[str], sp.csr_matrix, dict[str, Any]]:
    """Read a finished sparse folder (only the files its manifest lists) into ``(doc_ids, csr, metadata)``."""
    manifest = storage.read_manifest(uri, options, kind=SPARSE_KIND)
    vocab_size = int(manifest.metadata["vocab_size"])
    ids: list[str] = []
    blocks = []
    for part_ids, csr, _ in iter_sparse(uri, options):
        ids.extend(part_ids)
        blocks.append(csr)
    csr = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, vocab_size), dtype=np.float32)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise SparseFormatError(f"{uri}: doc {dup!r} appears in more than one part")
    return ids, csr, dict(manifest.metadata)


def top_k(csr: sp.csr_matrix, k: int | None) -> sp.csr_matrix:
    """Keep the ``k`` largest weights of every row (ties: the lower vocabulary id wins); indices stay sorted."""
    csr = sp.csr_matrix(csr, copy=True)
    csr.eliminate_zeros()
    if k is None:
        csr.sort_indices()
        return csr
    if k <= 0:
        raise ValueError(f"top_k must be > 0 or None, got {k}")
    lengths = np.diff(csr.indptr)
    if lengths.size == 0 or lengths.max() <= k:
        csr.sort_indices()
        return csr
    rows = np.repeat(np.arange(csr.shape[0]), lengths)
    order = np.lexsort((csr.indices, -csr.data, rows))
    rank = np.arange(len(order)) - csr.indptr[rows[order]]
    keep = np.sort(order[rank < k])  # back in CSR order: by row, then original position
    out = sp.csr_matrix(
        (csr.data[keep], csr.indices[keep], np.concatenate([[0], np.cumsum(np.minimum(lengths, k))])),
        shape=csr.shape,
    )
    out.sort_indices()
    return out


def quantize(csr: sp.csr_matrix, scale: float = DEFAULT_IMPACT_SCALE) -> sp.csr_matrix:
    """Lucene-style integer impacts: ``round(scale * w)`` stored as float32, zeros dropped.

    Rounding is half-to-even (numpy's), applied to float32 ``scale * w``; exports to Anserini use the same
    function so that every engine sees identical integers.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"quantization scale must be finite and > 0, got {scale}")
    out = sp.csr_matrix(csr, dtype=np.float32, copy=True)
    out.data = np.rint(out.data * np.float32(scale)).astype(np.float32)
    out.eliminate_zeros()
    return out
