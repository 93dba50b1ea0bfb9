"""Corpus encoding as resumable shard work: what each encoder actor does, and the bookkeeping around it.

Output folder::

    parts/part-NNNNN.parquet     one per input shard (the sparse contract of sparse.py)
    rejects/part-NNNNN.jsonl     bad rows of that shard, with file, line and reason
    _progress/plan.json          the shard plan, corpus fingerprint and settings of this output
    _progress/part-NNNNN.json    written right after its part: "this shard is done" (the resume journal)
    manifest.json                written last, once every shard is done and cross-shard ids are unique

A part is written atomically and journaled right after, by the actor itself, so a crash of the actor, the
driver or the cluster loses at most the shards in flight; a rerun plans the same shards, skips the journaled
ones and does the rest. A retried shard rewrites the same part name, so retries never duplicate documents.
Pure Python/PyTorch: the Ray pipeline (distributed/encode.py) only moves shards to these functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laconic_ray import sparse, storage
from laconic_ray.data.beir import DataFormatError
from laconic_ray.data.shards import Shard, plan_fingerprint, read_shard, shard_name
from laconic_ray.progress import Progress
from laconic_ray.storage import FileEntry, Manifest, StorageOptions

log = logging.getLogger(__name__)

PROGRESS = "_progress"
SHARD_PROGRESS_S = 30.0  # seconds between an encoder's lines on the shard it is encoding
PLAN_FILE = "plan.json"

# Columns between the read stage and the encode stage. A shard whose rows were all rejected still sends one
# placeholder row (empty doc_id) so that its (empty) part and journal entry get written.
STAGE_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("shard_rows", pa.int64()),
        ("rejects", pa.int64()),
    ]
)


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """Everything an encoder actor needs, as plain values (it crosses process boundaries)."""

    model: str
    output: str
    kind: str = "passage"
    batch_size: int = 32
    top_k: int | str | None = "model"  # "model": the checkpoint's cap for passages, none for queries
    quantize: bool = False
    impact_scale: float = 100.0
    device: str = "auto"
    dtype: str | None = None
    quantization: str | None = None  # None: the checkpoint's setting
    torch_threads: int | None = None
    on_bad_row: str = "reject"
    options: StorageOptions | None = None

    def identity(self) -> dict[str, Any]:
        """What must match between a partial output and a rerun (not tuning knobs like batch size)."""
        return {
            "model": self.model,
            "kind": self.kind,
            "top_k": self.top_k,
            "quantize": self.quantize,
            "impact_scale": self.impact_scale if self.quantize else None,
            # (only when asked for: outputs begun before this key existed still resume)
            **({"quantization": self.quantization} if self.quantization else {}),
        }


# ----------------------------------------------------------------------------------------------- read stage


def read_stage(shard: Shard, settings: EncodeSettings) -> pa.Table:
    """Read one shard; write its rejects file; return its documents as a ``STAGE_SCHEMA`` table."""
    rows = read_shard(shard, kind=settings.kind, on_bad_row=settings.on_bad_row, options=settings.options)
    rejects_uri = storage.join(settings.output, "rejects", f"{shard_name(shard.shard)}.jsonl")
    if rows.rejects:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.rejects)
        storage.write_bytes(rejects_uri, body.encode(), settings.options)
    else:
        storage.remove(rejects_uri, settings.options)  # a stale file from an older attempt
    ids, texts = (rows.ids, rows.texts) if rows.ids else ([""], [""])
    n = len(ids)
    return pa.table(
        {
            "shard": pa.array([shard.shard] * n, pa.int64()),
            "doc_id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "shard_rows": pa.array([len(rows.ids)] * n, pa.int64()),
            "rejects": pa.array([len(rows.rejects)] * n, pa.int64()),
        },
        schema=STAGE_SCHEMA,
    )


# --------------------------------------------------------------------------------------------- encode stage


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but this worker sees no GPU (give the actors num_gpus_per_actor > 0)")
    return device


class ShardEncoder:
    """Holds one model; encodes whole shards into parts. One per Ray actor (the model loads once)."""

    def __init__(self, settings: EncodeSettings) -> None:
        import torch

        from laconic_ray.model import SparseEncoder

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.encoder = SparseEncoder.from_pretrained(
            settings.model,
            device=self.device,
            dtype=settings.dtype,
            quantization=settings.quantization,
            options=settings.options,
        )
        self.model_name = settings.model
        self.top_k = settings.top_k
        if self.top_k == "model":
            self.top_k = self.encoder.settings.top_k if settings.kind == "passage" else None
        self.ready_at = time.time()  # wall clock: the journal's timeline (start-up vs steady state)

    def metadata(self) -> dict[str, Any]:
        meta = {
            "model": self.model_name,
            "kind": self.settings.kind,
            "top_k": self.top_k,  # the cap applied ("model" resolved)
            "quantization": self.encoder.quantized,  # of the encoder that made the vectors
        }
        if self.encoder.model_id:
            meta["model_id"] = self.encoder.model_id
        if self.settings.quantize:
            meta.update(weight_format="impact", impact_scale=self.settings.impact_scale)
        else:
            meta["weight_format"] = "float"
        return meta

    def encode_shard(self, shard: int, ids: list[str], texts: list[str], rejects: int) -> dict[str, Any]:
        """Encode one shard's documents, write its part atomically, journal it; return the journal entry."""
        started, started_at = time.perf_counter(), time.time()
        stats: dict[str, float] = {}
        if ids:
            # a line every SHARD_PROGRESS_S while a long shard encodes (the driver reports whole shards: a
            # one-shard corpus, or 16 MiB shards on a big model, would otherwise be silent for minutes); on
            # stderr, which Ray forwards to the driver's console and the job's log
            ticker = Progress(
                len(ids), "docs", f"encode shard {shard}", every_s=SHARD_PROGRESS_S, bar=False,
                final=False, sink=lambda line: print(line, file=sys.stderr, flush=True),
            )  # fmt: skip
            csr = self.encoder.encode(
                texts,
                self.settings.kind,
                batch_size=self.settings.batch_size,
                top_k=self.top_k,
                stats=stats,
                on_batch=ticker.update,
            )
        else:
            import scipy.sparse as sp

            csr = sp.csr_matrix((0, self.encoder.vocab_size), dtype=np.float32)
        if self.settings.quantize:
            csr = sparse.quantize(csr, self.settings.impact_scale)
        t_write = time.perf_counter()
        name = f"parts/{shard_name(shard)}.parquet"
        entry = sparse.write_part(
            self.settings.output,
            name,
            ids,
            csr,
            self.encoder.vocab_size,
            self.metadata(),
            self.settings.options,
        )
        record = {
            "shard": shard,
            "entry": dataclasses.asdict(entry),
            "metadata": {**self.metadata(), "vocab_size": self.encoder.vocab_size},
            "rejects": rejects,
            "tokens": int(stats.get("tokens", 0)),
            "model_cpu_s": stats.get("model_cpu", 0.0),
            "nnz": int(csr.nnz),
            "seconds": time.perf_counter() - started,
            "timeline": {"actor_ready": self.ready_at, "started": started_at, "finished": time.time()},
            "split_s": {
                **{k: v for k, v in stats.items() if k.endswith("_s")},
                "write_s": time.perf_counter() - t_write,
            },
        }
        journal = storage.join(self.settings.output, PROGRESS, f"{shard_name(shard)}.json")
        storage.write_bytes(journal, json.dumps(record).encode(), self.settings.options)
        return record

    def encode_table(self, table: pa.Table) -> list[dict[str, Any]]:
        """Encode every shard in a ``STAGE_SCHEMA`` table (a Ray Data block may carry several)."""
        records = []
        shards = table.column("shard").to_numpy()
        for shard in np.unique(shards):
            rows = table.filter(pa.compute.equal(table.column("shard"), shard))
            ids = rows.column("doc_id").to_pylist()
            texts = rows.column("text").to_pylist()
            expected = rows.column("shard_rows")[0].as_py()
            if expected == 0:
                ids, texts = [], []
            elif len(ids) != expected:
                raise RuntimeError(
                    f"shard {shard} arrived split ({len(ids)} of {expected} rows); lower shard_bytes "
                    "or split large .jsonl.gz files"
                )
            records.append(self.encode_shard(int(shard), ids, texts, rows.column("rejects")[0].as_py()))
        return records


