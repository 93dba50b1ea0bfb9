"""``laconic export``: sparse vectors in the input formats of the field's reference engines.

* ``anserini``: a ``JsonVectorCollection`` (one JSON per line, ``{"id", "contents": "", "vector": {term:
  int}}``) with Lucene-style integer impacts ``round(scale * w)`` (scale 100 by default), terms pretokenized
  as vocabulary ids (``"1234"``), split into ``files`` parts because Anserini indexes one file per thread.
  Index it with ``IndexCollection -collection JsonVectorCollection -impact -pretokenized``.
* ``seismic``: Seismic's JSON lines ``{"id", "content": "", "vector": {term: float}}`` (float weights).
* ``terms=tokens``: terms are the tokenizer's strings (``"##ing"``, ``"Ġrainbow"``) as the reference
  implementations write them, not ids; the tokenizer is the vectors' model unless ``tokenizer=`` names one.
* Query vectors (encoded with ``kind=query``) also give ``topics.tsv`` for Anserini's ``SearchCollection
  -impact -pretokenized``: ``qid<TAB>terms``, each term repeated its integer weight times.
* ``format=parquet`` goes the other way: a folder of JsonVectorCollection / Seismic JSON lines (ids or token
  strings as terms) becomes our sparse Parquet.

Quantization uses ``sparse.quantize`` (half-to-even rounding of float32 ``scale * w``) so that every engine
fed from these files sees exactly the integers our own index sees with ``scale=1``.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import scipy.sparse as sp

from laconic_ray import sparse, storage
from laconic_ray.config import ExportConfig
from laconic_ray.storage import StorageOptions

FORMATS = ("anserini", "seismic", "parquet")
TERMS = ("ids", "tokens")


def vocabulary_terms(tokenizer_source: str, vocab_size: int) -> list[str]:
    """Term string per vocabulary id: the tokenizer's tokens. Pretokenized Lucene splits on whitespace, so a
    token that is empty or holds whitespace cannot be a term: refused, naming it."""
    from laconic_ray.model.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_source}: {len(tokenizer)} ids, the vectors' vocabulary {vocab_size}"
        )
    terms = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    terms += [f"[unused-id-{i}]" for i in range(len(tokenizer), vocab_size)]  # padded LM heads (Llama: none)
    bad = next((i for i, t in enumerate(terms) if not t or any(c.isspace() for c in t)), None)
    if bad is not None:
        raise ValueError(
            f"tokenizer {tokenizer_source}: id {bad} is {terms[bad]!r}, not a whitespace-free term"
        )
    if len(set(terms)) != len(terms):
        raise ValueError(f"tokenizer {tokenizer_source}: two ids share a token string; export terms=ids")
    return terms


def vector_lines(
    doc_ids: list[str],
    csr: sp.csr_matrix,
    *,
    integer: bool,
    content_key: str,
    terms: list[str] | None = None,
) -> list[str]:
    lines = []
    for i, doc_id in enumerate(doc_ids):
        row = slice(csr.indptr[i], csr.indptr[i + 1])
        values = csr.data[row]
        vector = {
            (terms[t] if terms else str(t)): (int(v) if integer else float(v))
            for t, v in zip(csr.indices[row].tolist(), values.tolist(), strict=True)
        }
        lines.append(json.dumps({"id": doc_id, content_key: "", "vector": vector}) + "\n")
    return lines


def topic_lines(query_ids: list[str], csr: sp.csr_matrix, terms: list[str] | None) -> list[str]:
    """Anserini's pretokenized impact topics: ``qid<TAB>`` each term repeated its integer weight times."""
    lines = []
    for i, query_id in enumerate(query_ids):
        row = slice(csr.indptr[i], csr.indptr[i + 1])
        words = [
            " ".join([terms[t] if terms else str(t)] * int(v))
            for t, v in zip(csr.indices[row].tolist(), csr.data[row].tolist(), strict=True)
        ]
        lines.append(f"{query_id}\t{' '.join(w for w in words if w)}\n")
    return lines


