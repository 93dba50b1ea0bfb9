"""Scatter-gather search over index shards held by CPU Ray actors.

    client / Serve replica ── ShardedSearcher ──scatter──► shard 0 (replica a | b)  ┐
                                │                         shard 1 (replica a | b)  ├─► merge_topk ─► results
                                └──gather (timeout, retry)◄ shard N-1              ┘

* One actor per (shard, replica) loads its shard folder from storage (memory-mapped), reserves
  ``num_cpus_per_shard`` CPUs and, optionally, one unit of a custom resource so that shards land on index
  nodes. ``max_restarts`` brings a killed actor back (it reloads its shard); ``max_task_retries`` re-sends the
  calls that were in flight, so a crash costs latency, not answers.
* Every query (or batch) goes to one replica of every shard, round-robin. A shard that does not answer within
  ``timeout_s`` is asked again (another replica if there is one) up to ``retries`` times; a shard that stays
  silent is left out and the result is marked ``partial`` with the missing shard numbers.
* Queries are text (encoded here by the model, loaded once) or sparse vectors ``{"indices", "values"}``.
* With ``direct=True`` (the default) queries travel over direct connections to the shard actors
  (channel.py: one pickled payload per shard over a socket, blocking waits), which saves the ~1 ms of task
  submission of an actor call and costs nothing when idle. A shard whose channel fails, times out or is not
  open yet gets that query through actor calls (with their timeouts and retries); its channels reopen in the
  background as soon as the actor answers again (a killed one once Ray has restarted it: every lane to it at
  once, used or not), and while that fails, at most every ``CHANNEL_RETRY_S``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import scipy.sparse as sp

from laconic_ray.distributed.channel import LOCAL, Channel, ChannelClosed, ChannelServer
from laconic_ray.distributed.requests import (
    MicroBatcher,
    check_search_args,
    check_vector,
    rows_to_csr,
    vector_row,
)
from laconic_ray.distributed.resources import brief, size_for_cluster, totals, unplaceable
from laconic_ray.index.inverted import InvertedIndex, QueryError
from laconic_ray.index.merge import merge_lists
from laconic_ray.index.partition import manifest_digest, read_index_manifest, shard_name
from laconic_ray.storage import StorageOptions, join

log = logging.getLogger(__name__)

NAMESPACE = "laconic"
CHANNEL_RETRY_S = 1.0  # a shard replica's channels are reopened at most this often (the first time at once)
WARN_EVERY_S = 10.0  # a per-query warning (a shard down, a channel failing) is logged at most this often


@dataclasses.dataclass
class SearchResult:
    doc_ids: list[str]
    scores: list[float]
    partial: bool = False
    missing_shards: list[int] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # other parts that did not answer: "bm25"

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": [{"doc_id": d, "score": s} for d, s in zip(self.doc_ids, self.scores, strict=True)],
            "partial": self.partial,
            "missing_shards": self.missing_shards,
            "missing": self.missing,
        }


class ShardServer:
    """The work of one shard actor: load a shard folder, answer batches of sparse queries."""

    def __init__(
        self,
        uri: str,
        shard: int,
        options: StorageOptions | None = None,
        verify: bool = True,
        expect_sha256: str | None = None,
        mode: str = "exact",
    ) -> None:
        self.shard = shard
        self.index = InvertedIndex.load(uri, verify=verify, options=options, expect_sha256=expect_sha256)
        self._identity = {"uri": uri, "shard": shard, "sha256": expect_sha256}
        self._warm(mode)
        self.started = time.time()
        # channel requests run on their connections' threads, actor calls on the main one; searches run side
        # by side (each thread has its own scratch), at most `num_threads` threads between them
        self._searching = threading.Condition()
        self._busy = 0  # threads searching now
        self._batches_now = 0
        self.overlap_peak = 0  # most batches searched at once (stats)
        self._channels = ChannelServer(self.batch_search)

    def batch_search(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
        vocab: int,
        k: int,
        mode: str,
        num_threads: int,
    ) -> list[tuple[list[str], list[float]]]:
        if vocab != self.index.vocab_size:
            raise QueryError(
                f"queries are over {vocab} ids, this shard's vocabulary has {self.index.vocab_size}"
            )
        threads = self._claim(len(indptr) - 1, max(1, int(num_threads)))
        try:
            if len(indptr) == 2:  # one query: the single-thread path has less overhead
                ids, scores = self.index.search(indices, values, k, mode=mode)
                return [(ids, scores.tolist())]
            return [
                (ids, scores.tolist())
                for ids, scores in self.index.search_many(indptr, indices, values, k, threads, mode=mode)
            ]
        finally:
            with self._searching:
                self._busy -= threads
                self._batches_now -= 1
                self._searching.notify_all()

    def _claim(self, n_queries: int, limit: int) -> int:
        """Threads for a batch of ``n_queries``: half of what ``limit`` leaves free (at least one; waits for
        one when none is free), so that the next batch in flight (pipelined lanes, other clients) finds a
        thread too and is searched side by side instead of queueing behind this one."""
        with self._searching:
            while self._busy >= limit:
                self._searching.wait()
            threads = min(max(1, (limit - self._busy) // 2), n_queries)
            self._busy += threads
            self._batches_now += 1
            self.overlap_peak = max(self.overlap_peak, self._batches_now)
            return threads

    def _warm(self, mode: str) -> None:
        """Load the compiled kernels of both search paths before the first query (~0.3 s from numba's cache
        on a fresh process: otherwise the first queries after a start or restart pay it), in the service's
        ``mode``: candidate search also derives its forward view here (~1 s per 200k documents)."""
        if self.index.n_docs == 0:
            return
        term = np.array([int(np.argmax(np.diff(self.index.arrays["term_ptr"])))], np.int64)
        weight = np.ones(1, np.float32)
        self.index.search(term, weight, 1, mode=mode)
        self.index.search_many(np.array([0, 1, 2]), np.repeat(term, 2), np.repeat(weight, 2), 1, 1, mode=mode)
        self.index.reset_stats()  # stats count served queries only

    def stats(self) -> dict[str, Any]:
        return {
            **self.index.stats(),
            "shard": self.shard,
            "pid": os.getpid(),
            "channel_requests": self._channels.requests,
            "channel_refused": self._channels.refused,
            "overlap_peak": self.overlap_peak,
            "started": self.started,
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }

    def identity(self) -> dict[str, Any]:
        """Which shard of which index build this actor holds (a named actor found by another process is
        reused only if it holds what that process expects)."""
        return self._identity

    def ready(self) -> int:
        """The process id: a new one after a restart."""
        return os.getpid()

    def open_channel(self, client_node_ip: str) -> tuple[str, int, bytes]:
        """Address and key of a direct connection (channel.py) for a client on ``client_node_ip``: a local
        one (a Unix socket) when it is on this node, this node's address otherwise."""
        node_ip = ray.util.get_node_ip_address()
        return self._channels.address(LOCAL if client_node_ip == node_ip else node_ip)


