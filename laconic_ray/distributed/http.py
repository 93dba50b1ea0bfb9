"""HTTP front end: a Ray Serve application with a FastAPI ingress in front of a ShardedSearcher.

    POST /search        {"query": "text"} or {"vector": {"indices": [...], "values": [...]}}, "k": 10
    POST /batch_search  {"queries": [<query or vector>, ...], "k": 10}
    GET  /health        every shard replica answering?
    GET  /stats         per-shard docs, calls, latency, restarts
    GET  /openapi.json, /docs

Requests are validated before any shard sees them: bodies over ``max_body_bytes`` get 413 before they are
parsed; malformed bodies get FastAPI's 422; requests outside the service's limits (k, batch size, text
length, terms per vector, term ids beyond the vocabulary, negative or non-finite weights, also after summing
a repeated id, empty vectors or texts, text without a model) get 422 with a message that names the field.
Nothing a client sends can cause a 5xx (tests/ray/test_http_fuzz.py runs schemathesis against the schema).
``/health`` names the index and its manifest's checksum, so a client can tell which index answers.
Binds 127.0.0.1 unless configured otherwise.
"""

import contextlib
import gc
import logging
import os
import time
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from ray import serve
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from laconic_ray.distributed.requests import VectorError, check_vector
from laconic_ray.distributed.serving import ShardedSearcher
from laconic_ray.index.inverted import QueryError
from laconic_ray.storage import StorageOptions

log = logging.getLogger(__name__)

# The service's limits, set by SearchService in its replica process (the body limit runs before any route).
LIMITS = {"max_body_bytes": 8 << 20}


class SparseVector(BaseModel):
    indices: list[Annotated[int, Field(ge=0)]] = Field(description="vocabulary ids (max_query_terms at most)")
    values: list[Annotated[float, Field(ge=0)]] = Field(
        description="weights, finite and >= 0, one per id (a repeated id's weights are summed)"
    )

    @model_validator(mode="after")
    def _same_length(self) -> "SparseVector":
        if len(self.indices) != len(self.values):
            raise ValueError(f"vector has {len(self.indices)} indices but {len(self.values)} values")
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
    k: int = Field(10, ge=1, description="results to return (max_k at most)")


class BatchSearchRequest(BaseModel):
    queries: list[Query] = Field(min_length=1, description="max_batch queries at most")
    k: int = Field(10, ge=1)


class Hit(BaseModel):
    doc_id: str
    score: float


class SearchResponse(BaseModel):
    hits: list[Hit]
    partial: bool = Field(description="true when some shard did not answer; see missing_shards and missing")
    missing_shards: list[int]
    missing: list[str] = Field(
        default_factory=list, description='other parts that did not answer: "bm25" (retriever=hybrid)'
    )
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    took_ms: float


class Problem(BaseModel):
    detail: str = Field(description="what is wrong, naming the field")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, then the field's path")
    msg: str
    type: str


class InvalidRequest(BaseModel):
    detail: str | list[FieldError] = Field(
        description="a message naming the field (limits, vectors), or FastAPI's list of field errors (types)"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": Problem,
        "description": "malformed request framing (e.g. a content-length that is no number)",
    },
    413: {
        "content": {"text/plain": {"schema": {"type": "string"}}},
        "description": "request body larger than max_body_bytes (Content Too Large)",
    },
    422: {"model": InvalidRequest, "description": "invalid request: the message names the field"},
}


