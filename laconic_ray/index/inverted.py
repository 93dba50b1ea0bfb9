"""InvertedIndex: one shard of learned sparse vectors, searchable exactly or approximately on CPU.

    index = InvertedIndex.build(csr, doc_ids, quantization="uint8")
    index.save("s3://bucket/index/shard-00000")
    index = InvertedIndex.load("s3://bucket/index/shard-00000")        # memory-mapped
    ids, scores = index.search(q_indices, q_values, k=10)              # exact
    ids, scores = index.search(q_indices, q_values, k=10, alpha=0.8)   # approximate
    results = index.batch_search(q_csr, k=10, num_threads=8)

Tuning knobs (the ranges that work on SPLADE-like vectors; see benchmarks/README.md for measurements):

* ``block_size`` (build, 16-256, default 64): documents per block. Smaller blocks give tighter bounds but
  more entries to sum; 32-128 is the useful range.
* ``reorder`` (build, ``"bp"`` default or ``"none"``): number documents by recursive graph bisection so
  that blocks are coherent (tighter bounds, fewer blocks scored; costs build time, see reorder.py).
* ``quantization`` (build): ``uint8`` (default; 1 byte per impact, scale fitted to the largest weight),
  ``uint16`` (finer), ``float32`` (unquantized). ``scale`` fixes the step (``0.01`` = Lucene's round(100 w)).
* ``alpha`` (search, (0, 1], default 1 = exact, 0.8 in ``mode="approximate"``): a block is scored only while
  ``alpha * bound`` can beat the k-th score. On bisection-ordered shards 0.8 keeps recall@10 at 0.995-0.996
  (synthetic SPLADE-like, SciFact and CACM BM25 vectors), 0.6 at 0.975; lower trades recall for speed.
* ``switch`` (attribute, default ``SWITCH`` = 2): how readily the blocks left under flat bounds are scored term
  at a time instead of block by block (0 = never; see kernels.search_one). Results do not depend on it.
* ``query_mass`` (search, (0, 1], default 1): keep the largest query weights that make up this share of the
  query's total weight (the long tail of small expansion terms costs time and rarely changes the top 10).
* ``candidates`` (search, int >= 0, default 0 = off): approximate search by documents instead of blocks, for
  shards whose block bounds are flat (a head-heavy vocabulary such as BERT's, where block-max prunes little):
  the ``candidates`` documents with the best partial scores over each query term's ``head_postings``
  heaviest postings are scored exactly (Seismic's static pruning; kernels._search_candidates). Recall grows
  with both; ``alpha`` does not apply. The first such search derives a forward view and the heads from the
  shard's arrays (held in memory: 3-8 bytes per posting plus 5-8 per head posting, see ``stats()``);
  ``prepare_candidates()`` does it ahead. Shards searched term at a time are searched exactly instead.
* ``head_postings`` (attribute, default ``HEAD_SHARE`` of the shard's documents, at least ``HEAD_MIN``: 1,024 up
  to 204,800 documents, 5,000 at 1M): postings per term in the heads. Heads of a fixed length lose recall as
  a shard grows (head-heavy, 1M documents, 1,024 postings: 0.77 at candidates=200 against 0.95 at 200k).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from laconic_ray.index import kernels
from laconic_ray.index.build import build_arrays
from laconic_ray.index.layout import ShardMeta, load_shard, save_shard
from laconic_ray.storage import StorageOptions

Result = tuple[list[str], np.ndarray]
DOC_RANK = 6  # position of doc_rank in InvertedIndex._raw()
ACCUMULATORS = 2  # position of the per-document accumulators in _Scratch tables

# Search modes: exact (alpha 1: provably the exhaustive top k), the approximate default setting (block-max with
# alpha < 1), and candidate search (for shards whose block bounds are flat; recall ~0.95 on issue 24's
# head-heavy regime, benchmarks/README.md). config.SEARCH_MODES names the same three.
MODES = {
    "exact": {"alpha": 1.0, "query_mass": 1.0, "candidates": 0},
    "approximate": {"alpha": 0.8, "query_mass": 1.0, "candidates": 0},
    "candidates": {"alpha": 1.0, "query_mass": 1.0, "candidates": 200},
}


class QueryError(ValueError):
    """A query the index cannot answer (bad term id, weight, k or parameter); the message says which."""


class InvertedIndex:
    """A block-max inverted index over one shard of documents (see build.py for the layout).

    Shards of at most ``accumulate_docs`` documents (default ``ACCUMULATE_DOCS``) are searched term at a time
    into per-document accumulators, where block pruning gains less than it costs (see kernels.py)."""

    ACCUMULATE_DOCS = 16_384
    SWITCH = 2.0
    HEAD_SHARE = 0.005  # candidate search's heads: this share of the shard's documents per term ...
    HEAD_MIN = 1024  # ... and at least this many postings

    def __init__(self, arrays: dict[str, np.ndarray], meta: ShardMeta, source: str = "") -> None:
        self.arrays = arrays
        self.meta = meta
        self.source = source
        self.n_blocks = max(1, -(-meta.n_docs // meta.block_size))
        self._accumulate_docs = self.ACCUMULATE_DOCS
        self.switch = self.SWITCH
        # kernel scratch, one set per searching thread (see _Scratch), so that threads search concurrently
        self._local = threading.local()
        self._id_text: str | bytes | None = None
        self._id_bounds: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._kernel_args: tuple | None = None
        self._head_postings = max(self.HEAD_MIN, int(np.ceil(self.HEAD_SHARE * meta.n_docs)))
        self._view: tuple[np.ndarray, ...] | None = None  # candidate search's forward view and heads
        self._view_lock = threading.Lock()
        self._queries = 0
        self._search_seconds = 0.0

    # ------------------------------------------------------------------------------------------ build / io

    @classmethod
    def build(
        cls,
        csr: sp.csr_matrix,
        doc_ids: Sequence[str],
        *,
        quantization: str = "uint8",
        scale: float | None = None,
        block_size: int = 64,
        reorder: str = "bp",
        vocab_size: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> InvertedIndex:
        """Index the rows of ``csr`` (weights > 0, indices sorted) named by ``doc_ids``."""
        arrays, meta = build_arrays(
            csr,
            doc_ids,
            vocab_size=vocab_size,
            quantization=quantization,
            scale=scale,
            block_size=block_size,
            reorder=reorder,
        )
        meta.metadata = dict(metadata or {})
        return cls(arrays, meta)

    @classmethod
    def from_sparse(
        cls, uri: str, *, options: StorageOptions | None = None, **build_kwargs: Any
    ) -> InvertedIndex:
        """Build from a finished ``write_sparse`` folder (the encode stage's output)."""
        from laconic_ray import sparse

        doc_ids, csr, metadata = sparse.read_sparse(uri, options)
        build_kwargs.setdefault("vocab_size", int(metadata["vocab_size"]))
        if metadata.get("weight_format") == "impact":  # integer impacts: keep them exactly
            build_kwargs.setdefault("scale", 1.0)
            if csr.nnz and csr.data.max() > 255:
                build_kwargs.setdefault("quantization", "uint16")
        build_kwargs.setdefault(
            "metadata", {k: metadata[k] for k in ("model", "weight_format") if k in metadata}
        )
        return cls.build(csr, doc_ids, **build_kwargs)

    def save(self, uri: str, options: StorageOptions | None = None) -> None:
        save_shard(os.fspath(uri), self.arrays, self.meta, options)

    @classmethod
    def load(
        cls,
        uri: str,
        mmap: bool = True,
        *,
        verify: bool = True,
        options: StorageOptions | None = None,
        expect_sha256: str | None = None,
    ) -> InvertedIndex:
        """Load a shard folder (memory-mapped by default; ``s3://`` folders are cached locally first).

        ``verify`` checks every file's checksum (one sequential read); sizes and structure are always checked.
        ``expect_sha256``: the index manifest's checksum of the shard's ``shard.json`` (refuses another build).
        """
        arrays, meta = load_shard(
            os.fspath(uri), mmap=mmap, verify=verify, options=options, expect_sha256=expect_sha256
        )
        return cls(arrays, meta, source=os.fspath(uri))

    # ------------------------------------------------------------------------------------------- queries

    @property
    def accumulate_docs(self) -> int:
        """Shards of at most this many documents are searched term at a time (a tuning knob for tests and
        benchmarks; the kernels' arguments follow it)."""
        return self._accumulate_docs

    @accumulate_docs.setter
    def accumulate_docs(self, value: int) -> None:
        self._accumulate_docs = int(value)
        self._kernel_args = None

    @property
    def head_postings(self) -> int:
        """Postings per term in the heads of candidate search (changing it derives the heads again)."""
        return self._head_postings

    @head_postings.setter
    def head_postings(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"head_postings must be >= 1, got {value}")
        with self._view_lock:
            self._head_postings, self._view = int(value), None

    @property
    def term_at_a_time(self) -> bool:
        return self.n_docs <= self._accumulate_docs

    @property
    def n_docs(self) -> int:
        return self.meta.n_docs

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    def _lookup_ids(self, ranks: np.ndarray) -> list[str]:
        """Doc ids of documents given by rank (doc-id order), the way the kernels return them."""
        if self._id_text is None:
            # one copy of the ids into a Python object makes every later lookup a slice (~100 ns); ASCII ids
            # (the usual case) are kept as a str, whose character offsets are the byte offsets: no decode
            blob = self.arrays["id_bytes"].tobytes()
            self._id_text = blob.decode() if blob.isascii() else blob
            offsets = np.asarray(self.arrays["id_offsets"])  # a plain view: memmap indexing is slow per item
            self._id_bounds = offsets[:-1], offsets[1:]
        text, (starts, ends) = self._id_text, self._id_bounds
        spans = zip(starts[ranks].tolist(), ends[ranks].tolist(), strict=False)  # equal by construction
        if isinstance(text, str):
            return [text[a:b] for a, b in spans]
        return [text[a:b].decode() for a, b in spans]

    def doc_id(self, rank: int) -> str:
        return self._lookup_ids(np.array([rank]))[0]

    def doc_ids(self) -> list[str]:
        return self._lookup_ids(np.arange(self.n_docs))

    def _query_arrays(self, indices: Any, values: Any, query_mass: float) -> tuple[np.ndarray, np.ndarray]:
        """One query's ids (int64) and weights (float64), with the checks that need no pass over them."""
        indices = kernels.writable(np.asarray(indices))
        values = kernels.writable(np.asarray(values, dtype=np.float64))
        if indices.ndim != 1 or values.ndim != 1 or len(indices) != len(values):
            raise QueryError(
                f"query needs equal-length 1-D indices and values, got {indices.shape} and {values.shape}"
            )
        if len(indices) and indices.dtype.kind not in "iu":
            raise QueryError(f"query term ids must be integers, got {indices.dtype}")
        if not 0 < query_mass <= 1:
            raise QueryError(f"query_mass must be in (0, 1], got {query_mass}")
        return indices.astype(np.int64, copy=False), values

    def _raise_query_error(self, error: int, bad: int, indices: np.ndarray, values: np.ndarray) -> None:
        """The message for ``kernels.prepare_query``'s error codes (1: term id, 2: weight)."""
        if error == 1:
            raise QueryError(
                f"query term id {int(indices[bad])} outside the vocabulary [0, {self.vocab_size})"
            )
        if error == 2:
            raise QueryError(f"query weight {values[bad]} (term {int(indices[bad])}) is not finite and >= 0")

    @staticmethod
    def _check(k: int, alpha: float, candidates: int) -> None:
        if not isinstance(k, int | np.integer) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if not 0 < alpha <= 1:
            raise QueryError(f"alpha must be in (0, 1] (1 = exact), got {alpha}")
        if not isinstance(candidates, int | np.integer) or candidates < 0:
            raise QueryError(f"candidates must be an integer >= 0 (0 = off), got {candidates!r}")

    def _raw(self) -> tuple:
        """The kernels' index arguments, as plain ndarray views: numba's dispatcher types an exact ndarray on
        a fast path and a subclass (``np.memmap``) on a slow one, several microseconds per argument. A shard
        searched term at a time also gets its postings' absolute document numbers (kernels.flat_postings)."""
        if self._kernel_args is None:
            names = ("term_ptr", "entry_block", "entry_max", "entry_post", "post_doc", "post_imp", "doc_rank")
            arrays = tuple(np.asarray(self.arrays[name]) for name in names)
            _, entry_block, _, entry_post, post_doc, post_imp, _ = arrays
            post_abs = (
                kernels.flat_postings(
                    entry_block, entry_post, post_doc, post_imp, self.meta.block_size, self.n_docs
                )
                if self.term_at_a_time
                else np.zeros(0, dtype=np.uint16)
            )
            self._kernel_args = (*arrays, post_abs)
        return self._kernel_args

    def _view_dtypes(self) -> tuple[type, type]:
        """(term id, impact) dtypes of the forward view: the narrowest that hold them."""
        term = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        impact = {"uint8": np.uint8, "uint16": np.uint16}.get(self.meta.quantization, np.float32)
        return term, impact

    def prepare_candidates(self) -> None:
        """Derive candidate search's forward view and per-term heads now rather than on the first search
        with ``candidates`` (one pass over the postings: ~1 s per 200k SPLADE-like documents)."""
        if not self.term_at_a_time:
            self._candidate_view()

    def _candidate_view(self) -> tuple[np.ndarray, ...]:
        """Candidate search's ``(fwd_ptr, fwd_term, fwd_imp, head_ptr, head_doc, head_imp)``, derived once."""
        with self._view_lock:
            if self._view is None:
                term, impact = self._view_dtypes()
                term_ptr, entry_block, _, entry_post, post_doc, post_imp, _, _ = self._raw()
                counts = kernels.doc_postings(
                    entry_block, entry_post, post_doc, post_imp, self.meta.block_size, self.n_docs
                )
                fwd_ptr = np.concatenate([[0], np.cumsum(counts)])
                per_term = np.diff(np.asarray(entry_post, dtype=np.int64)[np.asarray(term_ptr)])
                head_ptr = np.concatenate([[0], np.cumsum(np.minimum(per_term, self._head_postings))])
                view = (
                    fwd_ptr,
                    np.empty(fwd_ptr[-1], term),
                    np.empty(fwd_ptr[-1], impact),
                    head_ptr,
                    np.empty(head_ptr[-1], np.int32),
                    np.empty(head_ptr[-1], impact),
                )
                kernels.fill_candidate_view(
                    term_ptr, entry_block, entry_post, post_doc, post_imp, self.meta.block_size, *view
                )
                self._view = view
            return self._view

    def _scratch(self) -> _Scratch:
        """This thread's kernel scratch (made on its first search, kept between calls)."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = _Scratch(
                self.n_blocks, self.n_blocks * self.meta.block_size, self.vocab_size
            )
        return scratch

    def _results(self, scores: np.ndarray, docs: np.ndarray, counts: np.ndarray) -> list[Result]:
        """A batch's results (row ``i``: its first ``counts[i]`` of ``scores/docs``) with one id lookup and one
        scaling for all: per query, those NumPy calls cost a shard actor ~5 us a query more."""
        ids = self._lookup_ids(docs[np.arange(docs.shape[1]) < counts[:, None]])
        scaled = scores * self.meta.scale
        results, start = [], 0
        for i, n in enumerate(counts.tolist()):
            results.append((ids[start : start + n], scaled[i, :n]))
            start += n
        return results

    def _settings(
        self, k: int, mode: str, alpha: float | None, query_mass: float | None, candidates: int | None
    ) -> tuple[float, float, int]:
        """``(alpha, query_mass, candidates)``: ``mode``'s defaults where not given, checked with ``k``."""
        if mode not in MODES:
            raise QueryError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        defaults = MODES[mode]
        alpha = defaults["alpha"] if alpha is None else alpha
        candidates = defaults["candidates"] if candidates is None else candidates
        self._check(k, alpha, candidates)
        return alpha, defaults["query_mass"] if query_mass is None else query_mass, int(candidates)

    def _exact_args(self, alpha: float) -> tuple:
        """The exact/approximate kernels' arguments after ``k``: ``alpha``, the shard's arrays and layout."""
        return (
            float(alpha),
            *self._raw(),
            self.n_docs,
            self.meta.block_size,
            self.accumulate_docs,
            self.switch,
        )

    def _candidate_args(self, candidates: int) -> tuple:
        """Candidate search's kernel arguments after ``k``: ``candidates``, doc ranks and the derived view."""
        return candidates, self._raw()[DOC_RANK], *self._candidate_view()

    def search(
        self,
        q_indices: Any,
        q_values: Any,
        k: int = 10,
        *,
        mode: str = "exact",
        alpha: float | None = None,
        query_mass: float | None = None,
        candidates: int | None = None,
    ) -> Result:
        """Top-``k`` ``(doc_ids, scores)`` best first; ties broken by doc id. Fewer when fewer documents match;
        an empty query matches nothing. ``mode="approximate"`` uses the documented defaults of ``MODES``;
        ``alpha``/``query_mass``/``candidates`` override either mode's values."""
        alpha, query_mass, candidates = self._settings(k, mode, alpha, query_mass, candidates)
        indices, values = self._query_arrays(q_indices, q_values, query_mass)
        started = time.perf_counter()
        scratch = self._scratch()
        k_eff = min(int(k), max(self.n_docs, 1))
        scores, docs = np.empty(k_eff), np.empty(k_eff, dtype=np.int64)
        query = (indices, values, self.vocab_size, float(query_mass), self.meta.scale, k_eff)
        if candidates and not self.term_at_a_time:  # prepare_query + _search_candidates, scores scaled
            candidate_scratch = (scratch.single()[ACCUMULATORS], scratch.query_vectors(1)[0])
            n, error, bad = kernels.candidates_query(
                *query, *self._candidate_args(candidates), *candidate_scratch, scores, docs
            )
        else:  # prepare_query + search_one in one call, scores scaled
            n, error, bad = kernels.search_query(
                *query, *self._exact_args(alpha), *scratch.single(), scratch.stamps(1), scores, docs
            )
        self._raise_query_error(error, bad, indices, values)
        self._queries += 1
        self._search_seconds += time.perf_counter() - started
        return self._lookup_ids(docs[:n]), scores[:n]

    def batch_search(
        self,
        q_csr: sp.csr_matrix,
        k: int = 10,
        num_threads: int | None = None,
        *,
        mode: str = "exact",
        alpha: float | None = None,
        query_mass: float | None = None,
        candidates: int | None = None,
    ) -> list[Result]:
        """Search every row of ``q_csr``; ``num_threads`` parallel workers (default: all cores numba sees)."""
        q_csr = sp.csr_matrix(q_csr)
        if q_csr.shape[1] > self.vocab_size and q_csr.nnz and q_csr.indices.max() >= self.vocab_size:
            raise QueryError(
                f"query term id {int(q_csr.indices.max())} outside the vocabulary [0, {self.vocab_size})"
            )
        return self.search_many(
            q_csr.indptr,
            q_csr.indices,
            q_csr.data,
            k,
            num_threads,
            mode=mode,
            alpha=alpha,
            query_mass=query_mass,
            candidates=candidates,
        )

    def search_many(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
        k: int = 10,
        num_threads: int | None = None,
        *,
        mode: str = "exact",
        alpha: float | None = None,
        query_mass: float | None = None,
        candidates: int | None = None,
    ) -> list[Result]:
        """``batch_search`` of queries given as CSR arrays (row ``i`` is ``indices/values[indptr[i]:indptr[i+1]]``),
        without building a matrix: what a shard actor receives over the wire."""
        import numba

        alpha, query_mass, candidates = self._settings(k, mode, alpha, query_mass, candidates)
        indptr = kernels.writable(np.asarray(indptr, dtype=np.int64))
        indices = kernels.writable(np.asarray(indices, dtype=np.int64))
        values = kernels.writable(np.asarray(values, dtype=np.float64))
        if (
            indptr.ndim != 1
            or len(indptr) < 1
            or indptr[0] != 0
            or indptr[-1] != len(indices)
            or len(indices) != len(values)
            or np.any(np.diff(indptr) < 0)
        ):
            raise QueryError("queries: indptr, indices and values do not describe CSR rows")
        ptr, terms, weights, error, row, bad = kernels.prepare_batch(
            indptr, indices, values, self.vocab_size, float(query_mass)
        )
        if error:
            lo, hi = indptr[row], indptr[row + 1]
            self._raise_query_error(error, bad, indices[lo:hi], values[lo:hi])
        n_queries = len(indptr) - 1
        k_eff = min(int(k), max(self.n_docs, 1))
        scores = np.empty((n_queries, k_eff))
        docs = np.empty((n_queries, k_eff), dtype=np.int64)
        counts = np.zeros(n_queries, dtype=np.int64)
        threads = numba.config.NUMBA_NUM_THREADS if num_threads is None else int(num_threads)
        if threads <= 0:
            raise QueryError(f"num_threads must be > 0, got {num_threads}")
        previous = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        started = time.perf_counter()
        scratch = self._scratch()
        try:
            n_chunks = 1 if threads == 1 else max(1, min(n_queries, threads * 4))
            if candidates and not self.term_at_a_time:
                kernels.candidates_batch(
                    ptr,
                    terms,
                    weights,
                    k_eff,
                    *self._candidate_args(candidates),
                    n_chunks,
                    scratch.chunked(n_chunks)[ACCUMULATORS],
                    scratch.query_vectors(n_chunks),
                    scores,
                    docs,
                    counts,
                )
            else:
                kernels.search_batch(
                    ptr,
                    terms,
                    weights,
                    k_eff,
                    *self._exact_args(alpha),
                    n_chunks,
                    *scratch.chunked(n_chunks),
                    scratch.stamps(n_queries),
                    scores,
                    docs,
                    counts,
                )
        finally:
            numba.set_num_threads(previous)
        self._queries += n_queries
        self._search_seconds += time.perf_counter() - started
        return self._results(scores, docs, counts)

    def reset_stats(self) -> None:
        """Start the query count and search time of :meth:`stats` again (e.g. after warming up)."""
        self._queries, self._search_seconds = 0, 0.0

    def stats(self) -> dict[str, Any]:
        nbytes = int(sum(a.nbytes for a in self.arrays.values()))
        return {
            "docs": self.n_docs,
            "vocab_size": self.vocab_size,
            "postings": self.meta.n_postings,
            "block_entries": self.meta.n_entries,
            "block_size": self.meta.block_size,
            "reorder": self.meta.reorder,
            "kernel": "term-at-a-time" if self.term_at_a_time else "block-max",
            "quantization": self.meta.quantization,
            "scale": self.meta.scale,
            "bytes": nbytes,
            "bytes_per_doc": nbytes / max(self.n_docs, 1),
            "mean_doc_nnz": float(self.arrays["doc_len"].mean()) if self.n_docs else 0.0,
            # candidate search's derived forward view and heads, held in memory once used (0 before)
            "candidate_view_bytes": int(sum(a.nbytes for a in self._view)) if self._view else 0,
            "queries": self._queries,
            "mean_search_ms": 1000 * self._search_seconds / max(self._queries, 1),
            "source": self.source,
        }


class _Scratch:
    """One thread's kernel scratch: block bounds, entry tables and term-at-a-time accumulators (see
    kernels.search_one) for single queries, and a set per chunk for batches; grown on need, never cleared
    between queries (stamps mark a table row as the current query's). Zeroing fresh tables per call cost
    ~0.5 ms on a 200k-document shard, more than a small batch's search."""

    def __init__(self, n_blocks: int, n_slots: int, vocab_size: int) -> None:
        self.n_blocks, self.n_slots, self.vocab_size = n_blocks, n_slots, vocab_size
        self.one: tuple[np.ndarray, ...] | None = None
        self.chunks: tuple[np.ndarray, ...] | None = None
        self.qv: np.ndarray = np.zeros((1, 0))  # candidate search's dense query vectors, a row per chunk
        self.stamp = 0  # the last stamp handed out

    def single(self) -> tuple[np.ndarray, ...]:
        """``(bounds, entry tables, accumulators)`` for ``search``."""
        if self.one is None:
            self.one = self._tables()
        return self.one

    def chunked(self, n_chunks: int) -> tuple[np.ndarray, ...]:
        """The same with a row per chunk, for ``search_batch``."""
        if self.chunks is None or self.chunks[0].shape[0] < n_chunks:
            self.chunks = self._tables(n_chunks)
        return self.chunks

    def query_vectors(self, n_chunks: int) -> np.ndarray:
        """``n_chunks`` [vocab] rows for candidate search's dense queries (zero; the kernel keeps them so)."""
        if self.qv.shape[0] < n_chunks or self.qv.shape[1] != self.vocab_size:
            self.qv = np.zeros((max(n_chunks, self.qv.shape[0]), self.vocab_size))
        return self.qv

    def _tables(self, *rows: int) -> tuple[np.ndarray, ...]:
        return (
            np.zeros((*rows, self.n_blocks)),
            np.zeros((*rows, self.n_blocks, kernels.MAX_TABLE_TERMS), dtype=np.int64),
            np.zeros((*rows, self.n_slots)),
        )

    def stamps(self, n: int) -> int:
        """The first of ``n`` fresh stamps. Stamps live in the upper 32 bits of an int64 tag: before they
        would run out (2^31 queries), this thread's tables are cleared and numbering starts again."""
        if self.stamp + n >= 1 << 31:
            for tables in (self.one, self.chunks):
                if tables is not None:
                    tables[1][...] = 0
            self.stamp = 0
        self.stamp += n
        return self.stamp - n + 1