ShardActor = ray.remote(ShardServer)


class ShardStartupError(RuntimeError):
    """Shard actors did not start (not schedulable, not loadable, or not within the deadline)."""


def _query_error(error: BaseException) -> QueryError | None:
    """The :class:`QueryError` a shard raised inside an actor call (a deterministic answer, never retried)."""
    cause = getattr(error, "cause", None)
    return QueryError(str(cause)) if isinstance(cause, QueryError) else None


def _needs(num_cpus: float, shard_resource: str | None) -> dict[str, float]:
    return {"CPU": num_cpus, **({shard_resource: 1.0} if shard_resource else {})}


def _unschedulable(need: dict[str, float], count: int) -> str | None:
    """Why ``count`` actors needing ``need`` each can never all run on this cluster, or None if its nodes
    can hold them (counted per node from what each *has*: what is free changes, what nodes have does not,
    short of an autoscaler)."""
    if (short := unplaceable(need, count)) is None:
        return None
    fits, nodes = short
    missing = [k for k in need if not any(node.get(k, 0.0) >= need[k] for node in nodes)]
    where = (
        f"no node offers {' or '.join(f'{need[k]:g} {k}' for k in missing)}"
        if missing
        else f"its nodes can hold {fits} of them"
    )
    has = brief(totals(nodes, need))
    return (
        f"{count} shard actors need {brief(need)} each and {where} (the cluster has {has} in all); lower "
        "num_cpus_per_shard or replicas, or start nodes with that resource (shard_resource)"
    )


@dataclasses.dataclass
class _ShardStats:
    calls: int = 0
    failures: int = 0
    retries: int = 0
    seconds: float = 0.0
    pids: set[int] = dataclasses.field(default_factory=set)


