"""Throughput and latency of the sharded service under concurrent load, against the in-process ceiling.

    .venv/bin/python benchmarks/load.py [--docs 200000] [--layouts 1x1,2x1,4x1,1x2] [--concurrency 1,4,16,64]

Same synthetic SPLADE-like vectors as benchmarks/engines.py. For each layout (``SxR``: S shards x R replicas,
shard actors and the HTTP replica on this machine's cores, as `laconic serve` runs them):

* ``ceiling``: in-process ``InvertedIndex.batch_search`` over the whole collection with one thread per core,
  all queries in one call: the most queries per second these cores can search, with no serving at all
  (``one_thread_qps``: the same on one thread, what one shard actor with ``threads_per_shard=1`` can do);
* ``python``: ``concurrency`` threads of one process share one ``ShardedSearcher`` (direct channels,
  micro-batching), each sending one query at a time, closed loop, for ``--seconds``;
* ``asyncio``: ``concurrency`` asyncio tasks of one event loop share the same ``ShardedSearcher``, each
  awaiting one query at a time (``abatch_search``, the path an asyncio service and the HTTP replica take);
* ``http``: ``concurrency`` keep-alive connections, from threads of a separate process, each POSTing one
  query at a time to the HTTP replica's own port (Serve direct ingress, `laconic serve`'s default), or with
  ``--via proxy`` to Serve's port (its proxy actor, port 8000 by default).

Reported per cell: QPS, its fraction of the ceiling, p50 and p99 latency. The ceiling is measured again just
before and just after each cell (``ceiling_qps``: the pair) and the fraction is of their mean: this
machine's speed moves by tens of percent within minutes (a ceiling of 7,950 and one of 15,369 QPS in one
hour), and a fraction of a ceiling measured at another moment carries that drift. Goals (issue 21): at
concurrency 16 the Python client >= 50% of the ceiling, HTTP >= 25%, p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()


def ceiling_qps(index, queries, threads: int, repeats: int = 3) -> float:
    index.batch_search(queries[:100], 10, num_threads=threads)  # compile and warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        index.batch_search(queries, 10, num_threads=threads)
        times.append(time.perf_counter() - started)
    return queries.shape[0] / statistics.median(times)


def warm(client, rows) -> None:
    """Channels open, every shard's kernels loaded (single and batch paths), before a timed cell."""
    for q in rows[:200]:
        client.search(q, 10)
    threads = [
        threading.Thread(target=lambda s=s: [client.search(q, 10) for q in rows[s::8][:50]]) for s in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def python_load(client, rows, concurrency: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def run(slot: int) -> None:
        i = slot * 997
        mine = latencies[slot]
        while not stop.is_set():
            started = time.perf_counter()
            client.search(rows[i % len(rows)], 10)
            mine.append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=run, args=(s,)) for s in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return summary(latencies, time.perf_counter() - started)


def asyncio_load(client, rows, concurrency: int, seconds: float) -> dict:
    import asyncio

    latencies: list[float] = []

    async def run(slot: int, until: float) -> None:
        i = slot * 997
        while time.perf_counter() < until:
            started = time.perf_counter()
            await client.abatch_search([rows[i % len(rows)]], 10)
            latencies.append(time.perf_counter() - started)
            i += 1

    async def load() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(run(s, started + seconds) for s in range(concurrency)))
        return time.perf_counter() - started

    return summary([latencies], asyncio.run(load()))


def summary(latencies: list[list[float]], elapsed: float) -> dict:
    """QPS, p50 and p99 of per-caller latency lists."""
    every = np.concatenate([np.asarray(x, float) for x in latencies])
    return {
        "qps": round(len(every) / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(every, 50)), 3),
        "p99_ms": round(1000 * float(np.percentile(every, 99)), 3),
    }