class BodyLimit:
    """Starlette's request-body limit (413 before the body is parsed, chunked bodies included), with the limit
    read when a request arrives: it is set per replica, after this module's app is built."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await RequestBodyLimitMiddleware(self.app, LIMITS["max_body_bytes"])(scope, receive, send)


app = FastAPI(title="laconic_ray search", description="Learned sparse retrieval over sharded CPU indexes.")
app.add_middleware(BodyLimit)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the offending input: a NaN or Infinity there made the error response
    itself unencodable (a 500), and a large body would be sent back whole."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


def tune_collector(threshold: int | None) -> None:
    """Python's garbage collector in an HTTP replica (a process of its own: Serve starts one per replica),
    which allocates many short-lived containers per request on one event loop: with Python's young-generation
    threshold of 700, a 2-core VM at ~1,000 requests/s ran ~250 young collections a second and a full one
    (9-18 ms, the event loop stopped) about every half second; at 20,000, none of either in 20 s
    (benchmarks/README.md). Reference cycles are still collected, after more allocations. None: Python's."""
    if threshold is not None:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


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
        searcher_args: dict[str, Any],
        gc_threshold: int | None,
    ) -> None:
        tune_collector(gc_threshold)
        # the module's own dict, which BodyLimit reads: Serve may ship this class by value (cloudpickle), and
        # a by-value method's globals are a copy
        from laconic_ray.distributed import http as this_module

        this_module.LIMITS["max_body_bytes"] = limits["max_body_bytes"]
        kind = ShardedSearcher
        if "bm25" in searcher_args:  # retriever=hybrid
            from laconic_ray.distributed.lexical import HybridSearcher as kind
        self.searcher = kind.attach(
            index, name, replicas=replicas, model=model, options=StorageOptions(**options), **searcher_args
        )
        self.limits = limits

    def _check(self, queries: list[Query], k: int, batch: bool) -> list[Any]:
        """Every limit and every vector checked here, each error naming its field (``queries[i].vector.values``
        on /batch_search, ``vector.values`` on /search), so that shards only see answerable queries."""
        if k > self.limits["max_k"]:
            raise HTTPException(422, f"k: {k} is above this service's limit of {self.limits['max_k']}")
        if len(queries) > self.limits["max_batch"]:
            raise HTTPException(
                422, f"queries: {len(queries)} is above the batch limit of {self.limits['max_batch']}"
            )
        out: list[Any] = []
        for i, q in enumerate(queries):
            where = f"queries[{i}]." if batch else ""
            if q.query is not None:
                if self.searcher.encoder is None:
                    raise HTTPException(422, f"{where}query: this service has no model; send 'vector'")
                if not q.query.strip():
                    raise HTTPException(422, f"{where}query: empty text")
                if len(q.query) > self.limits["max_query_chars"]:
                    raise HTTPException(
                        422,
                        f"{where}query: {len(q.query)} characters, the limit is "
                        f"{self.limits['max_query_chars']}",
                    )
                out.append(q.query)
                continue
            try:
                check_vector(
                    q.vector.indices,
                    q.vector.values,
                    self.searcher.vocab_size,
                    self.limits["max_query_terms"],
                )
            except VectorError as e:
                field = f"{where}vector{'.' + e.field if e.field else ''}"
                raise HTTPException(422, f"{field}: {e.reason}") from None
            out.append({"indices": q.vector.indices, "values": q.vector.values})
        return out

    async def _respond(self, queries: list[Any], k: int) -> list[dict[str, Any]]:
        """The answers as plain dicts of the response models' shape: returned inside a JSONResponse, they are
        serialised once, not built into models and validated again (a measurable share of a request)."""
        started = time.perf_counter()
        try:
            results = await self.searcher.abatch_search(queries, k)
        except QueryError as e:
            raise HTTPException(422, str(e)) from None
        took = 1000 * (time.perf_counter() - started)
        return [{**r.as_dict(), "took_ms": took} for r in results]

    @app.post("/search", response_model=SearchResponse, responses=ERRORS)
    async def search(self, request: SearchRequest) -> JSONResponse:
        return JSONResponse((await self._respond(self._check([request], request.k, False), request.k))[0])

    @app.post("/batch_search", response_model=BatchSearchResponse, responses=ERRORS)
    async def batch_search(self, request: BatchSearchRequest) -> JSONResponse:
        started = time.perf_counter()
        results = await self._respond(self._check(request.queries, request.k, True), request.k)
        return JSONResponse({"results": results, "took_ms": 1000 * (time.perf_counter() - started)})

    @app.get("/health", responses={503: {"model": Problem, "description": "some shard replica is down"}})
    def health(self) -> dict[str, Any]:
        status = self.searcher.health()
        if not status["ok"]:
            raise HTTPException(503, f"not answering: {', '.join(status['down'])}")
        return {**status, "index": self.searcher.index, "manifest_sha256": self.searcher.manifest_sha256}

    @app.get("/stats")
    def stats(self) -> dict[str, Any]:
        return {
            **self.searcher.stats(),
            "http_replica": {"pid": os.getpid(), "gc_threshold": gc.get_threshold()},
        }


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


