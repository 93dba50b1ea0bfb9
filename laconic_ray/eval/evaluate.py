"""``laconic eval``: retrieve for a split's queries, write a TREC run, score it, compare with a baseline.

Retrievers: ``laconic`` (a partitioned index searched in-process, shard by shard with an exact merge, or a
running HTTP service), ``bm25`` (pyserini's Lucene over the same collection, k1=0.9 b=0.4, Anserini's
``multifield`` layout by default, the one behind BEIR's published BM25 figures; ``flat`` on request), or
``hybrid`` (both, fused per query by RRF or normalised interpolation: eval/fusion.py; the summary also
gives each component's metrics), or ``run`` (score an existing run file). The last line of ``laconic eval`` is the summary JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from laconic_ray import storage
from laconic_ray.config import EvalConfig
from laconic_ray.data.beir import BeirDataset, Query
from laconic_ray.eval.fusion import fuse_runs
from laconic_ray.eval.metrics import compare, evaluate
from laconic_ray.eval.runs import Run, read_run, write_run
from laconic_ray.progress import Progress
from laconic_ray.storage import StorageOptions

log = logging.getLogger(__name__)

EVAL_CHUNK = 512  # queries encoded and searched at a time: the progress line's step


def bm25_run(
    dataset: BeirDataset,
    queries: list[Query],
    k: int,
    *,
    k1: float,
    b: float,
    threads: int,
    cache: str | None,
    layout: str = "multifield",
) -> Run:
    from laconic_ray.data.lucene import BM25, build_bm25_index

    searcher = BM25(
        build_bm25_index(dataset, cache, threads, layout), k1=k1, b=b, threads=threads, layout=layout
    )
    hits = searcher.batch_search([q.text for q in queries], [q.id for q in queries], k)
    # BEIR's evaluation drops a document retrieved for its own id (a query that is also a corpus entry)
    return {qid: {d: s for d, s in ranked if d != qid} for qid, ranked in hits.items()}


def laconic_run(
    config: EvalConfig, queries: list[Query], options: StorageOptions | None, latency: dict | None = None
) -> Run:
    from laconic_ray.index import InvertedIndex, merge_topk
    from laconic_ray.index.partition import check_query_model, read_index_manifest
    from laconic_ray.model import SparseEncoder
    from laconic_ray.model.encoder import check_model_source

    if config.service:
        return _service_run(config, queries)
    manifest = read_index_manifest(config.index, options)
    check_model_source(config.model, options)
    encoder = SparseEncoder.from_pretrained(config.model, options=options, quantization=config.quantization)
    check_query_model(manifest.metadata, encoder, config.index, strict=config.check_model)
    shards = [InvertedIndex.load(storage.join(config.index, f.path), options=options) for f in manifest.files]
    run: Run = {}
    with Progress(total=len(queries), what="queries", desc="eval") as progress:
        for start in range(0, len(queries), EVAL_CHUNK):
            chunk = queries[start : start + EVAL_CHUNK]
            vectors = encoder.encode_queries([q.text for q in chunk], batch_size=config.batch_size)
            partials = [
                shard.batch_search(vectors, config.k, num_threads=config.threads, mode=config.mode)
                for shard in shards
            ]
            for qi, query in enumerate(chunk):
                ids, scores = merge_topk([p[qi] for p in partials], config.k)
                run[query.id] = dict(zip(ids, scores.tolist(), strict=True))
            progress.update(len(chunk))
    if latency is not None and config.latency_queries > 0:
        latency.update(text_query_latency(encoder, shards, queries[: config.latency_queries], config))
    return run


def text_query_latency(
    encoder: Any, shards: list, queries: list[Query], config: EvalConfig
) -> dict[str, float]:
    """One text query at a time, as a service answers it: encode, search every shard, merge the top k.
    Median and p99 over ``queries`` (after 5 warm-up queries: kernels compile on first use)."""
    import numpy as np

    from laconic_ray.index import merge_topk

    def answer(text: str) -> None:
        vector = encoder.encode_queries([text])
        merge_topk([s.search(vector[0].indices, vector[0].data, config.k, mode=config.mode) for s in shards],
                   config.k)  # fmt: skip

    began = time.perf_counter()
    for query in queries[:5]:
        answer(query.text)
    times = []
    for query in queries:
        started = time.perf_counter()
        answer(query.text)
        times.append(1000 * (time.perf_counter() - started))
    return {"p50": round(float(np.median(times)), 3), "p99": round(float(np.percentile(times, 99)), 3),
            "queries": len(times), "seconds": time.perf_counter() - began}  # fmt: skip


def _service_run(config: EvalConfig, queries: list[Query]) -> Run:
    import urllib.request

    run: Run = {}
    for start in range(0, len(queries), 64):
        chunk = queries[start : start + 64]
        body = json.dumps({"queries": [{"query": q.text} for q in chunk], "k": config.k}).encode()
        request = urllib.request.Request(
            f"{config.service.rstrip('/')}/batch_search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            results = json.loads(response.read())["results"]
        for query, result in zip(chunk, results, strict=True):
            if result["partial"]:
                log.warning(
                    "query %s: partial answer (shards %s missing)", query.id, result["missing_shards"]
                )
            run[query.id] = {h["doc_id"]: h["score"] for h in result["hits"]}
    return run


def run_eval(config: EvalConfig) -> dict[str, Any]:
    options = config.storage.options()
    dataset = BeirDataset(config.dataset, options=options, data_root_dir=config.data_root)
    qrels = dataset.qrels(config.split)
    queries = list(dataset.queries(config.split))
    started = time.perf_counter()
    latency: dict[str, float] = {}  # text_query_latency's figures (and its seconds, kept out of retrieval_s)
    components: dict[str, Run] = {}  # hybrid: the two runs it fused
    if config.retriever in ("bm25", "hybrid"):
        components["bm25"] = bm25_run(
            dataset,
            queries,
            config.k,
            k1=config.bm25_k1,
            b=config.bm25_b,
            threads=config.threads,
            cache=config.index_cache,
            layout=config.bm25_layout,
        )
    if config.retriever in ("laconic", "hybrid"):
        components["laconic"] = laconic_run(config, queries, options, latency)
    if config.retriever == "run":
        run = read_run(config.run, options)
    elif config.retriever == "hybrid":
        run = fuse_runs(components["laconic"], components["bm25"], config.hybrid, config.k)
    else:
        run = components[config.retriever]
    retrieval_s = time.perf_counter() - started - latency.get("seconds", 0.0)
    aggregate, per_query = evaluate(run, qrels, config.measures)
    summary: dict[str, Any] = {
        "dataset": dataset.name,
        "split": config.split,
        "retriever": config.retriever,
        "queries": len(queries),
        "metrics": {m: round(v, 4) for m, v in aggregate.items()},
        "retrieval_s": round(retrieval_s, 2),
        "ms_per_query": round(1000 * retrieval_s / max(len(queries), 1), 3),
    }
    if config.retriever == "hybrid":
        summary["fusion"] = dataclasses.asdict(config.hybrid)
        summary["components"] = {
            name: {m: round(v, 4) for m, v in evaluate(r, qrels, config.measures)[0].items()}
            for name, r in components.items()
        }
    if config.retriever == "laconic" and latency:
        summary["text_query_ms"] = {k: v for k, v in latency.items() if k != "seconds"}
    comparison = None
    if config.baseline:
        baseline_aggregate, baseline = evaluate(read_run(config.baseline, options), qrels, config.measures)
        comparison = {m: compare(per_query, baseline, m) for m in config.measures}
        summary["baseline"] = {m: round(v, 4) for m, v in baseline_aggregate.items()}
        summary["comparison"] = {
            m: {k: v for k, v in c.items() if k != "per_query_delta"} for m, c in comparison.items()
        }
    if config.output:
        tag = config.run_tag or config.retriever
        write_run(storage.join(config.output, "run.trec"), run, tag, options)
        storage.write_bytes(
            storage.join(config.output, "metrics.json"), json.dumps(summary, indent=1).encode(), options
        )
        lines = ["qid\t" + "\t".join(config.measures) + "\n"]
        lines += [
            q + "\t" + "\t".join(f"{per_query[q][m]:.4f}" for m in config.measures) + "\n"
            for q in sorted(per_query)
        ]
        storage.write_bytes(storage.join(config.output, "per_query.tsv"), "".join(lines).encode(), options)
        summary["output"] = config.output
        if comparison and not storage.is_remote(config.output):
            from laconic_ray.eval.plots import plot_deltas

            measure = config.measures[0]
            plot_deltas(
                comparison[measure]["per_query_delta"],
                measure,
                storage.join(config.output, f"delta-{measure.replace('@', '_at_')}.png"),
                title=f"{tag} vs baseline on {dataset.name}/{config.split}",
            )
    log.info("%s on %s/%s: %s", config.retriever, dataset.name, config.split, summary["metrics"])
    return summary
