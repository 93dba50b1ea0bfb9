"""``retriever=hybrid`` in the service: BM25 (pyserini/Lucene) in a CPU actor beside the learned shards.

A text query goes to the shard actors (the learned ranking) and to the BM25 actor at the same time; the two
rankings, ``hybrid.depth`` deep, are fused per query by :func:`laconic_ray.eval.fusion.fuse` (RRF or min-max
normalised interpolation, the same code ``laconic eval retriever=hybrid`` scores), and the top ``k`` returned.
A vector query has no text for BM25 and is answered by the learned index alone.

The BM25 actor is one more component that can fail: if it does not answer within ``timeout_s`` (dead,
restarting, stuck in the JVM), the learned ranking is returned, marked ``partial`` with ``"bm25"`` under
``missing``, and ``/health`` says so; it never holds a query longer than the deadline. It builds its Lucene
index on first start (cached per node and corpus, as ``laconic eval``'s BM25 is) unless given a built one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import ray

from laconic_ray.config import HybridConfig
from laconic_ray.distributed.serving import (
    NAMESPACE,
    SearchResult,
    ShardedSearcher,
    ShardStartupError,
    _kill,
    _truncate,
    _wait_name_free,
    answered,
)
from laconic_ray.eval.fusion import fuse
from laconic_ray.storage import StorageOptions

log = logging.getLogger(__name__)

BM25 = "bm25"  # its name in a result's `missing` and in health's `down`


@dataclasses.dataclass(frozen=True)
class LexicalSpec:
    """What the BM25 actor serves: a BEIR collection's corpus (indexed on first start) or a Lucene index
    folder (``segments_*`` inside), with Anserini's BEIR settings by default."""

    source: str
    k1: float = 0.9
    b: float = 0.4
    layout: str = "multifield"  # multifield: title and text fields (BEIR's published BM25) | flat
    threads: int = 1
    cache: str | None = None  # where built Lucene indexes are kept (default ~/.cache/laconic_ray/lucene)