# -------------------------------------------------------------------------------------------- bookkeeping


def output_state(output: str, options: StorageOptions | None) -> str:
    """``complete`` (manifest present), ``partial`` (progress but no manifest) or ``empty``."""
    if storage.exists(storage.join(output, storage.MANIFEST_NAME), options):
        return "complete"
    if storage.exists(storage.join(output, PROGRESS, PLAN_FILE), options):
        return "partial"
    return "empty"


def clear_output(output: str, options: StorageOptions | None) -> None:
    """Remove what an encode wrote (manifest first, so the folder never looks complete on the way)."""
    storage.remove(storage.join(output, storage.MANIFEST_NAME), options)
    for sub in ("parts", "rejects", PROGRESS):
        storage.remove(storage.join(output, sub), options, recursive=True)


def write_or_check_plan(
    output: str, shards: list[Shard], settings: EncodeSettings, options: StorageOptions | None
) -> None:
    """Record the plan of a fresh output, or refuse to resume one made from other input or settings."""
    plan = {
        "corpus": plan_fingerprint(shards, options),
        "shards": [dataclasses.asdict(s) for s in shards],
        "settings": settings.identity(),
    }
    uri = storage.join(output, PROGRESS, PLAN_FILE)
    if storage.exists(uri, options):
        old = json.loads(storage.read_bytes(uri, options))
        for key in ("corpus", "shards", "settings"):
            if old.get(key) != plan[key]:
                what = f"settings ({_differences(old[key], plan[key])})" if key == "settings" else key
                raise RuntimeError(
                    f"{output}: holds a partial encode with a different {what}; "
                    "rerun with overwrite=true or choose another output"
                )
        return
    storage.write_bytes(uri, json.dumps(plan, indent=1).encode(), options)


