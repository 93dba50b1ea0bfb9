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
  open yet gets that query through actor calls (with their timeouts and retries); its channel reopens on a
  later query (at most every ``CHANNEL_RETRY_S``), e.g. once a killed actor is back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
import scipy.sparse as sp

from laconic_ray.distributed.channel import Channel, ChannelClosed, ChannelServer
from laconic_ray.index.inverted import InvertedIndex, QueryError
from laconic_ray.index.merge import merge_topk
from laconic_ray.index.partition import read_index_manifest, shard_name
from laconic_ray.storage import StorageOptions, join

log = logging.getLogger(__name__)

NAMESPACE = "laconic"
CHANNEL_RETRY_S = 1.0  # after a channel fails or cannot open, actor calls for that shard at least this long


@dataclasses.dataclass
class SearchResult:
    doc_ids: list[str]
    scores: list[float]
    partial: bool = False
    missing_shards: list[int] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": [{"doc_id": d, "score": s} for d, s in zip(self.doc_ids, self.scores, strict=True)],
            "partial": self.partial,
            "missing_shards": self.missing_shards,
        }


class ShardServer:
    """The work of one shard actor: load a shard folder, answer batches of sparse queries."""

    def __init__(
        self, uri: str, shard: int, options: StorageOptions | None = None, verify: bool = True
    ) -> None:
        self.shard = shard
        self.index = InvertedIndex.load(uri, verify=verify, options=options)
        self.started = time.time()
        # channel requests run on their connections' threads, actor calls on the main one; the index's
        # scratch buffers are shared, so one search at a time
        self._lock = threading.Lock()
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
        with self._lock:
            if len(indptr) == 2:  # one query: the single-thread path has less overhead
                ids, scores = self.index.search(indices, values, k, mode=mode)
                return [(ids, scores.tolist())]
            csr = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, vocab))
            return [
                (ids, scores.tolist())
                for ids, scores in self.index.batch_search(csr, k, num_threads=num_threads, mode=mode)
            ]

    def stats(self) -> dict[str, Any]:
        return {
            **self.index.stats(),
            "shard": self.shard,
            "pid": os.getpid(),
            "channel_requests": self._channels.requests,
            "started": self.started,
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }

    def ready(self) -> int:
        """The process id: a new one after a restart."""
        return os.getpid()

    def open_channel(self, client_node_ip: str) -> tuple[str, int, bytes]:
        """Address and key of a direct connection (channel.py) for a client on ``client_node_ip``: loopback
        when it is on this node, this node's address otherwise."""
        node_ip = ray.util.get_node_ip_address()
        return self._channels.address("127.0.0.1" if client_node_ip == node_ip else node_ip)