def export_vectors(
    input_uri: str,
    output: str,
    fmt: str,
    *,
    scale: float = 100.0,
    files: int = 1,
    terms: str = "ids",
    tokenizer: str = "",
    options: StorageOptions | None = None,
) -> dict[str, Any]:
    """Write every vector of a finished sparse folder in ``fmt``; returns counts and the files written."""
    if fmt not in FORMATS or fmt == "parquet":
        raise ValueError(f"format must be anserini or seismic, got {fmt!r}")
    if terms not in TERMS:
        raise ValueError(f"terms must be one of {TERMS}, got {terms!r}")
    manifest = storage.read_manifest(input_uri, options, kind=sparse.SPARSE_KIND)
    already_integer = manifest.metadata.get("weight_format") == "impact"
    queries = manifest.metadata.get("kind") == "query"
    strings = None
    if terms == "tokens":
        source = tokenizer or manifest.metadata.get("model", "")
        if not source:
            raise ValueError(f"{input_uri}: its manifest names no model; give tokenizer=<model or tokenizer>")
        strings = vocabulary_terms(source, int(manifest.metadata["vocab_size"]))
    written: list[list[str]] = [[] for _ in range(max(1, files))]
    topics: list[str] = []
    count = nnz = 0
    for ids, csr, _ in sparse.iter_sparse(input_uri, options):
        if fmt == "anserini" and not already_integer:
            csr = sparse.quantize(csr, scale)
        lines = vector_lines(
            ids,
            csr,
            integer=fmt == "anserini",
            content_key="contents" if fmt == "anserini" else "content",
            terms=strings,
        )
        if fmt == "anserini" and queries:
            topics += topic_lines(ids, csr, strings)
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
    if topics:
        storage.write_bytes(storage.join(output, "topics.tsv"), "".join(topics).encode(), options)
        names.append("topics.tsv")
    return {
        "format": fmt,
        "output": output,
        "vectors": count,
        "mean_nnz": round(nnz / max(count, 1), 2),
        "files": names,
        "terms": terms,
        "impact_scale": None if fmt == "seismic" else (1 if already_integer else scale),
    }


def import_vectors(
    input_uri: str,
    output: str,
    *,
    tokenizer: str = "",
    vocab_size: int = 0,
    options: StorageOptions | None = None,
) -> dict[str, Any]:
    """JsonVectorCollection / Seismic JSON lines (every ``*.jsonl`` under ``input_uri``) -> our sparse Parquet.
    Terms are ids, or token strings when ``tokenizer`` is given (its vocabulary size is the matrix's unless
    ``vocab_size`` says more). Integer weights (Anserini impacts) are kept as ``weight_format=impact``."""
    if tokenizer:
        from laconic_ray.model.tokenization import load_tokenizer

        lookup = load_tokenizer(tokenizer).get_vocab()
        vocab_size = max(vocab_size, max(lookup.values()) + 1)
    elif vocab_size <= 0:
        raise ValueError(
            "give tokenizer=<model or tokenizer> (token-string terms) or vocab_size=<n> (id terms)"
        )
    fs, folder = storage.filesystem(input_uri, options)
    if not fs.isdir(folder):
        raise ValueError(f"{input_uri}: not a folder of .jsonl vector files")
    names = sorted(posixpath.basename(p) for p in fs.ls(folder, detail=False) if p.endswith(".jsonl"))
    if not names:
        raise ValueError(f"{input_uri}: no .jsonl files to import")
    doc_ids, rows, cols, values, integer = [], [], [], [], True
    for name in names:
        path = storage.join(input_uri, name)
        for line_no, line in enumerate(storage.read_bytes(path, options).decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                vector = record["vector"]
                ids = [lookup[t] if tokenizer else int(t) for t in vector]
                weights = [float(w) for w in vector.values()]
                doc_id = str(record["id"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a vector line ({type(e).__name__}: {e})") from None
            bad = next((t for t in ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise ValueError(
                    f"{path}:{line_no}: term id {bad} outside the vocabulary (size {vocab_size})"
                )
            integer &= all(isinstance(w, int) for w in vector.values())
            rows += [len(doc_ids)] * len(ids)
            cols += ids
            values += weights
            doc_ids.append(doc_id)
    csr = sp.csr_matrix((np.asarray(values, np.float32), (rows, cols)), shape=(len(doc_ids), vocab_size))
    csr.sum_duplicates()
    csr.eliminate_zeros()
    metadata = {"model": tokenizer or "", "weight_format": "impact" if integer else "float"}
    sparse.write_sparse(output, doc_ids, csr, vocab_size, metadata=metadata, options=options)
    return {"format": "parquet", "output": output, "vectors": len(doc_ids), "files": names,
            "weight_format": metadata["weight_format"], "mean_nnz": round(csr.nnz / max(len(doc_ids), 1), 2)}  # fmt: skip


def integer_queries(csr: sp.csr_matrix, scale: float = 100.0) -> sp.csr_matrix:
    """Query vectors as Lucene-style integer weights (the same rounding as the documents)."""
    out = sparse.quantize(csr, scale)
    out.data = out.data.astype(np.float32)
    return out


def run_export(config: ExportConfig) -> dict[str, Any]:
    """CLI runner of ``laconic export``."""
    options = config.storage.options()
    if config.format == "parquet":
        return import_vectors(
            config.input,
            config.output,
            tokenizer=config.tokenizer,
            vocab_size=config.vocab_size,
            options=options,
        )
    return export_vectors(
        config.input,
        config.output,
        config.format,
        scale=config.impact_scale,
        files=config.files if config.format == "anserini" else 1,
        terms=config.terms,
        tokenizer=config.tokenizer,
        options=options,
    )
