"""``laconic encode``: a Ray Data pipeline over corpus shards.

    shards (driver plan) -> read stage (Ray tasks: parse, reject bad rows) -> encode stage (actor pool: one
    model per actor, GPU or CPU; each shard sorted by length, encoded, written as one Parquet part and
    journaled) -> driver gathers the journal records -> manifest written last

Everything that is not moving data lives in laconic_ray.encoding and laconic_ray.data.shards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from typing import Any

import pyarrow as pa
import ray

from laconic_ray.config import EncodeConfig
from laconic_ray.data.beir import corpus_of, resolve_dataset
from laconic_ray.data.shards import Shard, plan_shards
from laconic_ray.distributed.cluster import ensure_ray, task_env
from laconic_ray.distributed.resources import ResourceError, size_for_cluster
from laconic_ray.encoding import (
    EncodeSettings,
    ShardEncoder,
    clear_output,
    done_shards,
    finalize,
    output_state,
    read_stage,
    settings_changed,
    write_or_check_plan,
)
from laconic_ray.model.encoder import check_model_source
from laconic_ray.progress import Progress
from laconic_ray.storage import read_manifest

log = logging.getLogger(__name__)

FAULT_ENV = (
    "LACONIC_FAULT_INJECT"  # "encode:<shard>:<marker file>": kill the actor once at that shard (tests)
)


def _read_batch(batch: pa.Table, settings: EncodeSettings) -> pa.Table:
    tables = [read_stage(Shard(**row), settings) for row in batch.to_pylist()]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


class EncodeActor:
    """The actor-pool UDF: loads the model once, encodes whole shards, returns their journal records."""

    def __init__(self, settings: EncodeSettings) -> None:
        self.worker = ShardEncoder(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        _maybe_fail(batch)
        records = self.worker.encode_table(batch)
        return pa.table({"record": [json.dumps(r) for r in records]})


def _maybe_fail(batch: pa.Table) -> None:
    """Fault injection for tests: the first time the named shard arrives, the actor process dies."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("encode:"):
        return
    _, shard, marker = spec.split(":", 2)
    if int(shard) in set(batch.column("shard").to_pylist()) and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("failed once\n")
        os._exit(1)


def settings_from(config: EncodeConfig, corpus: str) -> EncodeSettings:
    return EncodeSettings(
        model=config.model,
        output=config.output,
        kind=config.kind,
        batch_size=config.batch_size,
        top_k=config.top_k,
        quantize=config.quantize,
        impact_scale=config.impact_scale,
        device=config.device,
        dtype=config.dtype,
        quantization=config.quantization,
        torch_threads=max(1, int(config.num_cpus_per_actor)) if config.num_gpus_per_actor == 0 else None,
        on_bad_row=config.on_bad_row,
        options=config.storage.options(),
    )


def run_encode(config: EncodeConfig) -> dict[str, Any]:
    """Encode ``config.corpus`` into ``config.output``; resume a partial output; never redo a finished one."""
    options = config.storage.options()
    corpus = corpus_of(resolve_dataset(config.corpus, config.data_root), options)
    state = output_state(config.output, options)
    if state != "complete" or config.overwrite:  # before any cluster starts: a wrong model is one line
        check_model_source(config.model, options)
    if state == "complete" and not config.overwrite:
        if changed := settings_changed(config.output, settings_from(config, corpus), options):
            raise RuntimeError(
                f"{config.output}: already encoded with other settings ({changed}); overwrite=true to "
                "redo it, or choose another output"
            )
        manifest = read_manifest(config.output, options)
        log.info(
            "%s is already complete (%d documents); overwrite=true to redo it",
            config.output,
            manifest.total_rows,
        )
        return {"output": config.output, "documents": manifest.total_rows, "skipped": "already complete"}
    if config.overwrite and state != "empty":
        log.info("overwrite=true: clearing %s", config.output)
        clear_output(config.output, options)

    settings = settings_from(config, corpus)
    shards = plan_shards(corpus, config.shard_bytes, options)
    write_or_check_plan(config.output, shards, settings, options)
    done = done_shards(config.output, options)
    pending = [s for s in shards if s.shard not in done]
    log.info(
        "%d shards planned from %s, %d already done, %d to encode",
        len(shards),
        corpus,
        len(done),
        len(pending),
    )

    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    if pending:
        ensure_ray(config.ray)
        config = _sized(config)
        records = _run_pipeline(config, settings_from(config, corpus), pending)
    manifest = finalize(config.output, len(shards), settings, options)
    seconds = time.perf_counter() - started
    encoded_docs = sum(r["entry"]["rows"] for r in records)
    meta = manifest.metadata
    return {
        "output": config.output,
        "documents": manifest.total_rows,
        "rejects": meta.get("rejects", 0),
        "shards": len(shards),
        "shards_resumed": len(done),
        "tokens": meta.get("tokens", 0),
        "encoded_this_run": encoded_docs,
        "docs_per_s": round(encoded_docs / seconds, 2) if seconds > 0 else None,
        "mean_nnz": round(sum(r["nnz"] for r in records) / max(encoded_docs, 1), 2),
        "seconds": round(seconds, 3),
    }


