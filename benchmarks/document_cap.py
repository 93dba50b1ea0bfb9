"""How many weights a document keeps (issue 27): quality and exact-search speed per cap, on one trained model.

    .venv/bin/python benchmarks/document_cap.py --model runs/quickstart/train/phase2/model --caps 512 384 256 192 128

SciFact's corpus is encoded once with every weight kept, then cut to each cap (the largest weights, as the
encoder's ``top_k`` does) and indexed in-process; queries keep all their weights. nDCG@10 and R@100 on SciFact
test; search latency = one query at a time (top 10), the caps timed in alternating passes over the same
queries, medians. Ratios are within one run; keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import scipy.sparse as sp

from laconic_ray.data.beir import BeirDataset
from laconic_ray.eval.metrics import evaluate
from laconic_ray.index import InvertedIndex
from laconic_ray.model import SparseEncoder


def keep_largest(matrix: sp.csr_matrix, cap: int) -> sp.csr_matrix:
    out = matrix.tocsr(copy=True)
    for row in range(out.shape[0]):
        values = out.data[out.indptr[row] : out.indptr[row + 1]]
        if len(values) > cap:
            values[np.argsort(-values, kind="stable")[cap:]] = 0
    out.eliminate_zeros()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--dataset", default=os.path.join(os.environ.get("LACONIC_DATA", "../shared/datasets"), "scifact")
    )
    parser.add_argument("--caps", type=int, nargs="+", default=[512, 384, 256, 192, 128])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    dataset = BeirDataset(args.dataset)
    encoder = SparseEncoder.from_pretrained(args.model)
    docs, queries = list(dataset.corpus()), list(dataset.queries("test"))
    full = encoder.encode_documents([d.full_text() for d in docs], top_k=None)
    vectors = encoder.encode_queries([q.text for q in queries])
    rows, indexes = {}, {}
    for cap in args.caps:
        capped = keep_largest(full, cap)
        indexes[cap] = InvertedIndex.build(capped, [d.id for d in docs])
        found = indexes[cap].batch_search(vectors, 100)
        run = {
            q.id: dict(zip(ids, s.tolist(), strict=True)) for q, (ids, s) in zip(queries, found, strict=True)
        }
        metrics, _ = evaluate(run, dataset.qrels("test"))
        rows[cap] = {"nDCG@10": round(metrics["nDCG@10"], 4), "R@100": round(metrics["R@100"], 4),
                     "mean_doc_nnz": round(capped.nnz / len(docs), 1)}  # fmt: skip
    times: dict[int, list[float]] = {cap: [] for cap in args.caps}
    for _ in range(args.passes):
        for cap, index in indexes.items():
            for i in range(vectors.shape[0]):
                q = vectors[i]
                started = time.perf_counter()
                index.search(q.indices, q.data, 10)
                times[cap].append(time.perf_counter() - started)
    base = statistics.median(times[args.caps[0]])
    for cap in args.caps:
        median = statistics.median(times[cap])
        rows[cap].update(p50_ms=round(1000 * median, 3), speedup=round(base / median, 2))
    print(json.dumps({"model": args.model, "uncapped_doc_nnz": round(full.nnz / len(docs), 1),
                      "query_nnz": round(vectors.nnz / len(queries), 1), "caps": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
