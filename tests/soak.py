"""A fault soak of the sharded search service (issue 21): every answer checked, faults injected on a schedule.

Used by tests/ray/test_soak.py (reduced: a real collection, 2 shards, ~1 minute) and benchmarks/soak.py (full:
200k synthetic documents, 4 shards). While two clients stream queries (the Python client over direct
channels, and HTTP through Serve's proxy) and compare every answer with in-process search of the same
vectors, the soak

* sends bad queries on both paths (inf, NaN, finite weights whose repeated id sums to inf, 1e39, negative,
  out-of-vocabulary, empty): each must be refused (QueryError / HTTP 4xx) with the field named (an HTTP
  server failure, 5xx or a dropped connection, is retried first, as by any client);
* opens stray connections to every shard's channel listener (the one the client uses: a Unix socket on this
  node): silent (held open), reset, garbage bytes;
* kills a shard actor's process (SIGKILL) and an HTTP replica (Serve starts another).

Reported: answers, wrong answers, lost queries (no answer within ``give_up_s`` of retrying), partial answers,
bad queries refused / not refused properly, and per fault the seconds until each client's p99 latency over a
sliding 1 s window is back within ``max(2 x baseline p99, baseline p99 + 5 ms)``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from laconic_ray.distributed.channel import connect

log = logging.getLogger(__name__)

BAD_QUERIES = [  # (name, vector, the field a refusal must name)
    ("inf", {"indices": [3, 7], "values": [1.0, float("inf")]}, "values"),
    ("nan", {"indices": [3], "values": [float("nan")]}, "values"),
    ("duplicates summing to inf", {"indices": [5, 5], "values": [3e38, 3e38]}, "values"),
    ("inf as float32", {"indices": [5], "values": [1e39]}, "values"),
    ("negative", {"indices": [5], "values": [-1.0]}, "values"),
    ("out of vocabulary", {"indices": [1, 10**9], "values": [1.0, 1.0]}, "indices"),
    ("empty", {"indices": [], "values": []}, "indices"),
]


@dataclasses.dataclass
class Stream:
    """One client's record: (sent at, latency) of every answered query, and what went wrong."""

    name: str
    timeline: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    answered: int = 0
    wrong: int = 0
    partial: int = 0
    lost: int = 0
    retried: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)  # of lost queries
    retry_reasons: list[str] = dataclasses.field(default_factory=list)  # of answered ones (first few)


def _expected(reference, queries: list[dict], k: int) -> list[list[str]]:
    return [reference.search(q["indices"], q["values"], k)[0] for q in queries]


def _python_client(client, queries, expected, k, stop, give_up_s, stream: Stream) -> None:
    i = 0
    while not stop.is_set():
        q = i % len(queries)
        started = time.perf_counter()
        while True:
            try:
                result = client.search(queries[q], k=k)
                break
            except Exception as e:  # every failure is retried until give_up_s, then the query is lost
                stream.retried += 1
                stream.retry_reasons.append(repr(e)[:300])
                if time.perf_counter() - started > give_up_s:
                    stream.lost += 1
                    stream.errors.append(repr(e))
                    result = None
                    break
                time.sleep(0.05)
        if result is not None:
            stream.timeline.append((started, time.perf_counter() - started))
            stream.answered += 1
            stream.partial += result.partial
            stream.wrong += result.doc_ids != expected[q]
        i += 1


def _post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data or b"{}")
    except ValueError:
        return response.status, {"raw": data[:200].decode(errors="replace")}


def _post_retrying(
    connection: http.client.HTTPConnection,
    body: dict,
    answered: Callable[[int], bool],
    give_up_s: float,
    retried: Callable[[str], None],
) -> tuple[int | None, Any, str]:
    """POST /search until the status is ``answered`` or ``give_up_s`` has passed, reporting each failed
    attempt (another status, a dropped connection) to ``retried``: ``(status, answer, last failure)``, the
    status None when the last attempt got no answer."""
    started = time.perf_counter()
    while True:
        try:  # Python's json writes NaN/Infinity literals, which the service's parser reads
            status, answer = _post(connection, "/search", body)
            if answered(status):
                return status, answer, ""
            failure = f"HTTP {status}: {answer}"
        except (OSError, http.client.HTTPException) as e:
            connection.close()  # reconnects on the next request
            status, answer, failure = None, None, repr(e)
        retried(failure)
        if time.perf_counter() - started > give_up_s:
            return status, answer, failure
        time.sleep(0.05)


