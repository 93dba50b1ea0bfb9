"""HTTP front end: a Ray Serve application with a FastAPI ingress in front of a ShardedSearcher.

    POST /search        {"query": "text"} or {"vector": {"indices": [...], "values": [...]}}, "k": 10
    POST /batch_search  {"queries": [<query or vector>, ...], "k": 10}
    GET  /health        every shard replica answering?
    GET  /stats         per-shard docs, calls, latency, restarts
    GET  /openapi.json, /docs

Requests are validated before any shard sees them: malformed bodies get FastAPI's 422, requests outside the
service's limits (k, batch size, text length, term ids beyond the vocabulary, negative or non-finite weights,
text without a model) get 422 with a message that names the field. Nothing a client sends can cause a 5xx.
Binds 127.0.0.1 unless configured otherwise.
"""

import logging
import math
import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, model_validator
from ray import serve

from laconic_ray.distributed.serving import ShardedSearcher
from laconic_ray.index.inverted import QueryError
from laconic_ray.storage import StorageOptions

log = logging.getLogger(__name__)


class SparseVector(BaseModel):
    indices: list[int] = Field(description="vocabulary ids")
    values: list[float] = Field(description="weights, finite and >= 0, one per id")

    @model_validator(mode="after")
    def _same_length(self) -> "SparseVector":
        if len(self.indices) != len(self.values):
            raise ValueError(f"vector has {len(self.indices)} indices but {len(self.values)} values")
        if any(not math.isfinite(v) or v < 0 for v in self.values):
            raise ValueError("vector values must be finite and >= 0")
        return self


class Query(BaseModel):
    query: str | None = Field(None, description="text, encoded by the service's model")
    vector: SparseVector | None = Field(None, description="a sparse query vector")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Query":
        if (self.query is None) == (self.vector is None):
            raise ValueError("give exactly one of 'query' (text) or 'vector'")
        return self


class SearchRequest(Query):
    k: int = Field(10, ge=1, description="results to return")


class BatchSearchRequest(BaseModel):
    queries: list[Query] = Field(min_length=1)
    k: int = Field(10, ge=1)


class Hit(BaseModel):
    doc_id: str
    score: float


class SearchResponse(BaseModel):
    hits: list[Hit]
    partial: bool = Field(description="true when some shard did not answer; see missing_shards")
    missing_shards: list[int]
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    took_ms: float


app = FastAPI(title="laconic_ray search", description="Learned sparse retrieval over sharded CPU indexes.")


@serve.deployment
@serve.ingress(app)
class SearchService:
    def __init__(
        self,
        index: str,
        name: str,
        replicas: int,
        model: str | None,
        limits: dict[str, int],
        options: dict[str, Any],
        timeout_s: float,
        retries: int,
        mode: str,
        direct: bool,
    ) -> None:
        self.searcher = ShardedSearcher.attach(
            index,
            name,
            replicas=replicas,
            model=model,
            options=StorageOptions(**options),
            timeout_s=timeout_s,
            retries=retries,
            mode=mode,
            direct=direct,
        )
        self.limits = limits

    def _check(self, queries: list[Query], k: int) -> list[Any]:
        if k > self.limits["max_k"]:
            raise HTTPException(422, f"k: {k} is above this service's limit of {self.limits['max_k']}")
        if len(queries) > self.limits["max_batch"]:
            raise HTTPException(
                422, f"queries: {len(queries)} is above the batch limit of {self.limits['max_batch']}"
            )
        out: list[Any] = []
        vocab = self.searcher.vocab_size
        for i, q in enumerate(queries):
            if q.query is not None:
                if self.searcher.encoder is None:
                    raise HTTPException(422, f"queries[{i}].query: this service has no model; send 'vector'")
                if len(q.query) > self.limits["max_query_chars"]:
                    raise HTTPException(
                        422,
                        f"queries[{i}].query: {len(q.query)} characters, the limit is "
                        f"{self.limits['max_query_chars']}",
                    )
                out.append(q.query)
            else:
                bad = [t for t in q.vector.indices if not 0 <= t < vocab]
                if bad:
                    raise HTTPException(422, f"queries[{i}].vector.indices: {bad[0]} is outside [0, {vocab})")
                out.append({"indices": q.vector.indices, "values": q.vector.values})
        return out

    async def _respond(self, queries: list[Any], k: int) -> list[SearchResponse]:
        started = time.perf_counter()
        try:
            results = await self.searcher.abatch_search(queries, k)
        except QueryError as e:
            raise HTTPException(422, str(e)) from None
        took = 1000 * (time.perf_counter() - started)
        return [
            SearchResponse(
                hits=[Hit(doc_id=d, score=s) for d, s in zip(r.doc_ids, r.scores, strict=True)],
                partial=r.partial,
                missing_shards=r.missing_shards,
                took_ms=took,
            )
            for r in results
        ]

    @app.post("/search", response_model=SearchResponse)
    async def search(self, request: SearchRequest) -> SearchResponse:
        return (await self._respond(self._check([request], request.k), request.k))[0]

    @app.post("/batch_search", response_model=BatchSearchResponse)
    async def batch_search(self, request: BatchSearchRequest) -> BatchSearchResponse:
        started = time.perf_counter()
        results = await self._respond(self._check(request.queries, request.k), request.k)
        return BatchSearchResponse(results=results, took_ms=1000 * (time.perf_counter() - started))

    @app.get("/health")
    def health(self) -> dict[str, Any]:
        status = self.searcher.health()
        if not status["ok"]:
            raise HTTPException(503, f"shard replicas not answering: {', '.join(status['down'])}")
        return status

    @app.get("/stats")
    def stats(self) -> dict[str, Any]:
        return self.searcher.stats()