def settings_changed(output: str, settings: EncodeSettings, options: StorageOptions | None) -> str:
    """Where the settings ``output`` was encoded with differ from ``settings``, as ``key: old -> new`` (empty
    when they do not, or when the output has no plan to tell)."""
    uri = storage.join(output, PROGRESS, PLAN_FILE)
    if not storage.exists(uri, options):
        return ""
    return _differences(json.loads(storage.read_bytes(uri, options)).get("settings", {}), settings.identity())


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted({*old, *new})
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def done_shards(output: str, options: StorageOptions | None) -> dict[int, dict[str, Any]]:
    """Journal entries whose part is present with the journaled size (i.e. shards a rerun may skip)."""
    fs, path = storage.filesystem(storage.join(output, PROGRESS), options)
    done = {}
    if not fs.exists(path):
        return done
    for file in fs.ls(path, detail=False):
        name = file.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("part-"):
            continue
        record = json.loads(storage.read_bytes(storage.join(output, PROGRESS, name), options))
        part = storage.join(output, record["entry"]["path"])
        pfs, ppath = storage.filesystem(part, options)
        if pfs.exists(ppath) and pfs.size(ppath) == record["entry"]["bytes"]:
            done[int(record["shard"])] = record
    return done


def _hash64(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True)


def find_duplicates(
    output: str, records: dict[int, dict[str, Any]], options: StorageOptions | None
) -> dict[str, list[int]]:
    """Doc ids present in more than one part: ``{doc_id: [shards in order]}`` (64-bit hashes narrow the
    candidates; only those are compared as strings)."""
    hashes, owners = [], []
    for shard in sorted(records):
        uri = storage.join(output, records[shard]["entry"]["path"])
        ids = pq.read_table(pa.BufferReader(storage.read_bytes(uri, options)), columns=["doc_id"])
        hashes.append(np.fromiter((_hash64(i) for i in ids.column("doc_id").to_pylist()), dtype=np.int64))
        owners.append(np.full(len(hashes[-1]), shard, dtype=np.int64))
    if not hashes:
        return {}
    all_hashes = np.concatenate(hashes)
    unique, counts = np.unique(all_hashes, return_counts=True)
    suspects = set(unique[counts > 1].tolist())
    if not suspects:
        return {}
    seen: dict[str, list[int]] = {}
    all_owners = np.concatenate(owners)
    for shard in sorted({int(s) for s, h in zip(all_owners, all_hashes, strict=True) if int(h) in suspects}):
        uri = storage.join(output, records[shard]["entry"]["path"])
        ids = pq.read_table(pa.BufferReader(storage.read_bytes(uri, options)), columns=["doc_id"])
        for doc_id in ids.column("doc_id").to_pylist():
            if _hash64(doc_id) in suspects:
                seen.setdefault(doc_id, []).append(shard)
    return {d: shards for d, shards in seen.items() if len(shards) > 1}