def _sized(config: EncodeConfig) -> EncodeConfig:
    """The encoder actors' CPUs fitted to the cluster (resources.py); GPUs asked of a cluster without them
    are refused at once instead of waited for."""
    if config.num_gpus_per_actor > 0:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus < config.num_gpus_per_actor:
            raise ResourceError(
                f"num_gpus_per_actor={config.num_gpus_per_actor:g} but the cluster has {gpus:g} GPUs: set "
                "num_gpus_per_actor=0 to encode on CPUs, or connect to a GPU cluster (ray.address=...)"
            )
    each = size_for_cluster(
        {"encoder actors": (config.num_actors, config.num_cpus_per_actor)}, "num_actors or num_cpus_per_actor"
    )["encoder actors"]
    return dataclasses.replace(config, num_cpus_per_actor=each)


def _run_pipeline(
    config: EncodeConfig, settings: EncodeSettings, pending: list[Shard]
) -> list[dict[str, Any]]:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # "Total Progress 0/?" per operator; Progress below has the ETA
    # a shard must travel as one block; keep Ray Data from slicing it (shards are bounded by shard_bytes)
    ctx.target_max_block_size = max(ctx.target_max_block_size or 0, 8 * config.shard_bytes)
    runtime_env = task_env()
    ds = ray.data.from_items([dataclasses.asdict(s) for s in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        _read_batch,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"settings": settings},
        # Parsing is light. No CPU reservation keeps it schedulable next to encoder actors that hold every
        # CPU; with one, the read stage would wait forever and the actors would never get a shard.
        num_cpus=0,
        # ...but with no reservation Ray Data would start read tasks without bound, each in a new worker
        # process (~2 s of imports), all competing with the encoders' start-up: one reader per encoder is
        # plenty (a 16 MiB shard parses in a fraction of a second, an encoder spends seconds on it).
        concurrency=config.num_actors,
        runtime_env=runtime_env,
    )
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but has no named parameter for actor restarts yet; without
        # them a crashing model would be restarted forever (Ray Data's default is -1).
        warnings.filterwarnings(
            "ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning
        )
        ds = ds.map_batches(
            EncodeActor,
            batch_size=None,  # whole blocks: a block is one shard (or several), never part of one
            batch_format="pyarrow",
            fn_constructor_kwargs={"settings": settings},
            compute=ray.data.ActorPoolStrategy(size=config.num_actors),
            num_cpus=config.num_cpus_per_actor,
            num_gpus=config.num_gpus_per_actor or None,
            runtime_env=runtime_env,
            max_restarts=config.max_retries,
            max_task_retries=config.max_retries,
        )
    records = []
    with Progress(total=sum(s.end - s.start for s in pending), what="bytes", desc="encode") as progress:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for text in batch.column("record").to_pylist():
                record = json.loads(text)
                records.append(record)
                shard = next(s for s in pending if s.shard == record["shard"])
                progress.update(
                    shard.end - shard.start, docs=record["entry"]["rows"], rejects=record["rejects"]
                )
    return records