# Serve's direct ingress (Ray 2.60): every HTTP replica also answers on a port of its own (30000 and up, on
# the configured host), without the proxy actor, the router and a Ray task per request, and user code runs
# on the replica's event loop. Read when Serve's controller and replicas start: a local cluster gets it from
# the environment `laconic serve direct_ingress=true` sets before starting Ray; an existing cluster needs
# these variables in its nodes' environment (cluster.yaml).
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",  # else deleting the app waits >= 30 s
}


def replica_urls(name: str, host: str, timeout_s: float = 30.0) -> list[str]:
    """Base URLs of app ``name``'s HTTP replicas on their own ports (direct ingress), or [] when this process
    did not ask for direct ingress. Replicas appear in Serve's target groups a moment after ``serve.run``."""
    import os

    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        return []
    deadline = time.monotonic() + timeout_s
    while True:
        details = serve.context._get_global_client().get_serve_details()
        ports = sorted(
            target["port"]
            for group in details.get("target_groups") or []
            if group.get("app_name") == name and group.get("protocol") == "HTTP"
            for target in group["targets"]
            if target["name"].startswith("SERVE_REPLICA::")
        )
        if ports or time.monotonic() > deadline:
            return [f"http://{host}:{port}" for port in ports]
        time.sleep(0.2)


def serve_running() -> bool:
    """Is a Serve controller already running on the connected Ray cluster?"""
    return serve.context._get_global_client(raise_if_no_controller_running=False) is not None


def _check_proxy_address(host: str, port: int) -> None:
    # serve.start() on a cluster where Serve already runs keeps the running proxies' address and only logs a
    # warning; an app deployed there would answer somewhere else than the caller was told.
    running = serve.context._get_global_client().http_config
    if (running.host, running.port) != (host, port):
        raise ValueError(
            f"Ray Serve already runs on this cluster with HTTP on {running.host}:{running.port}, not the "
            f"configured {host}:{port}; set host={running.host} port={running.port}, or stop it first "
            "(`serve shutdown`)"
        )


def deploy(config, options: StorageOptions) -> str:
    """Start Serve on ``config.host:config.port`` and run the app; returns its base URL."""
    import dataclasses

    # a log line per request (written and flushed in the request's path, in the proxy and the replica) is
    # a measurable share of a few-millisecond request on small machines: off unless asked for
    logging_config = {"enable_access_log": config.access_log}
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=logging_config)
    _check_proxy_address(config.host, config.port)
    limits = {"max_k": config.max_k, "max_batch": config.max_batch, "max_query_chars": config.max_query_chars}
    service = SearchService.options(
        num_replicas=config.http_replicas,
        ray_actor_options={"num_cpus": config.http_cpus},
        logging_config=logging_config,
    ).bind(
        config.index,
        config.name,
        config.replicas,
        config.model,
        limits,
        dataclasses.asdict(options),
        config.timeout_s,
        config.retries,
        config.mode,
        config.direct,
    )
    serve.run(service, name=config.name, route_prefix="/")
    return f"http://{config.host}:{config.port}"
