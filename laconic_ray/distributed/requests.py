"""The pure parts of serving a query: validation into one CSR matrix, and micro-batching of concurrent callers.

Both are plain Python/NumPy (no Ray), so that they are unit-tested on their own; serving.py uses them.

Validation is complete on the client: a query that reaches a shard is one every shard can answer, so a bad
query is refused once, with a message that names it, and never half-answered by some shards. The checks run
on the *merged* query (duplicate ids summed, as the index does): two finite weights can sum to infinity.

Micro-batching: a shard answers a batch of queries in one call for little more than one query costs (the
per-call overhead of pickling, sockets, thread wake-ups and the Python wrapper is paid once), so concurrent
callers are served together. No timer is needed for that: while one batch is with the shards, new queries
queue; when it returns, everything queued goes as the next batch (up to ``max_queries``). An idle service
thus answers a lone query at once, and a busy one batches as deep as its load. ``wait_s`` optionally holds a
batch that long for more queries (more throughput, more latency).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from laconic_ray.index.inverted import MODES, QueryError


class VectorError(QueryError):
    """A sparse query vector is invalid; ``field`` is ``indices`` or ``values`` (or empty for the vector)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def check_vector(
    indices: Any, values: Any, vocab_size: int, max_terms: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One query vector -> (sorted unique int64 ids, float32 weights with duplicates summed), or raise
    :class:`VectorError` naming the field: unequal lengths, no terms, more than ``max_terms``, ids that are
    not integers or lie outside the vocabulary, weights that are not numbers, negative, or not finite as
    float32, also after summing a repeated id (two finite weights can sum to infinity)."""
    indices, values = np.asarray(indices), np.asarray(values)
    if indices.ndim != 1 or values.ndim != 1 or indices.shape != values.shape:
        raise VectorError(
            "", f"indices and values must be equal-length lists ({indices.shape} vs {values.shape})"
        )
    if len(indices) == 0:
        raise VectorError("indices", "no terms (an empty vector matches nothing)")
    if max_terms is not None and len(indices) > max_terms:
        raise VectorError("indices", f"{len(indices)} terms, the limit is {max_terms}")
    if indices.dtype.kind not in "iu":
        raise VectorError("indices", f"term ids must be integers, got {indices.dtype}")
    if values.dtype.kind not in "iuf":
        raise VectorError("values", f"weights must be numbers, got {values.dtype}")
    outside = (indices < 0) | (indices >= vocab_size)
    if outside.any():
        raise VectorError(
            "indices", f"{int(indices[outside][0])} is outside the vocabulary [0, {vocab_size})"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        weights = values.astype(np.float32)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise VectorError("values", "weights must be finite and >= 0 (as float32)")
        order = np.argsort(indices, kind="stable")
        ids, starts = np.unique(indices[order], return_index=True)
        summed = np.add.reduceat(weights[order], starts) if len(ids) < len(indices) else weights[order]
    if not np.all(np.isfinite(summed)):
        raise VectorError("values", "the weights of a repeated term id sum to infinity (as float32)")
    return ids.astype(np.int64), summed


def to_csr(
    vectors: Sequence[Any], vocab_size: int, *, first: int = 0, max_terms: int | None = None
) -> sp.csr_matrix:
    """Sparse queries (``{"indices", "values"}`` or ``(indices, values)``) -> CSR [n, vocab], float32, each
    row checked by :func:`check_vector`; errors name the query (``first`` numbers the first one)."""
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for i, q in enumerate(vectors, first):
        try:
            indices, values = (q["indices"], q["values"]) if isinstance(q, dict) else q
        except (KeyError, TypeError, ValueError):
            raise QueryError(f"query {i}: expected {{'indices': [...], 'values': [...]}}") from None
        try:
            rows.append(check_vector(indices, values, vocab_size, max_terms))
        except VectorError as e:
            raise QueryError(f"query {i}: {e.field + ': ' if e.field else ''}{e.reason}") from None
    indptr = np.cumsum([0] + [len(r[0]) for r in rows])
    data = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
    cols = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
    return sp.csr_matrix((data, cols, indptr), shape=(len(rows), vocab_size), dtype=np.float32)


def check_search_args(k: Any, mode: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    if mode not in MODES:
        raise QueryError(f"mode must be one of {sorted(MODES)}, got {mode!r}")


@dataclasses.dataclass(eq=False)
class _Request:
    csr: sp.csr_matrix
    k: int
    mode: str
    result: list | None = None
    error: BaseException | None = None
    finished: bool = False


class MicroBatcher:
    """Serve concurrent ``submit(csr, k, mode)`` calls through ``run(csr, k, mode) -> [result per row]`` in
    batches (see the module docstring); at most ``max_inflight`` batches are with the shards at once.

    The caller whose turn it is runs the batch on its own thread (no hand-off when idle). A batch takes the
    queued requests of the first one's mode, in arrival order, up to ``max_queries`` queries, and is run
    with the largest ``k`` among them; each caller gets its first ``k`` (a merged top-K holds every top-k).
    ``truncate(result, k)`` cuts one result to ``k``. A :class:`QueryError` from a batch of several
    requests is retried request by request, so that only the offending caller gets it.
    """

    def __init__(
        self,
        run: Callable[[sp.csr_matrix, int, str], list],
        truncate: Callable[[Any, int], Any],
        *,
        max_queries: int = 256,
        max_inflight: int = 1,
        wait_s: float = 0.0,
    ) -> None:
        self._run, self._truncate = run, truncate
        self.max_queries, self.max_inflight, self.wait_s = max_queries, max_inflight, wait_s
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self.batches = 0
        self.queries = 0

    def submit(self, csr: sp.csr_matrix, k: int, mode: str) -> list:
        request = _Request(csr, int(k), mode)
        with self._cond:
            self._queue.append(request)
            while not request.finished:
                if self._inflight < self.max_inflight and self._queue:
                    self._inflight += 1
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._execute(batch)
                    finally:
                        self._cond.acquire()
                        self._inflight -= 1
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _take(self) -> list[_Request]:
        """The next batch (called holding the lock); waits up to ``wait_s`` for a fuller one."""
        deadline = time.monotonic() + self.wait_s
        while self.wait_s > 0 and sum(r.csr.shape[0] for r in self._queue) < self.max_queries:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        if not self._queue:  # another caller took them meanwhile (max_inflight > 1)
            return []
        mode, batch, size, kept = self._queue[0].mode, [], 0, collections.deque()
        while self._queue:
            request = self._queue.popleft()
            rows = request.csr.shape[0]
            if request.mode != mode or (batch and size + rows > self.max_queries):
                kept.append(request)
                continue
            batch.append(request)
            size += rows
        self._queue.extendleft(reversed(kept))
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        try:
            if not batch:
                return
            if len(batch) == 1:
                self._finish(batch, self._run(batch[0].csr, batch[0].k, batch[0].mode))
            else:
                csr = sp.vstack([r.csr for r in batch], format="csr")
                self._finish(batch, self._run(csr, max(r.k for r in batch), batch[0].mode))
        except QueryError as e:
            if len(batch) == 1:
                self._fail(batch, e)
            else:  # only the offending request must see the error
                for request in batch:
                    self._execute([request])
        except BaseException as e:
            self._fail(batch, e)

    def _finish(self, batch: list[_Request], results: list) -> None:
        start = 0
        for request in batch:
            rows = request.csr.shape[0]
            request.result = [self._truncate(r, request.k) for r in results[start : start + rows]]
            request.finished = True
            start += rows
        self.batches += 1
        self.queries += start

    def _fail(self, batch: list[_Request], error: BaseException) -> None:
        for request in batch:
            request.error, request.finished = error, True
