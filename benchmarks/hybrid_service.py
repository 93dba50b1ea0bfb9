"""What retriever=hybrid costs a text query in the service (issue 27): learned vs hybrid, side by side.

    .venv/bin/python benchmarks/hybrid_service.py --index runs/quickstart/index \
        --model runs/quickstart/train/phase2/model --bm25 scifact

One local Ray cluster; a learned searcher and a hybrid one (its own shard actors and the BM25 actor) over the
same index; SciFact test queries one at a time through the Python client, the two searchers alternating query
by query over ``--passes`` passes; medians and p99. The BM25 actor's own time per call comes from its stats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import ray

from laconic_ray.config import HybridConfig
from laconic_ray.data.beir import BeirDataset
from laconic_ray.distributed.lexical import HybridSearcher, LexicalSpec
from laconic_ray.distributed.serving import ShardedSearcher


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bm25", default="scifact", help="collection (name under $LACONIC_DATA or path)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    data = os.environ.get("LACONIC_DATA", "")
    source = args.bm25 if os.sep in args.bm25 or not data else os.path.join(data, args.bm25)
    texts = [q.text for q in BeirDataset(source).queries("test")][: args.queries]
    common = {"model": args.model, "num_cpus_per_shard": 0.5}
    learned = ShardedSearcher(args.index, **common)
    hybrid = HybridSearcher(
        args.index, bm25=LexicalSpec(source), hybrid=HybridConfig(), bm25_cpus=1.0, **common
    )
    times: dict[str, list[float]] = {"learned": [], "hybrid": []}
    try:
        for text in texts[:10]:  # warm both (JVM, caches)
            learned.search(text, args.k)
            hybrid.search(text, args.k)
        warm = hybrid.stats()["bm25"]
        for _ in range(args.passes):
            for text in texts:
                for name, searcher in (("learned", learned), ("hybrid", hybrid)):
                    started = time.perf_counter()
                    searcher.search(text, args.k)
                    times[name].append(time.perf_counter() - started)
        bm25 = hybrid.stats()["bm25"]
    finally:
        hybrid.shutdown()
        learned.shutdown()
    out = {
        name: {
            "p50_ms": round(1000 * statistics.median(values), 2),
            "p99_ms": round(1000 * float(np.percentile(values, 99)), 2),
        }
        for name, values in times.items()
    }
    calls = bm25["calls"] - warm["calls"]
    out["bm25_actor_mean_ms"] = round(1000 * (bm25["seconds"] - warm["seconds"]) / max(calls, 1), 2)
    out["hybrid_over_learned_p50"] = round(out["hybrid"]["p50_ms"] / out["learned"]["p50_ms"], 2)
    out["queries"] = len(texts) * args.passes
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