def _http_client(url, queries, expected, k, stop, give_up_s, stream: Stream) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def retried(failure: str) -> None:
        stream.retried += 1
        stream.retry_reasons.append(failure[:300])

    i = 0
    while not stop.is_set():
        q = i % len(queries)
        started = time.perf_counter()
        status, body, failure = _post_retrying(
            connection, {"vector": queries[q], "k": k}, lambda status: status == 200, give_up_s, retried
        )
        if status != 200:
            stream.lost += 1
            stream.errors.append(failure)
        else:
            stream.timeline.append((started, time.perf_counter() - started))
            stream.answered += 1
            stream.partial += body["partial"]
            stream.wrong += [h["doc_id"] for h in body["hits"]] != expected[q]
        i += 1
    connection.close()


def _after_fault(faults: list[tuple[str, float]]) -> dict[str, Any]:
    """The latest fault injected and the seconds since (None, None before the first)."""
    if not faults:
        return {"after": None, "seconds": None}
    fault, at = faults[-1]
    return {"after": fault, "seconds": round(time.perf_counter() - at, 3)}


def _bad_queries(client, url, stop, every_s, give_up_s, faults, counts: dict[str, Any]) -> None:
    from laconic_ray.index.inverted import QueryError

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    i = 0
    while not stop.wait(every_s):
        name, vector, field = BAD_QUERIES[i % len(BAD_QUERIES)]
        i += 1
        counts["sent"] += 2
        try:
            client.search(vector, k=10)
            counts["not_refused"].append(f"python client answered {name}")
        except QueryError as e:
            counts["refused"] += field in str(e)
            if field not in str(e):
                counts["not_refused"].append(f"python client: {name}: {e} (no field {field!r})")
        except Exception as e:
            counts["not_refused"].append(f"python client: {name}: {e!r}")
        # A request in flight on an HTTP replica that is killed gets Serve's 500, a dropped connection, or
        # (held by the proxy) its 408 at request_timeout_s: a server failure, which a client retries, not an
        # answer to the query. Retried as the good queries are, each retry recorded with the fault it
        # followed; the answer must then be a refusal.
        status, answer, _ = _post_retrying(
            connection,
            {"vector": vector, "k": 10},
            lambda status: status < 500 and status != 408,
            give_up_s,
            lambda failure, name=name: counts["retried"].append(
                {"query": name, "failure": failure[:200], **_after_fault(faults)}
            ),
        )
        named = field in json.dumps(answer)
        counts["refused"] += status is not None and 400 <= status < 500 and named
        if not (status is not None and 400 <= status < 500 and named):
            counts["not_refused"].append(f"http: {name}: {status} {answer}")
    connection.close()


def _shard_addresses(searcher) -> list[tuple[str, int]]:
    ip = ray.util.get_node_ip_address()
    return [ray.get(a.open_channel.remote(ip), timeout=30)[:2] for row in searcher.actors for a in row]


def stray_connections(addresses, how: str, held: list[socket.socket]) -> None:
    """Connect to every shard listener and misbehave: ``silent`` (held open), ``reset``, ``garbage``."""
    for host, port in addresses:
        sock = connect(host, port, 5.0)
        if how == "silent":
            held.append(sock)
            continue
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.sendall(os.urandom(512) + b"\xff\xff\xff\xff" + b"\x7f" * 8)
        sock.close()


def kill_shard(searcher, shard: int) -> None:
    pid = ray.get(searcher.actors[shard][0].stats.remote(), timeout=30)["pid"]
    os.kill(pid, signal.SIGKILL)


def kill_http_replica(app: str) -> str:
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"{app}#" in a["name"]
    ]
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def recovery(
    timeline: list[tuple[float, float]], fault_at: float, limit_s: float, until: float
) -> float | None:
    """Seconds from ``fault_at`` to the end of the first 1 s window (sliding by 0.25 s) whose p99 latency is
    within ``limit_s``, counting a query by when it was sent; None if none before ``until``."""
    sent = np.array([t for t, _ in timeline])
    latency = np.array([s for _, s in timeline])
    start = fault_at
    while start + 1.0 <= until:
        window = latency[(sent >= start) & (sent < start + 1.0)]
        if len(window) >= 3 and np.percentile(window, 99) <= limit_s:
            return round(start + 1.0 - fault_at, 2)
        start += 0.25
    return None


