"""A partitioned index on storage: which documents go to which shard, and the top-level manifest.

Layout::

    <index>/shard-00000/     one InvertedIndex folder per shard (layout.py), loadable on its own
    <index>/shard-00001/
    <index>/manifest.json    written last: shard folders, doc counts, vocab size, quantization, scale

Partitioning: ``range`` gives shard ``s`` the documents ``[s * N / S, (s + 1) * N / S)`` in the order of the
sparse input (cheap: each builder reads only its slice); ``hash`` places a document by a stable hash of its
id (blake2b, not Python's salted ``hash``), so that any document's shard is known without a lookup table.

Every shard is built with one global quantization scale (the input's largest weight), so that scores are
comparable across shards and a merged top-k equals an unpartitioned index's.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from laconic_ray import sparse, storage
from laconic_ray.storage import FileEntry, Manifest, StorageOptions

log = logging.getLogger(__name__)

INDEX_KIND = "index"
PARTITIONS = ("range", "hash")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def hash_shard(doc_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """The shard of each doc id under hash partitioning (stable across processes and runs)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little") % num_shards
            for d in doc_ids
        ),
        dtype=np.int64,
        count=len(doc_ids),
    )


def range_bounds(total: int, num_shards: int) -> list[tuple[int, int]]:
    """Global row ranges of the shards under range partitioning (sizes differ by at most one)."""
    edges = [total * s // num_shards for s in range(num_shards + 1)]
    return list(itertools.pairwise(edges))


def part_slices(row_counts: Sequence[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """``(part, start, stop)`` row slices of the parts that together hold global rows ``[lo, hi)``."""
    out, offset = [], 0
    for part, rows in enumerate(row_counts):
        start, stop = max(lo, offset), min(hi, offset + rows)
        if start < stop:
            out.append((part, start - offset, stop - offset))
        offset += rows
    return out


def max_weight(uri: str, entry: FileEntry, options: StorageOptions | None) -> float:
    _, csr, _ = sparse.read_part(uri, entry, options=options)
    return float(csr.data.max()) if csr.nnz else 0.0


def global_scale(weights_max: float, quantization: str, weight_format: str) -> float | None:
    """The one scale every shard uses: integer impacts are kept exactly; floats map their maximum to the top
    of the integer range. ``float32`` shards take none."""
    if quantization == "float32":
        return None
    if weight_format == "impact":
        return 1.0
    top = {"uint8": 255, "uint16": 65535}[quantization]
    return weights_max / top if weights_max > 0 else 1.0


def write_index_manifest(
    uri: str, shards: list[dict[str, Any]], metadata: dict[str, Any], options: StorageOptions | None
) -> Manifest:
    files = [
        FileEntry(
            path=s["path"],
            rows=s["docs"],
            bytes=s["bytes"],
            sha256=s["sha256"],
            extra={"postings": s["postings"]},
        )
        for s in shards
    ]
    manifest = Manifest(
        kind=INDEX_KIND,
        files=files,
        metadata={**metadata, "num_shards": len(files), "docs": sum(f.rows for f in files)},
    )
    storage.write_manifest(uri, manifest, options)
    return manifest


def read_index_manifest(uri: str, options: StorageOptions | None = None) -> Manifest:
    return storage.read_manifest(uri, options, kind=INDEX_KIND)


def manifest_digest(manifest: Manifest) -> str:
    """The identity of one build of an index (its manifest, which lists every shard's checksum)."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()


def stage_part(
    input_uri: str, entry: FileEntry, part: int, num_shards: int, staging: str, options: StorageOptions | None
) -> list[int]:
    """Hash partitioning, map side: split one input part into per-shard bucket files; returns rows per shard."""
    ids, csr, meta = sparse.read_part(input_uri, entry, options=options)
    owners = hash_shard(ids, num_shards)
    counts = []
    for shard in range(num_shards):
        rows = np.flatnonzero(owners == shard)
        counts.append(len(rows))
        if len(rows):
            sparse.write_part(
                storage.join(staging, shard_name(shard)),
                f"part-{part:05d}.parquet",
                [ids[i] for i in rows],
                csr[rows],
                int(meta["vocab_size"]),
                meta,
                options,
            )
    return counts


def build_shard(
    output: str,
    shard: int,
    sources: list[tuple[str, dict[str, Any], int, int | None]],
    *,
    vocab_size: int,
    quantization: str,
    scale: float | None,
    block_size: int,
    reorder: str,
    metadata: dict[str, Any],
    options: StorageOptions | None,
) -> dict[str, Any]:
    """Build and save one shard from ``(folder, file entry, start, stop)`` slices of sparse parts."""
    import json

    import scipy.sparse as sp

    from laconic_ray.index.inverted import InvertedIndex
    from laconic_ray.index.layout import SHARD_FILE

    ids: list[str] = []
    blocks = []
    for folder, entry, start, stop in sources:
        part_ids, csr, _ = sparse.read_part(folder, FileEntry(**entry), vocab_size, options)
        ids.extend(part_ids[start:stop])
        blocks.append(csr[start:stop])
    csr = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, vocab_size), dtype=np.float32)
    index = InvertedIndex.build(
        csr,
        ids,
        quantization=quantization,
        scale=scale,
        block_size=block_size,
        reorder=reorder,
        vocab_size=vocab_size,
        metadata=metadata,
    )
    path = storage.join(output, shard_name(shard))
    index.save(path, options)
    description = storage.read_bytes(storage.join(path, SHARD_FILE), options)
    files = json.loads(description)["files"]
    return {
        "shard": shard,
        "path": shard_name(shard),
        "docs": index.n_docs,
        "postings": index.meta.n_postings,
        "bytes": sum(f["bytes"] for f in files.values()) + len(description),
        "sha256": hashlib.sha256(description).hexdigest(),
    }


class ModelMismatchError(ValueError):
    """The query model is not the one the index's documents were encoded with."""


def check_query_model(metadata: dict[str, Any], encoder: Any, index: str, *, strict: bool = True) -> None:
    """Refuse a query encoder that does not fit the index: another vocabulary size always; another model
    (``model_id``, the sha256 of its weights, recorded by encode) unless ``strict=False``. Queries and
    documents from different models score as noise, silently, so this is checked before anything runs."""
    vocab = int(metadata.get("vocab_size", encoder.vocab_size))
    if encoder.vocab_size != vocab:
        raise ModelMismatchError(
            f"{index}: the index has a vocabulary of {vocab} ids, the query model {encoder.vocab_size}; "
            "encode queries with the model that encoded the documents"
        )
    indexed, query = metadata.get("model_id"), getattr(encoder, "model_id", None)
    if indexed and query and indexed != query:
        message = (
            f"{index}: documents were encoded by {metadata.get('model') or 'a model'} ({indexed[:19]}...), "
            f"the query model is another ({query[:19]}...); use the same checkpoint"
        )
        if strict:
            raise ModelMismatchError(message + " (check_model=false searches anyway)")
        log.warning(message)
