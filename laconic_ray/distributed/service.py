"""``laconic serve`` and ``laconic search``: start or use a running search service.

``serve`` starts named shard actors and the HTTP application, then keeps running until interrupted (its JSON
summary is printed when it stops). ``search`` asks a running service over HTTP when one answers at
``host:port``, else starts shard actors of its own for the one query.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from laconic_ray.config import ConfigError, ServeConfig
from laconic_ray.distributed.cluster import ensure_ray
from laconic_ray.distributed.resources import size_for_cluster
from laconic_ray.distributed.serving import ShardedSearcher
from laconic_ray.index.partition import manifest_digest, read_index_manifest
from laconic_ray.model.encoder import check_model_source

log = logging.getLogger(__name__)


def searcher_from(config: ServeConfig, name: str | None = None) -> ShardedSearcher:
    """Shard actors (and for retriever=hybrid, the BM25 actor) and a client as configured."""
    kind, extra = searcher_kind(config)
    return kind(
        config.index,
        **extra,
        model=config.model,
        replicas=config.replicas,
        num_cpus_per_shard=config.num_cpus_per_shard,
        shard_resource=config.shard_resource,
        max_restarts=config.max_restarts,
        timeout_s=config.timeout_s,
        retries=config.retries,
        mode=config.mode,
        options=config.storage.options(),
        name=name,
        verify=config.verify,
        threads_per_shard=config.threads_per_shard,
        direct=config.direct,
        startup_timeout_s=config.startup_timeout_s,
        max_batch_queries=config.max_batch_queries,
        batch_wait_ms=config.batch_wait_ms,
        in_flight=config.in_flight,
        check_model=config.check_model,
        quantization=config.quantization,
    )


def searcher_kind(config: ServeConfig) -> tuple[type[ShardedSearcher], dict[str, Any]]:
    """The searcher class for ``config.retriever`` and the arguments only it takes."""
    if config.retriever != "hybrid":
        return ShardedSearcher, {}
    from laconic_ray.distributed.lexical import HybridSearcher, LexicalSpec

    spec = LexicalSpec(config.bm25, config.bm25_k1, config.bm25_b, config.bm25_layout)
    return HybridSearcher, {"bm25": spec, "hybrid": config.hybrid, "bm25_cpus": config.bm25_cpus}


def run_serve(
    config: ServeConfig, stop: threading.Event | None = None, ready: threading.Event | None = None
) -> dict[str, Any]:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM on the main thread); ``ready`` is set once the HTTP
    application answers, for callers that run the service on a thread of their own."""
    import os

    from ray import serve

    from laconic_ray.distributed.http import DIRECT_INGRESS_ENV, deploy, replica_urls

    shards = preflight(config)
    if config.direct_ingress:  # read by Serve's processes when they start: before Ray does, if it starts here
        os.environ.update(DIRECT_INGRESS_ENV)
    ensure_ray(config.ray)
    config = sized(config, shards, http=True)
    started = time.perf_counter()
    searcher = searcher_from(config, name=config.name)
    deployed = False
    try:  # whatever fails from here on, no detached shard actor or Serve app outlives this command
        url = deploy(config, config.storage.options())
        deployed = True
        log.info("serving %s at %s (OpenAPI at %s/docs); Ctrl-C stops", config.index, url, url)
        direct = replica_urls(config.name, config.host) if config.direct_ingress else []
        if direct:
            log.info("HTTP replicas answer directly at %s (fastest)", ", ".join(direct))
        elif config.direct_ingress:
            log.warning(
                "direct_ingress=true but no replica answers on a port of its own: the Ray cluster was "
                "started without %s",
                " ".join(f"{k}={v}" for k, v in DIRECT_INGRESS_ENV.items()),
            )
        if ready is not None:
            ready.set()
        stop = stop or threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        stats = searcher.stats()
    finally:
        if deployed:
            serve.delete(config.name)
        searcher.shutdown()
    return {
        "url": url,
        "replica_urls": direct,
        "index": config.index,
        "uptime_s": round(time.perf_counter() - started, 1),
        "docs": stats["docs"],
        "shards": len(stats["shards"]),
    }


def preflight(config: ServeConfig) -> int:
    """What can be checked before a cluster starts: the index is finished, the model is loadable. Returns
    the index's shard count."""
    manifest = read_index_manifest(config.index, config.storage.options())
    if config.model:
        check_model_source(config.model, config.storage.options())
    return len(manifest.files)


def sized(config: ServeConfig, shards: int, http: bool) -> ServeConfig:
    """Shard actors' (and HTTP replicas') CPUs fitted to the cluster: see resources.py."""
    groups = {"shard actors": (shards * config.replicas, config.num_cpus_per_shard)}
    knobs = ["num_cpus_per_shard"]
    if http:
        groups["HTTP replicas"] = (config.http_replicas, config.http_cpus)
        knobs.append("http_cpus")
    if config.retriever == "hybrid":
        groups["BM25 actor"] = (1, config.bm25_cpus)
        knobs.append("bm25_cpus")
    sizes = size_for_cluster(groups, ", ".join(knobs) + " or replicas")
    return dataclasses.replace(
        config,
        num_cpus_per_shard=sizes["shard actors"],
        http_cpus=sizes.get("HTTP replicas", config.http_cpus),
        bm25_cpus=sizes.get("BM25 actor", config.bm25_cpus),
    )


def _http(config: ServeConfig, path: str, body: dict | None = None, timeout: float = 30.0) -> dict[str, Any]:
    url = f"http://{config.host}:{config.port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def run_search(config: ServeConfig) -> dict[str, Any]:
    if not config.query:
        raise ValueError('query: give the text to search (query="...")')
    try:
        health = _http(config, "/health", timeout=2.0)
    except urllib.error.HTTPError as e:  # a service answers, unhealthy: say so rather than start another
        raise RuntimeError(
            f"the service at {config.host}:{config.port} answers {e.code}: {e.read()[:300]!r}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError):
        health = None
    if health is not None:
        expected = manifest_digest(read_index_manifest(config.index, config.storage.options()))
        if health.get("manifest_sha256") != expected:
            raise ValueError(
                f"port: the service at {config.host}:{config.port} serves {health.get('index', 'another index')}"
                f", not {config.index}; stop it, or pick a port where nothing runs (port=...)"
            )
        log.info("asking the service at %s:%d", config.host, config.port)
        result = _http(config, "/search", {"query": config.query, "k": config.k})
        return {"query": config.query, "via": "http", **result}
    if not config.model:
        raise ConfigError(
            "model: laconic search needs model=<checkpoint> to encode the query text (no service answers at "
            f"{config.host}:{config.port} to do it)"
        )
    shards = preflight(config)
    ensure_ray(config.ray)
    searcher = searcher_from(sized(config, shards, http=False))
    try:
        started = time.perf_counter()
        result = searcher.search(config.query, config.k).as_dict()
        took = 1000 * (time.perf_counter() - started)
    finally:
        searcher.shutdown()
    return {"query": config.query, "via": "shard actors", "took_ms": round(took, 2), **result}