def http_load(url: str, bodies_file: str, concurrency: int, seconds: float) -> dict:
    """POST /search from ``concurrency`` keep-alive connections in a separate process (so that the client's
    work does not share this process's GIL), closed loop; latencies measured per request."""
    command = [sys.executable, __file__, "--http-client", url, bodies_file, str(concurrency), str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def http_client(url: str, bodies_file: str, concurrency: int, seconds: float) -> None:
    """The load generator process of :func:`http_load`; prints one JSON line."""
    import http.client

    bodies = Path(bodies_file).read_text().splitlines()
    addresses = [u.removeprefix("http://").split(":") for u in url.split(",")]  # one per HTTP replica
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = threading.Event()

    def run(slot: int, until: threading.Event, record: bool) -> None:
        host, port = addresses[slot % len(addresses)]  # connections spread over the replicas
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        i = slot * 997
        while not until.is_set():
            started = time.perf_counter()
            connection.request(
                "POST", "/search", bodies[i % len(bodies)], {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            if record:
                latencies[slot].append(time.perf_counter() - started)
                errors[slot] += response.status != 200
            i += 1
        connection.close()

    warm = threading.Event()
    warmers = [threading.Thread(target=run, args=(s, warm, False)) for s in range(concurrency)]
    for t in warmers:
        t.start()
    time.sleep(1.0)
    warm.set()
    for t in warmers:
        t.join()
    threads = [threading.Thread(target=run, args=(s, stop, True)) for s in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({**summary(latencies, time.perf_counter() - started), "errors": sum(errors)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--layouts", default="1x1,2x1,4x1,1x2", help="shards x replicas, comma-separated")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads-per-shard", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=None, help="batches out at once (default max(2, R))")
    parser.add_argument("--clients", default="python,asyncio,http")
    parser.add_argument("--http-replicas", type=int, default=1)
    parser.add_argument(
        "--via",
        default="replicas",
        choices=["replicas", "proxy"],
        help="HTTP to the replicas' ports or Serve's",
    )
    parser.add_argument("--http-client", nargs=4, help=argparse.SUPPRESS)  # the HTTP load process
    args = parser.parse_args()
    if args.http_client:
        url, bodies, concurrency, seconds = args.http_client
        return http_client(url, bodies, int(concurrency), float(seconds))
    from laconic_ray.distributed.http import DIRECT_INGRESS_ENV

    os.environ.update(DIRECT_INGRESS_ENV)  # before Ray starts: Serve's processes read it at start

    import ray
    from ray import serve
    from synthetic import written

    from laconic_ray.config import IndexConfig, ServeConfig, load_config
    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV
    from laconic_ray.distributed.http import deploy, replica_urls
    from laconic_ray.distributed.index import run_index
    from laconic_ray.distributed.service import searcher_from
    from laconic_ray.index import InvertedIndex

    docs, queries, ids, tmp, rows = written(args.docs, args.queries)
    (tmp / "bodies.jsonl").write_text("\n".join(json.dumps({"vector": r, "k": 10}) for r in rows) + "\n")
    whole = InvertedIndex.build(docs, ids)
    ceiling = ceiling_qps(whole, queries, os.cpu_count() or 1)
    one_thread = ceiling_qps(whole, queries, 1)  # what one shard actor (threads_per_shard=1) can reach
    clients = set(args.clients.split(","))
    cores = os.cpu_count() or 1

    def beside_ceiling(cell: Callable[..., dict], *args: Any) -> dict:
        """``cell(*args)``, with the ceiling measured just before and just after it."""
        ceilings = [ceiling_qps(whole, queries, cores)]
        result = cell(*args)
        ceilings.append(ceiling_qps(whole, queries, cores))
        result["ceiling_qps"] = [round(c, 1) for c in ceilings]
        result["of_ceiling"] = round(result["qps"] / statistics.mean(ceilings), 3)
        return result

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    result = {
        "docs": args.docs,
        "cores": os.cpu_count(),
        "ceiling_qps": round(ceiling, 1),
        "one_thread_qps": round(one_thread, 1),
        "layouts": {},
    }
    print(json.dumps({"ceiling_qps": result["ceiling_qps"]}), file=sys.stderr)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    built: set[int] = set()
    for layout in args.layouts.split(","):
        n, replicas = (int(x) for x in layout.split("x"))
        index = str(tmp / f"index{n}")
        if n not in built:
            run_index(
                load_config(
                    IndexConfig,
                    None,
                    [f"input={tmp / 'vecs'}", f"output={index}", f"num_shards={n}", "num_cpus_per_task=0.5"],
                )
            )
            built.add(n)
        config = load_config(
            ServeConfig,
            None,
            [
                f"index={index}",
                f"name=load{n}x{replicas}",
                f"replicas={replicas}",
                "num_cpus_per_shard=0.5",
                "http_cpus=0.5",
                f"http_replicas={args.http_replicas}",
                f"threads_per_shard={args.threads_per_shard}",
                f"in_flight={'null' if args.in_flight is None else args.in_flight}",
                "timeout_s=60",
            ],
        )
        searcher = searcher_from(config, name=config.name)
        cells: dict[str, dict] = {}
        try:
            for c in concurrency:
                for kind, cell in (("python", python_load), ("asyncio", asyncio_load)):
                    if kind in clients:
                        warm(searcher, rows)
                        cells[f"{kind} c={c}"] = beside_ceiling(cell, searcher, rows, c, args.seconds)
                        print(
                            json.dumps({layout: {f"{kind} c={c}": cells[f"{kind} c={c}"]}}), file=sys.stderr
                        )
            if "http" in clients:
                deploy(config, config.storage.options())
                deadline = time.monotonic() + 60  # every replica's own port, not only the first up
                while len(urls := replica_urls(config.name, "127.0.0.1")) < args.http_replicas:
                    assert time.monotonic() < deadline, f"{len(urls)} of {args.http_replicas} HTTP replicas"
                    time.sleep(0.5)
                url = ",".join(urls) if args.via == "replicas" else f"http://127.0.0.1:{config.port}"
            for c in concurrency if "http" in clients else []:
                # (the HTTP load process warms up for 1 s before its timed loop)
                cells[f"http c={c}"] = beside_ceiling(
                    http_load, url, str(tmp / "bodies.jsonl"), c, args.seconds
                )
                print(json.dumps({layout: {f"http c={c}": cells[f"http c={c}"]}}), file=sys.stderr)
        finally:
            if "http" in clients:
                serve.delete(config.name)
            searcher.shutdown()
        result["layouts"][layout] = cells
    print(json.dumps(result))


if __name__ == "__main__":
    main()