FAULTS = ("stray silent", "stray reset", "stray garbage", "kill shard actor", "kill http replica")


def run_soak(
    searcher,
    app: str,
    url: str,
    reference,
    queries: list[dict],
    *,
    k: int = 10,
    baseline_s: float = 5.0,
    fault_gap_s: float = 8.0,
    give_up_s: float = 30.0,
    bad_every_s: float = 0.25,
) -> dict[str, Any]:
    """Run the soak against a started service: ``searcher`` owns the named shard actors of app ``app``,
    whose HTTP front end answers at ``url``; ``reference`` is an in-process index of the same vectors."""
    from laconic_ray.distributed.serving import ShardedSearcher

    expected = _expected(reference, queries, k)
    client = ShardedSearcher.attach(searcher.index, searcher.name, replicas=searcher.replicas, timeout_s=30)
    stop = threading.Event()
    streams = {"python_client": Stream("python_client"), "http": Stream("http")}
    bad: dict[str, Any] = {"sent": 0, "refused": 0, "not_refused": [], "retried": []}
    faults: list[tuple[str, float]] = []
    threads = [
        threading.Thread(
            target=_python_client,
            args=(client, queries, expected, k, stop, give_up_s, streams["python_client"]),
        ),
        threading.Thread(
            target=_http_client, args=(url, queries, expected, k, stop, give_up_s, streams["http"])
        ),
        threading.Thread(target=_bad_queries, args=(client, url, stop, bad_every_s, give_up_s, faults, bad)),
    ]
    for t in threads:
        t.start()
    held: list[socket.socket] = []
    try:
        started = time.perf_counter()
        time.sleep(baseline_s)
        baseline_end = time.perf_counter()
        for fault in FAULTS:
            faults.append((fault, time.perf_counter()))
            if fault.startswith("stray"):
                stray_connections(_shard_addresses(searcher), fault.split()[1], held)
            elif fault == "kill shard actor":
                kill_shard(searcher, searcher.num_shards - 1)
            else:
                log.info("killed %s", kill_http_replica(app))
            time.sleep(fault_gap_s)
        ended = time.perf_counter()
    finally:
        stop.set()
        for t in threads:
            t.join(give_up_s + 30)
        for sock in held:
            sock.close()
        client.close_channels()
    report: dict[str, Any] = {
        "duration_s": round(ended - started, 1),
        "bad_queries": {
            "sent": bad["sent"],
            "refused_naming_the_field": bad["refused"],
            "other": bad["not_refused"][:10],
            # an HTTP server failure is expected only in flight on the replica the soak kills (Serve's 500,
            # or its 408 for a request the proxy held), within the 5 s the recovery goal allows
            "server_failures": len(bad["retried"]),
            "server_failures_not_at_a_replica_kill": [
                r for r in bad["retried"] if not (r["after"] == "kill http replica" and r["seconds"] < 5)
            ][:10],
        },
        "streams": {},
    }
    for name, stream in streams.items():
        base = [s for t, s in stream.timeline if started <= t < baseline_end]
        p99 = float(np.percentile(base, 99)) if base else 0.0
        limit = max(2 * p99, p99 + 0.005)
        bounds = [t for _, t in faults[1:]] + [ended]
        report["streams"][name] = {
            "answered": stream.answered,
            "wrong": stream.wrong,
            "partial": stream.partial,
            "lost": stream.lost,
            "retried": stream.retried,
            "errors": stream.errors[:5],
            "retry_reasons": stream.retry_reasons[:5],
            "baseline_p50_ms": round(1000 * float(np.median(base)), 3) if base else None,
            "baseline_p99_ms": round(1000 * p99, 3),
            "normal_p99_limit_ms": round(1000 * limit, 3),
            "recovery_s": {
                fault: recovery(stream.timeline, at, limit, until)
                for (fault, at), until in zip(faults, bounds, strict=True)
            },
        }
    return report