def _check_running_proxies(host: str, port: int, deadline_s: float) -> None:
    # serve.start() on a cluster where Serve already runs keeps the running proxies' options and only logs a
    # warning; an app deployed there would answer somewhere else than the caller was told.
    running = serve.context._get_global_client().http_config
    if (running.host, running.port) != (host, port):
        raise ValueError(
            f"Ray Serve already runs on this cluster with HTTP on {running.host}:{running.port}, not the "
            f"configured {host}:{port}; set host={running.host} port={running.port}, or stop it first "
            "(`serve shutdown`)"
        )
    if running.request_timeout_s != deadline_s:
        log.warning(
            "Ray Serve already runs on this cluster with request_timeout_s=%s: its proxies answer 408 after "
            "that, not after the configured %s s (restart Serve, `serve shutdown`, to change it)",
            running.request_timeout_s,
            deadline_s,
        )


def deploy(config, options: StorageOptions) -> str:
    """Start Serve on ``config.host:config.port`` and run the app; returns its base URL."""
    import dataclasses

    # a log line per request (written and flushed in the request's path, in the proxy and the replica) is
    # a measurable share of a few-millisecond request on small machines: off unless asked for
    logging_config = {"enable_access_log": config.access_log}
    http_options = {"host": config.host, "port": config.port, "request_timeout_s": config.http_deadline_s}
    serve.start(http_options=http_options, logging_config=logging_config)
    _check_running_proxies(config.host, config.port, config.http_deadline_s)
    limits = {
        "max_k": config.max_k,
        "max_batch": config.max_batch,
        "max_query_chars": config.max_query_chars,
        "max_query_terms": config.max_query_terms,
        "max_body_bytes": config.max_body_bytes,
    }
    searcher_args = {
        "timeout_s": config.timeout_s,
        "retries": config.retries,
        "mode": config.mode,
        "direct": config.direct,
        "max_batch_queries": config.max_batch_queries,
        "batch_wait_ms": config.batch_wait_ms,
        "in_flight": config.in_flight,
        "check_model": config.check_model,
        "quantization": config.quantization,
        "startup_timeout_s": config.startup_timeout_s,
    }
    if config.retriever == "hybrid":
        from laconic_ray.distributed.service import searcher_kind

        searcher_args.update(searcher_kind(config)[1])
    service = SearchService.options(
        num_replicas=config.http_replicas,
        ray_actor_options={"num_cpus": config.http_cpus},
        logging_config=logging_config,
        # Serve's default of 5 requests per replica queued the rest behind them: concurrent requests are
        # what the micro-batcher turns into one shard call, so a replica takes as many as a batch holds
        max_ongoing_requests=config.max_batch_queries,
    ).bind(
        config.index,
        config.name,
        config.replicas,
        config.model,
        limits,
        dataclasses.asdict(options),
        searcher_args,
        config.http_gc_threshold,
    )
    try:
        serve.run(service, name=config.name, route_prefix="/")
    except BaseException:  # a half-deployed app would keep restarting replicas that cannot start
        with contextlib.suppress(Exception):
            serve.delete(config.name)
        raise
    return f"http://{config.host}:{config.port}"