class LexicalServer:
    """The work of the BM25 actor: one Lucene searcher, batches of texts -> [(doc id, score)] per text."""

    def __init__(self, spec: LexicalSpec, options: StorageOptions | None = None) -> None:
        from laconic_ray.data.lucene import BM25 as Searcher
        from laconic_ray.data.lucene import build_bm25_index

        self.spec = spec
        if os.path.isdir(spec.source) and any(n.startswith("segments_") for n in os.listdir(spec.source)):
            index_dir = spec.source
        else:
            from laconic_ray.data.beir import BeirDataset

            index_dir = build_bm25_index(
                BeirDataset(spec.source, options=options), spec.cache, 2, spec.layout
            )
        self.bm25 = Searcher(index_dir, k1=spec.k1, b=spec.b, threads=spec.threads, layout=spec.layout)
        self.docs = int(self.bm25.searcher.num_docs)
        self.calls, self.seconds = 0, 0.0

    def identity(self) -> dict[str, Any]:
        return dataclasses.asdict(self.spec)

    def ready(self) -> int:
        return os.getpid()

    def batch_search(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        started = time.perf_counter()
        if len(texts) == 1:
            out = [self.bm25.search(texts[0], k)]
        else:
            qids = [str(i) for i in range(len(texts))]
            hits = self.bm25.searcher.batch_search(
                list(texts), qids, k=k, threads=self.spec.threads, fields=self.bm25.fields
            )
            out = [[(h.docid, float(h.score)) for h in hits.get(q, [])] for q in qids]
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return out

    def stats(self) -> dict[str, Any]:
        return {"docs": self.docs, "calls": self.calls, "seconds": round(self.seconds, 3), "pid": os.getpid()}


LexicalActor = ray.remote(LexicalServer)


class HybridSearcher(ShardedSearcher):
    """A :class:`ShardedSearcher` whose text queries are also searched with BM25 and the two rankings fused.

    searcher = HybridSearcher("runs/index", model="runs/model", bm25=LexicalSpec("scifact"),
                              hybrid=HybridConfig(fusion="interpolation", weight=0.3))
    """

    def __init__(
        self,
        index: str,
        *,
        bm25: LexicalSpec,
        hybrid: HybridConfig,
        bm25_cpus: float = 1.0,
        _attach: bool = False,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("model"):
            raise ValueError("model: retriever=hybrid needs the checkpoint that encodes text queries")
        super().__init__(index, _attach=_attach, **kwargs)
        self.hybrid, self.spec = hybrid, bm25
        self.lexical_failures = 0
        self._lexical_owned = False
        try:
            self.lexical = self._start_lexical(bm25_cpus, _attach)
        except BaseException:
            super().shutdown()
            raise

    @classmethod
    def attach(cls, index: str, name: str, *, replicas: int = 1, **kwargs: Any) -> HybridSearcher:
        return cls(index, name=name, replicas=replicas, _attach=True, **kwargs)

    def _start_lexical(self, num_cpus: float, attach: bool) -> Any:
        """Create (or find) the BM25 actor and wait, within the startup deadline, until it has its index."""
        actor_name = f"{self.name}-{BM25}" if self.name else None
        timeout_s = self.startup_timeout_s
        actor = None
        if actor_name:
            try:
                actor = ray.get_actor(actor_name, namespace=NAMESPACE)
            except ValueError:
                if attach:
                    raise ShardStartupError(
                        f"no BM25 actor {actor_name!r} in namespace {NAMESPACE!r}: is `laconic serve "
                        f"name={self.name} retriever=hybrid` running?"
                    ) from None
        if actor is not None:
            try:
                held = ray.get(actor.identity.remote(), timeout=timeout_s)
            except Exception:  # dead, or still building past the deadline
                held = None
            if held != dataclasses.asdict(self.spec):
                if attach:
                    raise ShardStartupError(
                        f"BM25 actor {actor_name!r} serves {held}, not {dataclasses.asdict(self.spec)}: the "
                        "running service has another BM25 setup; restart it or use another name"
                    )
                log.warning("replacing BM25 actor %s: it serves %s", actor_name, held)
                ray.kill(actor, no_restart=True)
                _wait_name_free(actor_name, timeout_s)
                actor = None
        if actor is None:
            opts: dict[str, Any] = {
                "num_cpus": num_cpus,
                "max_restarts": self.max_restarts,
                "max_task_retries": 0,  # a query is answered by the deadline or without BM25, never re-run
            }
            if actor_name:
                opts.update(name=actor_name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
            actor = LexicalActor.options(**opts).remote(self.spec, self.options)
            self._lexical_owned = True
        try:
            ray.get(actor.ready.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            if self._lexical_owned:
                _kill([actor])
            raise ShardStartupError(
                f"the BM25 actor for {self.spec.source} is not running after {timeout_s:.0f} s: it needs "
                f"{num_cpus} CPU (bm25_cpus) and builds a Lucene index of the corpus on its first start "
                "(minutes for millions of documents). Free CPUs, raise startup_timeout_s, or give "
                "bm25=<a built Lucene index folder>"
            ) from None
        except ray.exceptions.RayError as e:
            if self._lexical_owned:
                _kill([actor])
            # Ray's message is the actor's traceback; its last line is the error (Java not found, no corpus...)
            cause = str(getattr(e, "cause", None) or e).strip().splitlines()[-1]
            raise ShardStartupError(
                f"the BM25 actor for {self.spec.source} failed to start: {cause}"
            ) from None
        return actor

    # ---------------------------------------------------------------------------------------- queries

    async def abatch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        """Text queries also go to BM25 and are fused: the whole ``batch_search`` on a worker thread."""
        return await self._off_loop(self.batch_search, queries, k, mode)

    def batch_search(
        self, queries: Sequence[Any], k: int = 10, mode: str | None = None
    ) -> list[SearchResult]:
        texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
        if not texts:
            return super().batch_search(queries, k, mode)
        depth = max(k, self.hybrid.depth or 100)
        # both at once: BM25's call is in flight while the shards answer
        pending = self.lexical.batch_search.remote([queries[i] for i in texts], depth)
        learned = super().batch_search(queries, depth, mode)
        lexical = self._collect(pending)
        out = [_truncate(result, k) for result in learned]
        for j, i in enumerate(texts):
            result = learned[i]
            if lexical is None:
                out[i] = dataclasses.replace(out[i], partial=True, missing=[*result.missing, BM25])
                continue
            scores = dict(zip(result.doc_ids, result.scores, strict=True))
            fused = fuse(scores, dict(lexical[j]), self.hybrid, k)
            out[i] = dataclasses.replace(result, doc_ids=list(fused), scores=list(fused.values()))
        return out

    def _collect(self, ref: Any) -> list[list[tuple[str, float]]] | None:
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            self.lexical_failures += 1
            if isinstance(e, ray.exceptions.GetTimeoutError):
                with contextlib.suppress(Exception):  # queued behind a stuck call: drop it
                    ray.cancel(ref)
            log.warning("BM25 gave no answer (%s; deadline %.1f s, timeout_s): learned ranking only",
                        type(e).__name__, self.timeout_s)  # fmt: skip
            return None

    # ------------------------------------------------------------------------------------------ status

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        status = super().health(timeout_s)
        ref = self.lexical.ready.remote()
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not answered(ref, ready):
            status = {**status, "ok": False, "down": [*status["down"], BM25]}
        return status

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        stats = super().stats(timeout_s)
        try:
            lexical = ray.get(self.lexical.stats.remote(), timeout=timeout_s)
        except Exception:
            lexical = None
        stats[BM25] = {
            "source": self.spec.source,
            "fusion": dataclasses.asdict(self.hybrid),
            "failures": self.lexical_failures,
            **(lexical or {"unreachable": True}),
        }
        return stats

    def shutdown(self) -> None:
        super().shutdown()
        if self._lexical_owned:
            _kill([self.lexical])
            self._lexical_owned = False
