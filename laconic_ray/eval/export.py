"""``laconic export``: sparse vectors in the input formats of the field's reference engines.

* ``anserini``: a ``JsonVectorCollection`` (one JSON per line, ``{"id", "contents": "", "vector": {term:
  int}}``) with Lucene-style integer impacts ``round(scale * w)`` (scale 100 by default), terms pretokenized
  as vocabulary ids (``"1234"``), split into ``files`` parts because Anserini indexes one file per thread.
  Index it with ``IndexCollection -collection JsonVectorCollection -impact -pretokenized``.
* ``seismic``: Seismic's JSON lines ``{"id", "content": "", "vector": {term: float}}`` (float weights).

Quantization uses ``sparse.quantize`` (half-to-even rounding of float32 ``scale * w``) so that every engine
fed from these files sees exactly the integers our own index sees with ``scale=1``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import scipy.sparse as sp

from laconic_ray import sparse, storage
from laconic_ray.config import ExportConfig
from laconic_ray.storage import StorageOptions

FORMATS = ("anserini", "seismic")


def vector_lines(doc_ids: list[str], csr: sp.csr_matrix, *, integer: bool, content_key: str) -> list[str]:
    lines = []
    for i, doc_id in enumerate(doc_ids):
        row = slice(csr.indptr[i], csr.indptr[i + 1])
        values = csr.data[row]
        vector = {
            str(t): (int(v) if integer else float(v))
            for t, v in zip(csr.indices[row].tolist(), values.tolist(), strict=True)
        }
        lines.append(json.dumps({"id": doc_id, content_key: "", "vector": vector}) + "\n")
    return lines


def export_vectors(
    input_uri: str,
    output: str,
    fmt: str,
    *,
    scale: float = 100.0,
    files: int = 1,
    options: StorageOptions | None = None,
) -> dict[str, Any]:
    """Write every vector of a finished sparse folder in ``fmt``; returns counts and the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    manifest = storage.read_manifest(input_uri, options, kind=sparse.SPARSE_KIND)
    already_integer = manifest.metadata.get("weight_format") == "impact"
    written: list[list[str]] = [[] for _ in range(max(1, files))]
    count = nnz = 0
    for ids, csr, _ in sparse.iter_sparse(input_uri, options):
        if fmt == "anserini" and not already_integer:
            csr = sparse.quantize(csr, scale)
        lines = vector_lines(
            ids, csr, integer=fmt == "anserini", content_key="contents" if fmt == "anserini" else "content"
        )
        for line in lines:
            written[count % len(written)].append(line)
            count += 1
        nnz += csr.nnz
    names = []
    for part, lines in enumerate(written):
        name = (
            f"part-{part:05d}.jsonl"
            if fmt == "anserini"
            else ("documents.jsonl" if len(written) == 1 else f"documents-{part:05d}.jsonl")
        )
        storage.write_bytes(storage.join(output, name), "".join(lines).encode(), options)
        names.append(name)
    return {
        "format": fmt,
        "output": output,
        "vectors": count,
        "mean_nnz": round(nnz / max(count, 1), 2),
        "files": names,
        "impact_scale": None if fmt == "seismic" else (1 if already_integer else scale),
    }


def integer_queries(csr: sp.csr_matrix, scale: float = 100.0) -> sp.csr_matrix:
    """Query vectors as Lucene-style integer weights (the same rounding as the documents)."""
    out = sparse.quantize(csr, scale)
    out.data = out.data.astype(np.float32)
    return out


def run_export(config: ExportConfig) -> dict[str, Any]:
    """CLI runner of ``laconic export``."""
    files = config.files if config.format == "anserini" else 1
    return export_vectors(
        config.input,
        config.output,
        config.format,
        scale=config.impact_scale,
        files=files,
        options=config.storage.options(),
    )