class ShardedSearcher:
    """Search a partitioned index through shard actors (a Python client usable from any Ray driver or job).

        searcher = ShardedSearcher("s3://bucket/index", model="s3://bucket/model", replicas=2)
        result = searcher.search("what causes rainbows", k=10)
        results = searcher.batch_search([{"indices": [...], "values": [...]}, "text query"], k=10)
        searcher.stats()

    With ``name``, actors are named (and detached) so that other processes can :meth:`attach` to them; a
    named actor left by an earlier run is reused only if it holds this index's shard (same manifest
    checksum), else it is replaced. Thread-safe: concurrent callers are micro-batched (requests.py).
    """

    def __init__(
        self,
        index: str,
        *,
        model: str | None = None,
        replicas: int = 1,
        num_cpus_per_shard: float = 1.0,
        shard_resource: str | None = None,
        max_restarts: int = 3,
        timeout_s: float = 10.0,
        retries: int = 2,
        mode: str = "exact",
        options: StorageOptions | None = None,
        name: str | None = None,
        verify: bool = True,
        threads_per_shard: int = 1,
        direct: bool = True,
        startup_timeout_s: float = 300.0,
        max_batch_queries: int = 256,
        batch_wait_ms: float = 1.0,
        in_flight: int | None = None,
        check_model: bool = True,
        quantization: str | None = None,
        _attach: bool = False,
    ) -> None:
        self.index, self.options, self.name = index, options, name
        self.manifest = read_index_manifest(index, options)
        self.manifest_sha256 = manifest_digest(self.manifest)
        self.vocab_size = int(self.manifest.metadata["vocab_size"])
        self.num_shards = len(self.manifest.files)
        check_search_args(1, mode)  # before any actor starts (each warms up in this mode)
        # the query check's compiled kernel loaded now (~0.25 s from numba's cache), not by the first query:
        # on an HTTP replica that stalled its event loop, and every request on it, for that long
        check_vector([0], [1.0], 1)
        self.replicas, self.timeout_s, self.retries, self.mode = replicas, timeout_s, retries, mode
        self.max_restarts, self.startup_timeout_s = max_restarts, startup_timeout_s
        self.threads_per_shard = threads_per_shard
        self.direct = direct
        self.actors: list[list[Any]] = []
        self._owned: list[Any] = []  # actors this searcher created (killed if construction fails)
        self._lock = threading.Lock()
        # a batch takes a free lane: a channel to replica lane % replicas of every shard. `in_flight` lanes
        # (default max(2, replicas)), so that while a shard searches one batch the client already sends the
        # next and merges the last (measured on 2 cores: 1 shard x 1 replica, 2 lanes +5-28% QPS at
        # concurrency 16; 1 x 2 with 4 lanes -10%: batches half as large cost more per query)
        lanes = max(2, replicas) if in_flight is None else in_flight
        if lanes < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self._free_lanes: queue.SimpleQueue[int] = queue.SimpleQueue()
        for lane in range(lanes):
            self._free_lanes.put(lane)
        self._channels: list[list[Channel | None]] = [[None] * lanes for _ in range(self.num_shards)]
        # channels a (re)connection opened for a lane, swapped in by the query that takes the lane next
        self._fresh: list[list[Channel | None]] = [[None] * lanes for _ in range(self.num_shards)]
        self._channel_retry_at = [[0.0] * replicas for _ in range(self.num_shards)]
        self._reconnecting = [[False] * replicas for _ in range(self.num_shards)]
        self._next = [0] * self.num_shards
        # _warn: per warning, when it was last logged and how many were held back since
        self._warned: dict[tuple, tuple[float, int]] = {}
        self._executor = None
        self.queries = 0
        self.encoder = None
        try:
            if model:  # before any actor starts: a wrong model is a one-line error, not a cluster to clean
                from laconic_ray.index.partition import check_query_model
                from laconic_ray.model import SparseEncoder

                self.encoder = SparseEncoder.from_pretrained(
                    model, options=options, quantization=quantization
                )
                check_query_model(self.manifest.metadata, self.encoder, index, strict=check_model)
            self._start(num_cpus_per_shard, shard_resource, max_restarts, verify, startup_timeout_s, _attach)
            if direct:
                self._open_channels()
        except BaseException:
            self._kill_owned()
            raise
        self._batcher = MicroBatcher(
            self._search,
            _truncate,
            max_queries=max_batch_queries,
            max_inflight=lanes if direct else replicas,
            wait_s=batch_wait_ms / 1000,
        )
        log.info(
            "serving %s: %d shards x %d replicas, %d docs",
            index,
            self.num_shards,
            replicas,
            self.manifest.metadata.get("docs", 0),
        )

    @classmethod
    def attach(cls, index: str, name: str, *, replicas: int = 1, **kwargs: Any) -> ShardedSearcher:
        """Use the named shard actors another process started (e.g. ``laconic serve``)."""
        return cls(index, name=name, replicas=replicas, _attach=True, **kwargs)

    # ---------------------------------------------------------------------------------------- actors

    def _actor_name(self, shard: int, replica: int) -> str | None:
        return f"{self.name}-{shard_name(shard)}-r{replica}" if self.name else None

    def _identity(self, shard: int) -> dict[str, Any]:
        entry = self.manifest.files[shard]
        return {"uri": join(self.index, entry.path), "shard": shard, "sha256": entry.sha256}

    def _start(
        self,
        num_cpus: float,
        shard_resource: str | None,
        max_restarts: int,
        verify: bool,
        startup_timeout_s: float,
        attach: bool,
    ) -> None:
        """Create (or find) every shard actor and wait until each has loaded its shard, within the deadline."""
        if not attach:  # fitted to a local cluster, refused at once on a remote one that cannot hold them
            num_cpus = size_for_cluster(
                {"shard actors": (self.num_shards * self.replicas, num_cpus)},
                "num_cpus_per_shard or replicas",
            )["shard actors"]
        need = _needs(num_cpus, shard_resource)
        if not attach and (why := _unschedulable(need, self.num_shards * self.replicas)):
            raise ShardStartupError(f"{self.index}: {why}")
        opts: dict[str, Any] = {
            "num_cpus": num_cpus,
            "max_restarts": max_restarts,
            "max_task_retries": max_restarts,
            # calls are independent: a restarted actor must not hold a caller's call back until calls
            # numbered before it (lost with the old process) are given up on, which took 1-4.8 s in the soak
            "allow_out_of_order_execution": True,
        }
        if shard_resource:
            opts["resources"] = {shard_resource: 1}
        for shard in range(self.num_shards):
            row = []
            for replica in range(self.replicas):
                actor_name = self._actor_name(shard, replica)
                if attach:
                    try:
                        row.append(ray.get_actor(actor_name, namespace=NAMESPACE))
                    except ValueError:
                        raise ShardStartupError(
                            f"no shard actor {actor_name!r} in namespace {NAMESPACE!r}: is `laconic serve "
                            f"name={self.name}` running for {self.index}?"
                        ) from None
                    continue
                row.append(self._create(shard, opts, actor_name, verify))
            self.actors.append(row)
        self._check_identities(attach, opts, verify, startup_timeout_s)
        pids = self._wait_ready(need, startup_timeout_s)
        self._stats = [
            _ShardStats(pids=set(pids[s * self.replicas : (s + 1) * self.replicas]))
            for s in range(self.num_shards)
        ]

    def _create(self, shard: int, opts: dict[str, Any], actor_name: str | None, verify: bool) -> Any:
        identity = self._identity(shard)
        if actor_name:
            # get_if_exists: another process may create it between the lookup and here
            opts = {**opts, "name": actor_name, "namespace": NAMESPACE, "lifetime": "detached"}
            opts["get_if_exists"] = True
            try:
                return ray.get_actor(actor_name, namespace=NAMESPACE)  # checked by _check_identities
            except ValueError:
                pass
        actor = ShardActor.options(**opts).remote(
            identity["uri"], shard, self.options, verify, identity["sha256"], self.mode
        )
        self._owned.append(actor)
        return actor

    def _check_identities(self, attach: bool, opts: dict[str, Any], verify: bool, timeout_s: float) -> None:
        """Named actors found on the cluster must hold this index's shards; others are replaced (or, when
        attaching to another process's service, refused)."""
        if not self.name:
            return
        found = [
            (s, r, a) for s, row in enumerate(self.actors) for r, a in enumerate(row) if a not in self._owned
        ]
        if not found:
            return
        refs = [a.identity.remote() for _, _, a in found]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for (shard, replica, actor), ref in zip(found, refs, strict=True):
            try:
                held = ray.get(ref, timeout=0) if ref in ready else None
            except Exception:  # dead, still loading past the deadline, or an older build without identity()
                held = None
            expected = self._identity(shard)
            if held == expected:
                continue
            actor_name = self._actor_name(shard, replica)
            if attach:
                raise ShardStartupError(
                    f"shard actor {actor_name!r} holds {held}, not {expected}: the running service serves "
                    "another index (or another build of it); restart it or use another name"
                )
            log.warning(
                "replacing shard actor %s: it holds %s, this index needs %s", actor_name, held, expected
            )
            ray.kill(actor, no_restart=True)
            _wait_name_free(actor_name, timeout_s)
            self.actors[shard][replica] = self._create(shard, opts, actor_name, verify)

    def _wait_ready(self, need: dict[str, float], timeout_s: float) -> list[int]:
        """Every actor's pid once it has loaded its shard; a load error is raised at once (naming the shard),
        and actors still waiting at the deadline get a message saying what they wait for."""
        refs = {a.ready.remote(): (s, r) for s, row in enumerate(self.actors) for r, a in enumerate(row)}
        pids: dict[tuple[int, int], int] = {}
        deadline = time.monotonic() + timeout_s
        pending = list(refs)
        while pending:
            done, pending = ray.wait(
                pending, num_returns=len(pending), timeout=min(10.0, max(0.0, deadline - time.monotonic()))
            )
            for ref in done:
                shard, replica = refs[ref]
                try:
                    pids[(shard, replica)] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    raise ShardStartupError(
                        f"{shard_name(shard)}/r{replica} of {self.index} failed to load: {cause}"
                    ) from None
            if pending and time.monotonic() >= deadline:
                waiting = sorted(f"{shard_name(refs[r][0])}/r{refs[r][1]}" for r in pending)
                free = ray.available_resources()
                raise ShardStartupError(
                    f"{len(waiting)} shard actor(s) not running after {timeout_s:.0f} s ({', '.join(waiting)}): "
                    f"each needs {need}; the cluster has {_brief(free, need)} free of "
                    f"{_brief(ray.cluster_resources(), need)}. Lower num_cpus_per_shard, free or add "
                    "resources, or raise startup_timeout_s if shards are still downloading"
                )
            if pending:
                log.info("waiting for %d of %d shard actors to load", len(pending), len(refs))
        return [pids[(s, r)] for s in range(self.num_shards) for r in range(self.replicas)]

    def _kill_owned(self) -> None:
        _kill(self._owned)
        self._owned = []

    # ---------------------------------------------------------------------------------------- queries

    def vectorize(self, queries: Sequence[Any]) -> sp.csr_matrix:
        """Queries (text, ``{"indices", "values"}`` or ``(indices, values)``) -> CSR [n, vocab], validated
        (requests.check_vector); texts are encoded by the model in one batch."""
        return rows_to_csr(self._rows(queries), self.vocab_size)

    def _rows(self, queries: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query as ``(sorted ids, float32 weights)``, checked; a bad one raises :class:`QueryError`."""
        texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
        if texts and self.encoder is None:
            raise QueryError("text queries need a model; this searcher has none (send sparse vectors)")
        if any(not queries[i].strip() for i in texts):
            raise QueryError(f"query {next(i for i in texts if not queries[i].strip())}: empty text")
        rows: list[Any] = [
            None if isinstance(q, str) else vector_row(q, self.vocab_size, i) for i, q in enumerate(queries)
        ]
        if texts:
            encoded = sp.csr_matrix(self.encoder.encode_queries([queries[i] for i in texts]))
            for row, i in enumerate(texts):
                lo, hi = encoded.indptr[row], encoded.indptr[row + 1]
                rows[i] = (encoded.indices[lo:hi].astype(np.int64), encoded.data[lo:hi].astype(np.float32))
        return rows

    def search(self, query: Any, k: int = 10, mode: str | None = None) -> SearchResult:
        return self.batch_search([query], k, mode)[0]

    def batch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        mode = mode or self.mode
        check_search_args(k, mode)
        if not queries:
            return []
        rows = self._rows(queries)
        self.queries += len(queries)
        return self._batcher.submit(rows, int(k), mode)

    async def abatch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        """``batch_search`` for asyncio callers (the HTTP front end). Vectors are checked on the event loop
        (microseconds) and wait for their batch holding no thread (``MicroBatcher.asubmit``); texts are
        encoded on a worker thread, never on the event loop."""
        mode = mode or self.mode
        check_search_args(k, mode)
        if not queries:
            return []
        if any(isinstance(q, str) for q in queries):
            rows = await self._off_loop(self._rows, queries)
        else:
            rows = self._rows(queries)
        self.queries += len(queries)
        return await self._batcher.asubmit(rows, int(k), mode)

    async def _off_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a worker thread, awaited."""
        import asyncio

        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(128, thread_name_prefix="laconic-search")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _search(
        self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, k: int, mode: str
    ) -> list[SearchResult]:
        """One scatter-gather of validated queries given as CSR arrays (the micro-batcher's ``run``)."""
        payload = (indptr, indices, values, self.vocab_size, k, mode, self.threads_per_shard)
        started = time.perf_counter()
        answers = self._scatter_direct(payload, started)
        rest = [shard for shard in range(self.num_shards) if shard not in answers]
        if rest:
            refs = {shard: self._call(shard, payload) for shard in rest}
            try:  # the common case: every shard answers in time, one wait for all
                answers.update(zip(refs, ray.get(list(refs.values()), timeout=self.timeout_s), strict=True))
                self._record(rest, time.perf_counter() - started)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
                if (error := _query_error(e)) is not None:
                    raise error from None
                answers.update(self._gather(refs, payload, started))
        return self._merge(answers, len(indptr) - 1, k)

    def _open_channels(self) -> None:
        """Open a channel on every lane to every shard replica (a construction step: the first queries go
        direct too)."""
        refs = {
            (s, r): self.actors[s][r].open_channel.remote(_node_ip())
            for s in range(self.num_shards)
            for r in range(self.replicas)
        }
        for (shard, replica), ref in refs.items():
            self._connect(shard, replica, ref)
        for shard, row in enumerate(self._channels):  # no query holds a lane yet: take them all now
            for lane in range(len(row)):
                self._channel(shard, lane)

    def _connect(self, shard: int, replica: int, ref: Any) -> None:
        """Open a fresh channel for every lane to a shard replica whose channel is closed or goes to another
        process than ``ref``'s address (the one before a restart: all its lanes are dead, used or not)."""
        try:
            address = tuple(ray.get(ref, timeout=self.timeout_s))
            for lane in range(replica, len(self._channels[shard]), self.replicas):
                current = self._channels[shard][lane]
                if current is not None and not current.closed and current.address == address:
                    continue
                channel = Channel(*address)
                with self._lock:
                    unused, self._fresh[shard][lane] = self._fresh[shard][lane], channel
                if unused is not None:  # opened by an earlier reconnection, never taken: nobody holds it
                    unused.close()
        except Exception as e:  # a dead or restarting actor: actor calls until the next attempt
            self._channel_retry_at[shard][replica] = time.monotonic() + CHANNEL_RETRY_S
            log.info("no channel to %s yet (%s); using actor calls", self._where(shard, replica), e)

    def _where(self, shard: int, lane: int) -> str:
        return f"{shard_name(shard)}/r{lane % self.replicas}"

    def _channel(self, shard: int, lane: int) -> Channel | None:
        """The open channel ``lane`` to a shard (to its replica ``lane % replicas``), or None (use an actor
        call). The caller holds the lane, so it swaps in a channel a reconnection opened for it. A closed
        channel has its replica reconnected on a background thread (no query waits for it, no lock is held
        while it happens)."""
        if self._fresh[shard][lane] is not None:
            with self._lock:
                fresh, self._fresh[shard][lane] = self._fresh[shard][lane], None
            if (old := self._channels[shard][lane]) is not None:
                old.close()
            self._channels[shard][lane] = fresh
        channel = self._channels[shard][lane]
        if channel is not None and not channel.closed:
            return channel
        self._reconnect(shard, lane % self.replicas)
        return None

    def _reconnect(self, shard: int, replica: int, at_once: bool = False) -> None:
        """Ask a shard replica for its address again, on a background thread (no query waits for it). After
        a failed attempt (an actor dead for good) at most every ``CHANNEL_RETRY_S``; ``at_once`` when a
        channel that had answered fails: the call waits while Ray restarts a killed actor, so channels reopen
        as soon as it is back (a channel that fails before its first answer waits its turn: no storm)."""
        with self._lock:
            busy = self._reconnecting[shard]
            if busy[replica] or (not at_once and time.monotonic() < self._channel_retry_at[shard][replica]):
                return
            busy[replica] = True

        def run() -> None:
            try:
                self._connect(shard, replica, self.actors[shard][replica].open_channel.remote(_node_ip()))
            finally:
                self._reconnecting[shard][replica] = False

        threading.Thread(target=run, name="laconic-reconnect", daemon=True).start()

    def _scatter_direct(self, payload: tuple, started: float) -> dict[int, list]:
        """Every shard's answer that came back over a channel (the caller asks the others by actor call).

        Takes a free lane (a channel to replica ``lane % replicas`` of every shard), sends to every shard
        first, then reads *every* sent channel's answer until ``started + timeout_s``, whatever another shard
        answered: a channel whose answer is not read is closed, so none can carry a stale answer into a later
        query. A :class:`QueryError` from any shard is raised once all are drained."""
        if not self.direct:
            return {}
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        sent: dict[int, Channel] = {}
        answers: dict[int, list] = {}
        query_error: QueryError | None = None
        lane = self._free_lanes.get()
        try:
            for shard in range(self.num_shards):
                channel = self._channel(shard, lane)
                if channel is None:
                    continue
                channel.lock.acquire()
                try:
                    channel.send(data)
                except ChannelClosed as e:
                    channel.lock.release()
                    self._channel_failed(shard, lane, channel, e)
                    continue
                sent[shard] = channel
            for shard, channel in sent.items():
                try:
                    answers[shard] = channel.receive(started + self.timeout_s - time.perf_counter())
                except ChannelClosed as e:
                    self._channel_failed(shard, lane, channel, e)
                except QueryError as e:
                    query_error = query_error or e
                except Exception as e:  # the shard's handler failed: that shard goes by actor call
                    self._stats[shard].failures += 1
                    self._warn(
                        ("search", shard),
                        "%s: search failed (%r); retrying by actor call",
                        self._where(shard, lane),
                        e,
                    )
        finally:
            for channel in sent.values():
                channel.lock.release()
            self._free_lanes.put(lane)
        if query_error is not None:
            raise query_error
        for shard in answers:
            self._stats[shard].calls += 1
        self._record(list(answers), time.perf_counter() - started)
        return answers

    def _channel_failed(self, shard: int, lane: int, channel: Channel, error: Exception) -> None:
        self._stats[shard].failures += 1
        self._warn(
            ("channel", shard, lane),
            "%s: channel failed (%s); this query goes by actor call",
            self._where(shard, lane),
            error,
        )
        self._reconnect(shard, lane % self.replicas, at_once=channel.answered > 0)

    def close_channels(self) -> None:
        """Close this client's direct connections (the actors keep listening for others)."""
        for row in (*self._channels, *self._fresh):
            for channel in row:
                if channel is not None:
                    channel.close()

    def _gather(self, refs: dict[int, Any], payload: tuple, started: float) -> dict[int, list]:
        """The slow path: per shard, wait up to the timeout, retry (next replica), give up after ``retries``.
        A shard's :class:`QueryError` is an answer, not a failure: raised at once, never retried."""
        answers: dict[int, list] = {}
        pending = {shard: (ref, started) for shard, ref in refs.items()}
        attempts = dict.fromkeys(refs, 0)
        while pending:
            deadline = min(t for _, t in pending.values()) + self.timeout_s
            ready, _ = ray.wait(
                [ref for ref, _ in pending.values()],
                num_returns=len(pending),
                timeout=max(0.0, deadline - time.perf_counter()),
            )
            ready = set(ready)
            for shard, (ref, sent) in list(pending.items()):
                timed_out = ref not in ready and time.perf_counter() - sent >= self.timeout_s
                if ref not in ready and not timed_out:
                    continue
                error = None
                if ref in ready:
                    try:
                        answers[shard] = ray.get(ref)
                        self._stats[shard].seconds += time.perf_counter() - sent
                        del pending[shard]
                        continue
                    except ray.exceptions.RayError as e:
                        if (query_error := _query_error(e)) is not None:
                            raise query_error from None
                        error = e
                self._stats[shard].failures += 1
                attempts[shard] += 1
                if attempts[shard] > self.retries:
                    reason = str(error or "timeout").splitlines()[0]  # Ray's errors run to many lines
                    self._warn(
                        ("no answer", shard),
                        "shard %d gave no answer after %d attempts (%s); answers are partial",
                        shard,
                        attempts[shard],
                        reason,
                    )
                    del pending[shard]
                    continue
                self._stats[shard].retries += 1
                pending[shard] = (self._call(shard, payload), time.perf_counter())
        return answers

    def _warn(self, key: tuple, message: str, *args: Any) -> None:
        """``log.warning`` at most once per ``WARN_EVERY_S`` per ``key``, saying how many were held back: a
        shard down for good fails every query, which must not flood the log."""
        now = time.monotonic()
        with self._lock:
            last, held = self._warned.get(key, (-WARN_EVERY_S, 0))
            if now - last < WARN_EVERY_S:
                self._warned[key] = (last, held + 1)
                return
            self._warned[key] = (now, 0)
        if held:
            message += f" ({held} more like it in the last {now - last:.0f} s)"
        log.warning(message, *args)

    def _merge(self, answers: dict[int, list], n: int, k: int) -> list[SearchResult]:
        missing = sorted(set(range(self.num_shards)) - set(answers))
        shards = sorted(answers)
        results = []
        for qi in range(n):
            ids, scores = merge_lists([answers[s][qi] for s in shards], k)
            results.append(SearchResult(ids, scores, bool(missing), missing))
        return results

    def _record(self, shards: list[int], seconds: float) -> None:
        for shard in shards:
            self._stats[shard].seconds += seconds

    def _pick(self, shard: int) -> int:
        """The next replica of ``shard``, round-robin."""
        with self._lock:
            replica = self._next[shard] % self.replicas
            self._next[shard] += 1
        return replica

    def _call(self, shard: int, payload: tuple):
        self._stats[shard].calls += 1
        return self.actors[shard][self._pick(shard)].batch_search.remote(*payload)

    # ------------------------------------------------------------------------------------------ status

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        refs = {(s, r): a.ready.remote() for s, row in enumerate(self.actors) for r, a in enumerate(row)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        # a dead actor's call is "ready" too, holding its error: answered means a value
        down = [f"{shard_name(s)}/r{r}" for (s, r), ref in refs.items() if not answered(ref, ready)]
        return {"ok": not down, "down": down, "shards": self.num_shards, "replicas": self.replicas}

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Per shard: docs, calls, failures, retries, mean call latency, restarts (distinct pids seen); a
        shard replica that does not answer within ``timeout_s`` is listed under ``unreachable``."""
        refs = [[a.stats.remote() for a in row] for row in self.actors]
        ray.wait([r for row in refs for r in row], num_returns=sum(map(len, refs)), timeout=timeout_s)
        shards, unreachable = [], []
        for shard, row in enumerate(refs):
            live = []
            for replica, ref in enumerate(row):
                try:
                    live.append(ray.get(ref, timeout=0))
                except Exception:  # not answering (restarting, busy past the deadline, gone)
                    unreachable.append(f"{shard_name(shard)}/r{replica}")
            record = self._stats[shard]
            record.pids.update(s["pid"] for s in live)
            shards.append(
                {
                    "shard": shard,
                    "docs": live[0]["docs"] if live else self.manifest.files[shard].rows,
                    "calls": record.calls,
                    "failures": record.failures,
                    "retries": record.retries,
                    "mean_call_ms": round(1000 * record.seconds / max(record.calls - record.failures, 1), 3),
                    "restarts": len(record.pids) - len(row),
                    "nodes": sorted({s["node"] for s in live}),
                    "bytes": live[0]["bytes"] if live else None,
                    # memory candidate search derives beside the shard (each replica holds its own; 0 in exact)
                    "candidate_view_bytes": live[0]["candidate_view_bytes"] if live else None,
                    "channel_refused": sum(s["channel_refused"] for s in live),
                    "overlap_peak": max((s["overlap_peak"] for s in live), default=0),
                }
            )
        return {
            "index": self.index,
            "queries": self.queries,
            "batches": self._batcher.batches,
            "direct_channels": sum(c is not None and not c.closed for row in self._channels for c in row),
            "shards": shards,
            "unreachable": unreachable,
            "docs": sum(s["docs"] for s in shards),
        }

    def shutdown(self) -> None:
        self.close_channels()
        _kill([actor for row in self.actors for actor in row])
        self.actors, self._owned = [], []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._batcher.close()


def answered(ref: Any, ready: Sequence[Any]) -> bool:
    """Did the call behind ``ref`` (one of ``ray.wait``'s) return a value rather than fail?"""
    if ref not in ready:
        return False
    try:
        ray.get(ref, timeout=0)
    except Exception:
        return False
    return True


def _truncate(result: SearchResult, k: int) -> SearchResult:
    if len(result.doc_ids) <= k:
        return result
    return dataclasses.replace(result, doc_ids=result.doc_ids[:k], scores=result.scores[:k])


def _kill(actors: list[Any]) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)


def _node_ip() -> str:
    return ray.util.get_node_ip_address()


def _brief(resources: dict[str, float], need: dict[str, float]) -> dict[str, float]:
    return {k: round(resources.get(k, 0.0), 2) for k in need}


def _wait_name_free(name: str | None, timeout_s: float) -> None:
    """Wait until a killed named actor's name can be taken again (the GCS frees it asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)
    raise ShardStartupError(f"shard actor {name!r} still registered {timeout_s:.0f} s after it was killed")