ShardActor = ray.remote(ShardServer)


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

    With ``name``, actors are named (and detached) so that other processes can :meth:`attach` to them.
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
        _attach: bool = False,
    ) -> None:
        self.index, self.options, self.name = index, options, name
        self.manifest = read_index_manifest(index, options)
        self.vocab_size = int(self.manifest.metadata["vocab_size"])
        self.num_shards = len(self.manifest.files)
        self.replicas, self.timeout_s, self.retries, self.mode = replicas, timeout_s, retries, mode
        self.threads_per_shard = threads_per_shard
        self.actors: list[list[Any]] = []
        for shard, entry in enumerate(self.manifest.files):
            row = []
            for replica in range(replicas):
                actor_name = f"{name}-{shard_name(shard)}-r{replica}" if name else None
                if _attach:
                    row.append(ray.get_actor(actor_name, namespace=NAMESPACE))
                    continue
                opts: dict[str, Any] = {
                    "num_cpus": num_cpus_per_shard,
                    "max_restarts": max_restarts,
                    "max_task_retries": max_restarts,
                }
                if shard_resource:
                    opts["resources"] = {shard_resource: 1}
                if actor_name:
                    opts.update(name=actor_name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
                row.append(ShardActor.options(**opts).remote(join(index, entry.path), shard, options, verify))
            self.actors.append(row)
        pids = ray.get([a.ready.remote() for row in self.actors for a in row])  # every shard loaded first
        self._stats = [
            _ShardStats(pids=set(pids[s * replicas : (s + 1) * replicas])) for s in range(self.num_shards)
        ]
        self._next = [0] * self.num_shards
        self._lock = threading.Lock()
        self.direct = direct
        self._channels: list[list[Channel | None]] = [[None] * replicas for _ in range(self.num_shards)]
        self._channel_retry_at = [[0.0] * replicas for _ in range(self.num_shards)]
        self._opening: list[list[Any]] = [[None] * replicas for _ in range(self.num_shards)]
        self._node_ip = ray.util.get_node_ip_address()
        if direct:
            self._open_channels()
        self.encoder = None
        if model:
            from laconic_ray.model import SparseEncoder

            self.encoder = SparseEncoder.from_pretrained(model, options=options)
            if self.encoder.vocab_size != self.vocab_size:
                raise ValueError(
                    f"model vocabulary {self.encoder.vocab_size} != index vocabulary {self.vocab_size}"
                )
        self.queries = 0
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

    # ---------------------------------------------------------------------------------------- queries

    def vectorize(self, queries: Sequence[Any]) -> sp.csr_matrix:
        """Queries (text, ``{"indices", "values"}`` or ``(indices, values)``) -> CSR [n, vocab]; texts are
        encoded by the model in one batch."""
        rows: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        if texts:
            if self.encoder is None:
                raise QueryError("text queries need a model; this searcher has none (send sparse vectors)")
            encoded = self.encoder.encode_queries([t for _, t in texts])
            for (i, _), row in zip(texts, range(encoded.shape[0]), strict=True):
                rows[i] = (encoded[row].indices, encoded[row].data)
        for i, q in enumerate(queries):
            if isinstance(q, str):
                continue
            indices, values = (q["indices"], q["values"]) if isinstance(q, dict) else q
            indices, values = np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float32)
            if indices.shape != values.shape or indices.ndim != 1:
                raise QueryError(f"query {i}: indices and values must be equal-length lists")
            if len(indices) and (indices.min() < 0 or indices.max() >= self.vocab_size):
                raise QueryError(f"query {i}: term id outside the vocabulary [0, {self.vocab_size})")
            if not np.all(np.isfinite(values)) or np.any(values < 0):
                raise QueryError(f"query {i}: weights must be finite and >= 0")
            order = np.argsort(indices, kind="stable")
            rows[i] = (indices[order], values[order])
        indptr = np.cumsum([0] + [len(r[0]) for r in rows])
        data = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
        cols = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
        csr = sp.csr_matrix((data, cols, indptr), shape=(len(rows), self.vocab_size))
        csr.sum_duplicates()
        return csr

    def search(self, query: Any, k: int = 10, mode: str | None = None) -> SearchResult:
        return self.batch_search([query], k, mode)[0]

    def batch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        payload = self._payload(queries, k, mode)
        if payload is None:
            return []
        started = time.perf_counter()
        answers = self._scatter_direct(payload, started)
        rest = [shard for shard in range(self.num_shards) if shard not in answers]
        if rest:
            refs = {shard: self._call(shard, payload) for shard in rest}
            try:  # the common case: every shard answers in time, one wait for all
                answers.update(zip(refs, ray.get(list(refs.values()), timeout=self.timeout_s), strict=True))
                self._record(rest, time.perf_counter() - started)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                answers.update(self._gather(refs, payload, started))
        return self._merge(answers, len(queries), k)

    async def abatch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        """``batch_search`` for asyncio callers (the HTTP front end): awaits the shards instead of blocking."""
        import asyncio

        loop = asyncio.get_running_loop()
        if any(isinstance(q, str) for q in queries):  # the model's forward pass must not block the loop
            payload = await loop.run_in_executor(None, self._payload, queries, k, mode)
        else:
            payload = self._payload(queries, k, mode)
        if payload is None:
            return []
        started = time.perf_counter()
        answers = {}
        if self.direct:  # channel waits block: off the event loop
            answers = await loop.run_in_executor(None, self._scatter_direct, payload, started)
        rest = [shard for shard in range(self.num_shards) if shard not in answers]
        if rest:
            refs = {shard: self._call(shard, payload) for shard in rest}
            try:
                got = await asyncio.wait_for(asyncio.gather(*refs.values()), self.timeout_s)
                answers.update(zip(refs, got, strict=True))
                self._record(rest, time.perf_counter() - started)
            except (ray.exceptions.RayError, TimeoutError):
                answers.update(await loop.run_in_executor(None, self._gather, refs, payload, started))
        return self._merge(answers, len(queries), k)

    def _payload(self, queries: Sequence[Any], k: int, mode: str | None) -> tuple | None:
        if k <= 0:
            raise QueryError(f"k must be > 0, got {k}")
        if not queries:
            return None
        csr = self.vectorize(queries)
        self.queries += len(queries)
        return (
            csr.indptr,
            csr.indices,
            csr.data,
            self.vocab_size,
            int(k),
            mode or self.mode,
            self.threads_per_shard,
        )

    def _open_channels(self) -> None:
        """Open a channel to every shard replica (a construction step: the first queries go direct too)."""
        refs = {
            (s, r): a.open_channel.remote(self._node_ip)
            for s, row in enumerate(self.actors)
            for r, a in enumerate(row)
        }
        for (shard, replica), ref in refs.items():
            self._connect(shard, replica, ref)

    def _connect(self, shard: int, replica: int, ref: Any) -> None:
        try:
            self._channels[shard][replica] = Channel(*ray.get(ref, timeout=self.timeout_s))
        except Exception as e:  # a dead or restarting actor: actor calls until the next attempt
            log.info("no channel to %s/r%d yet (%s); using actor calls", shard_name(shard), replica, e)

    def _channel(self, shard: int, replica: int) -> Channel | None:
        """The open channel to a shard replica, or None (use an actor call). A closed channel is reopened in
        the background: the actor is asked for its address without waiting (it may be restarting), and a
        later query connects once the answer is there."""
        channel = self._channels[shard][replica]
        if channel is not None and not channel.closed:
            return channel
        with self._lock:
            ref = self._opening[shard][replica]
            if ref is None:
                if time.monotonic() >= self._channel_retry_at[shard][replica]:
                    self._channel_retry_at[shard][replica] = time.monotonic() + CHANNEL_RETRY_S
                    actor = self.actors[shard][replica]
                    self._opening[shard][replica] = actor.open_channel.remote(self._node_ip)
                return None
            if not ray.wait([ref], timeout=0)[0]:
                return None
            self._opening[shard][replica] = None
            self._connect(shard, replica, ref)
        return self._channels[shard][replica]

    def _scatter_direct(self, payload: tuple, started: float) -> dict[int, list]:
        """Every shard's answer that came back over a channel (the caller asks the others by actor call).

        Sends to every shard first, then waits for each answer until ``started + timeout_s``. Channels are
        taken in shard order (one per shard), so concurrent callers cannot deadlock; a failed channel is
        closed and left to reopen later."""
        if not self.direct:
            return {}
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        sent: dict[int, tuple[int, Channel]] = {}
        answers: dict[int, list] = {}
        try:
            for shard in range(self.num_shards):
                replica = self._pick(shard)
                channel = self._channel(shard, replica)
                if channel is None:
                    continue
                channel.lock.acquire()
                try:
                    channel.send(data)
                except ChannelClosed as e:
                    channel.lock.release()
                    self._channel_failed(shard, replica, e)
                    continue
                sent[shard] = (replica, channel)
            for shard, (replica, channel) in sent.items():
                try:
                    answers[shard] = channel.receive(started + self.timeout_s - time.perf_counter())
                except ChannelClosed as e:
                    self._channel_failed(shard, replica, e)
        finally:
            for _, channel in sent.values():
                channel.lock.release()
        for shard in answers:
            self._stats[shard].calls += 1
        self._record(list(answers), time.perf_counter() - started)
        return answers

    def _channel_failed(self, shard: int, replica: int, error: Exception) -> None:
        self._stats[shard].failures += 1
        self._channel_retry_at[shard][replica] = time.monotonic() + CHANNEL_RETRY_S  # not again at once
        log.warning(
            "%s/r%d: channel failed (%s); this query goes by actor call", shard_name(shard), replica, error
        )

    def close_channels(self) -> None:
        """Close this client's direct connections (the actors keep listening for others)."""
        for row in self._channels:
            for channel in row:
                if channel is not None:
                    channel.close()

    def _gather(self, refs: dict[int, Any], payload: tuple, started: float) -> dict[int, list]:
        """The slow path: per shard, wait up to the timeout, retry (next replica), give up after ``retries``."""
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
                        error = e
                self._stats[shard].failures += 1
                attempts[shard] += 1
                if attempts[shard] > self.retries:
                    log.warning(
                        "shard %d gave no answer after %d attempts (%s)",
                        shard,
                        attempts[shard],
                        error or "timeout",
                    )
                    del pending[shard]
                    continue
                self._stats[shard].retries += 1
                pending[shard] = (self._call(shard, payload), time.perf_counter())
        return answers

    def _merge(self, answers: dict[int, list], n: int, k: int) -> list[SearchResult]:
        missing = sorted(set(range(self.num_shards)) - set(answers))
        shards = sorted(answers)
        results = []
        for qi in range(n):
            ids, scores = merge_topk([answers[s][qi] for s in shards], k)
            results.append(SearchResult(ids, scores.tolist(), bool(missing), missing))
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
        down = [f"{shard_name(s)}/r{r}" for (s, r), ref in refs.items() if ref not in ready]
        return {"ok": not down, "down": down, "shards": self.num_shards, "replicas": self.replicas}

    def stats(self) -> dict[str, Any]:
        """Per shard: docs, calls, failures, retries, mean call latency, restarts (distinct pids seen)."""
        shards = []
        for shard, row in enumerate(self.actors):
            live = ray.get([a.stats.remote() for a in row])
            record = self._stats[shard]
            record.pids.update(s["pid"] for s in live)
            shards.append(
                {
                    "shard": shard,
                    "docs": live[0]["docs"],
                    "calls": record.calls,
                    "failures": record.failures,
                    "retries": record.retries,
                    "mean_call_ms": round(1000 * record.seconds / max(record.calls - record.failures, 1), 3),
                    "restarts": len(record.pids) - len(row),
                    "nodes": sorted({s["node"] for s in live}),
                    "bytes": live[0]["bytes"],
                }
            )
        return {
            "index": self.index,
            "queries": self.queries,
            "direct_channels": sum(c is not None and not c.closed for row in self._channels for c in row),
            "shards": shards,
            "docs": sum(s["docs"] for s in shards),
        }

    def shutdown(self) -> None:
        self.close_channels()
        for row in self.actors:
            for actor in row:
                ray.kill(actor)
        self.actors = []
