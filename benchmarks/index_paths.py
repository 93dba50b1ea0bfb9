"""Where the index's two exact kernels cross over: block-max pruning vs term at a time, by shard size.

    .venv/bin/python benchmarks/index_paths.py --sizes 4096,8192,16384,32768,65536 --queries 300

For each size: ``synthetic.generate(size, queries)`` vectors, one index, and single-query ``search()`` latency
(median over the queries after 30 warm-up ones) with ``accumulate_docs=0`` (block-max) and with it above
the size (term at a time), alternately, three times; reported as medians and the ratio. ``--collections``
adds real collections (BM25 vectors of their test queries). ``InvertedIndex.ACCUMULATE_DOCS`` should sit
below the crossover.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()

from laconic_ray.index import InvertedIndex  # noqa: E402

PATHS = {"blocks": 0, "accumulate": 1 << 62}


def median_latency_us(index: InvertedIndex, rows: list, repeats: int = 3) -> dict[str, float]:
    runs: dict[str, list[float]] = {name: [] for name in PATHS}
    for _ in range(repeats):
        for name, accumulate_docs in PATHS.items():
            index.accumulate_docs = accumulate_docs
            for terms, values in rows[:30]:
                index.search(terms, values, 10)
            latencies = []
            for terms, values in rows:
                t0 = time.perf_counter()
                index.search(terms, values, 10)
                latencies.append(time.perf_counter() - t0)
            runs[name].append(1e6 * statistics.median(latencies))
    return {name: statistics.median(values) for name, values in runs.items()}


def report(label: str, index: InvertedIndex, queries) -> None:
    rows = [
        (queries.indices[s:e], queries.data[s:e])
        for s, e in zip(queries.indptr[:-1], queries.indptr[1:], strict=True)
    ]
    us = median_latency_us(index, rows)
    print(
        f"| {label} | {index.n_docs} | {us['blocks']:.1f} | {us['accumulate']:.1f} | "
        f"{us['accumulate'] / us['blocks']:.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4096,8192,16384,32768,65536")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--collections", default="", help="e.g. scifact,cacm,cranfield")
    args = parser.parse_args()
    print("| data | docs | block-max us | term at a time us | ratio |\n|---|---|---|---|---|")
    from synthetic import generate

    for size in [int(s) for s in args.sizes.split(",") if s]:
        docs, queries = generate(size, args.queries, seed=0)
        report("synthetic", InvertedIndex.build(docs, [str(i) for i in range(size)]), queries)
    for name in [c for c in args.collections.split(",") if c]:
        from tests.vectors import bm25_queries, collection_vectors

        doc_ids, docs = collection_vectors(name)
        _, queries = bm25_queries(name, "test")
        report(name, InvertedIndex.build(docs, list(doc_ids)), queries)


if __name__ == "__main__":
    main()
