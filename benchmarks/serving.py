"""Search latency through the serving layers: in-process index vs Python client (shard actors) vs HTTP.

    .venv/bin/python benchmarks/serving.py [--docs 200000] [--queries 1000] [--shards 1,2,4] [--direct-ingress]

Same synthetic SPLADE-like vectors as benchmarks/engines.py. For each shard count, one query at a time from
one client (after warm-up): ``in-process`` is ``InvertedIndex.search`` over the whole collection in this
process; ``python client actor calls`` is ``ShardedSearcher.search`` (scatter to every shard actor, gather,
merge) with plain actor calls, ``python client`` the same over direct connections to the shard actors (the
default); ``http`` is POST /search to the Ray Serve app on 127.0.0.1 over one kept-alive connection (its
replica uses direct connections). With ``--direct-ingress`` the cluster runs Serve's direct ingress
(distributed/http.py) and ``http_direct`` also times the replica's own port. Reported: p50 / p99 latency, QPS (one client, sequential) and the p50 overhead over
in-process. Goals on a 2-core machine: scatter-gather adds <= 2 ms
p50; HTTP <= 10 ms p50.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()

WARMUP = 50


def timed(fn, queries) -> list[float]:
    for q in queries[:WARMUP]:
        fn(q)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * statistics.median(seconds), 3),
        "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 3),
        "qps": round(len(seconds) / sum(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--direct-ingress", action="store_true")
    args = parser.parse_args()
    if args.direct_ingress:
        from laconic_ray.distributed.http import DIRECT_INGRESS_ENV

        os.environ.update(DIRECT_INGRESS_ENV)  # before Ray starts: Serve's processes read it at start

    import ray
    from ray import serve
    from synthetic import written

    from laconic_ray.config import IndexConfig, ServeConfig, load_config
    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV
    from laconic_ray.distributed.http import deploy, replica_urls
    from laconic_ray.distributed.index import run_index
    from laconic_ray.distributed.serving import ShardedSearcher
    from laconic_ray.index import InvertedIndex

    docs, _, ids, tmp, rows = written(args.docs, args.queries)
    whole = InvertedIndex.build(docs, ids)
    in_process = summary(timed(lambda q: whole.search(q["indices"], q["values"], 10), rows))
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    result = {"docs": args.docs, "queries": args.queries, "in_process": in_process, "shards": {}}
    with socket.socket() as s:  # Serve's proxy keeps the port it started with: one for every round
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for n in [int(x) for x in args.shards.split(",")]:
        index = str(tmp / f"index{n}")
        run_index(
            load_config(
                IndexConfig,
                None,
                [f"input={tmp / 'vecs'}", f"output={index}", f"num_shards={n}", "num_cpus_per_task=0.5"],
            )
        )
        config = load_config(
            ServeConfig,
            None,
            [f"index={index}", f"name=bench{n}", f"port={port}", "num_cpus_per_shard=0.5", "http_cpus=0.5"],
        )
        client = ShardedSearcher(index, name=config.name, num_cpus_per_shard=0.5)
        plain = ShardedSearcher.attach(index, config.name, direct=False)
        measured = {
            "python_client_actor_calls": summary(timed(lambda q, c=plain: c.search(q, 10), rows)),
            "python_client": summary(timed(lambda q, c=client: c.search(q, 10), rows)),
        }
        # two lanes per shard (in_flight's default for one replica)
        assert client.stats()["direct_channels"] == 2 * n, "not every shard was reached directly"
        deploy(config, config.storage.options())
        urls = {"http": f"http://127.0.0.1:{port}"}
        if args.direct_ingress:
            direct = replica_urls(config.name, "127.0.0.1")
            assert direct, "no replica answers on its own port"
            urls["http_direct"] = direct[0]
        for label, url in urls.items():
            connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"))

            def over_http(q, connection=connection):
                body = json.dumps({"vector": q, "k": 10})
                connection.request("POST", "/search", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                assert response.status == 200, response.status

            measured[label] = summary(timed(over_http, rows))
            connection.close()
        result["shards"][n] = {
            name: {**m, "p50_overhead_ms": round(m["p50_ms"] - in_process["p50_ms"], 3)}
            for name, m in measured.items()
        }
        serve.delete(config.name)
        plain.close_channels()
        client.shutdown()
        print(json.dumps({n: result["shards"][n]}), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