def drop_duplicates(
    output: str,
    records: dict[int, dict[str, Any]],
    duplicates: dict[str, list[int]],
    options: StorageOptions | None,
) -> int:
    """Keep each duplicated id in its first shard; rewrite the later parts without it and reject it there."""
    by_shard: dict[int, set[str]] = {}
    for doc_id, shards in duplicates.items():
        for shard in shards[1:]:
            by_shard.setdefault(shard, set()).add(doc_id)
    dropped = 0
    for shard, ids in sorted(by_shard.items()):
        record = records[shard]
        ids_, csr, meta = sparse.read_part(output, FileEntry(**record["entry"]), options=options)
        keep = [i for i, d in enumerate(ids_) if d not in ids]
        entry = sparse.write_part(
            output,
            record["entry"]["path"],
            [ids_[i] for i in keep],
            csr[keep],
            int(meta["vocab_size"]),
            meta,
            options,
        )
        rejects = [
            {
                "file": record["entry"]["path"],
                "reason": f"duplicate id {d!r} (kept in shard {duplicates[d][0]})",
                "raw": d,
            }
            for d in sorted(ids)
        ]
        rejects_uri = storage.join(output, "rejects", f"{shard_name(shard)}.duplicates.jsonl")
        storage.write_bytes(rejects_uri, "".join(json.dumps(r) + "\n" for r in rejects).encode(), options)
        record.update(entry=dataclasses.asdict(entry), rejects=record["rejects"] + len(ids))
        storage.write_bytes(
            storage.join(output, PROGRESS, f"{shard_name(shard)}.json"), json.dumps(record).encode(), options
        )
        dropped += len(ids)
    return dropped


def finalize(
    output: str, n_shards: int, settings: EncodeSettings, options: StorageOptions | None
) -> Manifest:
    """Check every shard is done and ids are unique across parts; then write the manifest (last)."""
    records = done_shards(output, options)
    missing = sorted(set(range(n_shards)) - set(records))
    if missing:
        raise RuntimeError(f"{output}: shards {missing[:10]} not encoded; rerun to complete the output")
    duplicates = find_duplicates(output, records, options)
    if duplicates:
        if settings.on_bad_row == "raise":
            examples = ", ".join(f"{d!r} (shards {s})" for d, s in list(duplicates.items())[:5])
            raise DataFormatError(f"{len(duplicates)} doc ids appear in more than one shard: {examples}")
        log.warning(
            "%d doc ids appear in more than one shard; keeping each in its first shard", len(duplicates)
        )
        drop_duplicates(output, records, duplicates, options)
    entries = [FileEntry(**records[s]["entry"]) for s in range(n_shards)]
    metadata = {
        **(records[0]["metadata"] if records else {"vocab_size": 0}),
        "documents": sum(e.rows for e in entries),
        "rejects": sum(r["rejects"] for r in records.values()),
        "shards": n_shards,
        "tokens": sum(r["tokens"] for r in records.values()),
    }
    manifest = Manifest(kind=sparse.SPARSE_KIND, files=entries, metadata=metadata)
    storage.write_manifest(output, manifest, options)
    return manifest
