"""``laconic index``: build a partitioned index from encoded shards on CPU Ray tasks.

    input manifest -> (hash: one staging task per input part, splitting it into per-shard buckets)
                   -> one build task per index shard (reads its rows, builds, saves shard-NNNNN/)
                   -> manifest.json written last (shard count, doc count, vocab size, quantization, scale)

All logic is in laconic_ray.index.partition; this module schedules it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import ray

from laconic_ray import sparse, storage
from laconic_ray.config import IndexConfig
from laconic_ray.distributed.cluster import ensure_ray, task_env
from laconic_ray.distributed.resources import cpus_per_task
from laconic_ray.index.partition import (
    build_shard,
    global_scale,
    max_weight,
    part_slices,
    range_bounds,
    read_index_manifest,
    shard_name,
    stage_part,
    write_index_manifest,
)
from laconic_ray.progress import Progress

log = logging.getLogger(__name__)


def run_index(config: IndexConfig) -> dict[str, Any]:
    options = config.storage.options()
    if storage.exists(storage.join(config.output, storage.MANIFEST_NAME), options) and not config.force:
        manifest = read_index_manifest(config.output, options)
        log.info(
            "%s is already complete (%d shards); force=true to rebuild", config.output, len(manifest.files)
        )
        return {"output": config.output, "skipped": "already complete", **manifest.metadata}
    source = storage.read_manifest(config.input, options, kind=sparse.SPARSE_KIND)
    meta = source.metadata
    vocab_size, weight_format = int(meta["vocab_size"]), meta.get("weight_format", "float")
    ensure_ray(config.ray)
    num_cpus = cpus_per_task(config.num_cpus_per_task, "num_cpus_per_task")  # before anything is removed
    storage.remove(storage.join(config.output, storage.MANIFEST_NAME), options)
    started = time.perf_counter()
    remote = {
        "num_cpus": num_cpus,
        "max_retries": config.max_retries,
        "runtime_env": task_env(),
    }

    scale = None
    if config.quantization != "float32" and weight_format != "impact":
        peaks = ray.get(
            [ray.remote(max_weight).options(**remote).remote(config.input, e, options) for e in source.files]
        )
        scale = global_scale(max(peaks, default=0.0), config.quantization, weight_format)
    elif weight_format == "impact" and config.quantization != "float32":
        scale = 1.0

    if config.partition == "range":
        counts = [e.rows for e in source.files]
        sources = [
            [
                (config.input, dataclasses.asdict(source.files[p]), a, b)
                for p, a, b in part_slices(counts, lo, hi)
            ]
            for lo, hi in range_bounds(source.total_rows, config.num_shards)
        ]
    else:
        staging = storage.join(config.output, "_staging")
        storage.remove(staging, options, recursive=True)
        counts = ray.get(
            [
                ray.remote(stage_part)
                .options(**remote)
                .remote(config.input, entry, part, config.num_shards, staging, options)
                for part, entry in enumerate(source.files)
            ]
        )
        sources = [[] for _ in range(config.num_shards)]
        for part, per_shard in enumerate(counts):
            for shard, rows in enumerate(per_shard):
                if rows:
                    bucket = storage.join(staging, shard_name(shard))
                    entry = storage.describe_file(bucket, f"part-{part:05d}.parquet", rows, options)
                    sources[shard].append((bucket, dataclasses.asdict(entry), 0, None))

    metadata = {k: meta[k] for k in ("model", "model_id", "weight_format", "kind") if k in meta}
    builds = [
        ray.remote(build_shard)
        .options(**remote)
        .remote(
            config.output,
            shard,
            sources[shard],
            vocab_size=vocab_size,
            quantization=config.quantization,
            scale=scale,
            block_size=config.block_size,
            reorder=config.reorder,
            metadata=metadata,
            options=options,
        )
        for shard in range(config.num_shards)
    ]
    shards = []
    with Progress(total=len(builds), what="shards", desc="index") as progress:
        for ref in builds:  # in order
            shards.append(ray.get(ref))
            progress.update(1, docs=shards[-1]["docs"])
    manifest = write_index_manifest(
        config.output,
        shards,
        {
            **metadata,
            "vocab_size": vocab_size,
            "quantization": config.quantization,
            "scale": scale,
            "partition": config.partition,
            "block_size": config.block_size,
            "reorder": config.reorder,
            "input": config.input,
        },
        options,
    )
    if config.partition == "hash":
        storage.remove(storage.join(config.output, "_staging"), options, recursive=True)
    seconds = time.perf_counter() - started
    total_bytes = sum(f.bytes for f in manifest.files)
    return {
        "output": config.output,
        "shards": len(shards),
        "docs": manifest.metadata["docs"],
        "postings": sum(s["postings"] for s in shards),
        "bytes_per_doc": round(total_bytes / max(manifest.metadata["docs"], 1), 1),
        "scale": scale,
        "seconds": round(seconds, 2),
    }
