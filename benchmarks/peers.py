"""Peer engines behind one interface, so the benchmark driver times laconic_ray against them alike.

Every adapter takes the same input (doc ids plus a float32 CSR of positive weights over the vocabulary ids) and
answers the same calls: ``build``, single-query single-thread ``search``, ``batch_search`` and ``index_bytes``.
Each one uses its engine's fastest correct entry point below any convenience layer (pandas frames, query
encoders, text tokenisers), because those layers cost more per query than the engines themselves and would
make the comparison about Python glue. What an adapter still does in Python per query (building the engine's
query object) is part of its measured latency, and is the minimum the engine's Python API allows.

    engine = make("pisa")                        # or Seismic(query_cut=8), BMP(alpha=0.9), ...
    engine.build(doc_ids, docs, "/work/bench-scratch/pisa")
    ids = engine.search(q_indices, q_values, k=10)
    runs = engine.batch_search(q_csr, k=10, threads=2)

Integer engines get the usual quantisations: PISA and Lucene index ``round(100 w)`` impacts and take
``round(100 w)`` query weights (Anserini's and PISA's convention for learned sparse vectors); BMP stores 8-bit
impacts and caps query weights at 32 levels (its own limits, see ``BMP``). Seismic takes floats. ``Exhaustive``
(scipy, float32) is the reference the others' recall is measured against.

Traps the adapters work around (details in each class): BMP keeps term ids in 16 bits and panics on queries
whose terms it does not know; PISA reads query weights as repeat counts; pyserini's searcher module builds an
OpenAI client at import (we use the Java searcher directly); Anserini indexes a collection file per thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import scipy.sparse as sp

DEFAULT_JAVA_HOME = "/usr/lib/jvm/temurin-25-jdk-amd64"  # Anserini 1.x needs Java 21+


class Engine(Protocol):
    name: str

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None: ...

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]: ...

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int) -> list[list[str]]: ...

    def index_bytes(self) -> int: ...


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet(log_path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 to ``log_path`` while native code prints progress bars and logs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    libc = ctypes.CDLL(None)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            libc.fflush(None)  # C stdio buffers still pointing at the log
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _path_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rows(csr: sp.csr_matrix) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for s, e in itertools.pairwise(csr.indptr.tolist()):
        yield csr.indices[s:e], csr.data[s:e]


def _impacts(values: np.ndarray, scale: float) -> np.ndarray:
    """``round(scale * w)`` as int64, at least 1 (a stored posting must keep a positive impact)."""
    return np.maximum(1, np.rint(np.asarray(values, dtype=np.float64) * scale)).astype(np.int64)


def _checked(doc_ids: Sequence[str], docs: sp.csr_matrix) -> sp.csr_matrix:
    docs = sp.csr_matrix(docs, dtype=np.float32)
    if docs.shape[0] != len(doc_ids):
        raise ValueError(f"{len(doc_ids)} doc ids for {docs.shape[0]} rows")
    if docs.nnz and docs.data.min() <= 0:
        raise ValueError("document weights must be > 0")
    docs.sort_indices()
    return docs


# ---------------------------------------------------------------------------------------------- engines


class Exhaustive:
    """scipy exhaustive scoring in float32: the reference for recall, and the no-index baseline.

    ``search`` scores the query's columns of a CSC copy (only the postings of the query terms are touched);
    ties are broken by document order. Documents scoring 0 are not returned. ``batch_search`` multiplies
    query chunks by the collection; scipy's sparse product holds the GIL, so ``threads`` is ignored.
    """

    name = "exhaustive"

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._csc: sp.csc_matrix | None = None

    @property
    def config(self) -> dict[str, Any]:
        return {}

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        self._ids = list(doc_ids)
        self._csc = _checked(doc_ids, docs).tocsc()
        self._csc.sort_indices()

    def _top(self, scores: np.ndarray, k: int) -> list[str]:
        if len(scores) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            candidates = np.flatnonzero(scores >= scores[part].min())  # every doc tied with the k-th
        else:
            candidates = np.arange(len(scores))
        candidates = candidates[scores[candidates] > 0]
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return [self._ids[i] for i in candidates[order]]

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        assert self._csc is not None, "build first"
        scores = self._csc[:, np.asarray(q_indices)] @ np.asarray(q_values, dtype=np.float32)
        return self._top(np.asarray(scores).ravel(), k)

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        assert self._csc is not None, "build first"
        queries = sp.csr_matrix(queries, dtype=np.float32)
        chunk = max(1, int(2e7 // max(self._csc.shape[0], 1)))  # ~80 MB of dense scores at a time
        results: list[list[str]] = []
        for start in range(0, queries.shape[0], chunk):
            scores = (queries[start : start + chunk] @ self._csc.T).toarray()
            results.extend(self._top(row, k) for row in scores)
        return results

    def index_bytes(self) -> int:
        assert self._csc is not None, "build first"
        return int(self._csc.data.nbytes + self._csc.indices.nbytes + self._csc.indptr.nbytes)


class TermAtATime:
    """The plain exact kernel the index must beat: numba term-at-a-time over float32 postings (CSC), one
    dense accumulator per query, then a partial sort. No skipping: every posting of every query term."""

    name = "taat"

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._csc: sp.csc_matrix | None = None
        self._kernel: Any = None
        self._acc = np.zeros(0, dtype=np.float32)  # one score per document, reused across queries

    @property
    def config(self) -> dict[str, Any]:
        return {}

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        import numba

        self._ids = list(doc_ids)
        self._csc = _checked(doc_ids, docs).astype(np.float32).tocsc()

        @numba.njit(cache=False, nogil=True)
        def accumulate(indptr, indices, data, terms, weights, acc):
            acc[:] = 0.0
            for i in range(len(terms)):
                t, w = terms[i], weights[i]
                for p in range(indptr[t], indptr[t + 1]):
                    acc[indices[p]] += w * data[p]

        self._kernel = accumulate
        self._acc = np.zeros(docs.shape[0], dtype=np.float32)

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        assert self._csc is not None, "build first"
        csc, acc = self._csc, self._acc
        terms = np.asarray(q_indices, dtype=np.int64)
        self._kernel(csc.indptr, csc.indices, csc.data, terms, np.asarray(q_values, dtype=np.float32), acc)
        top = np.argpartition(-acc, k - 1)[:k] if len(acc) > k else np.arange(len(acc))
        top = top[acc[top] > 0]
        return [self._ids[i] for i in top[np.lexsort((top, -acc[top]))]]

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        queries = sp.csr_matrix(queries)
        return [
            self.search(queries.indices[s:e], queries.data[s:e], k)
            for s, e in zip(queries.indptr[:-1], queries.indptr[1:], strict=True)
        ]

    def index_bytes(self) -> int:
        assert self._csc is not None, "build first"
        return int(self._csc.data.nbytes + self._csc.indices.nbytes + self._csc.indptr.nbytes)


class LaconicRay:
    """Our ``InvertedIndex``, behind the same interface (exact by default; ``mode``/``alpha``/``query_mass``,
    ``candidates``/``head_postings`` for candidate search). With ``candidates``, ``index_bytes`` counts the
    forward view and heads that candidate search derives and holds in memory."""

    name = "laconic_ray"
    SEARCH_KNOBS: ClassVar[frozenset[str]] = frozenset(
        {"mode", "alpha", "query_mass", "candidates", "head_postings"}
    )

    def __init__(
        self,
        mode: str = "exact",
        alpha: float | None = None,
        query_mass: float | None = None,
        candidates: int | None = None,
        head_postings: int | None = None,  # None: the index's default (InvertedIndex.HEAD_SHARE)
        quantization: str = "uint8",
        block_size: int = 64,
        reorder: str = "bp",
    ) -> None:
        self.mode, self.alpha, self.query_mass = mode, alpha, query_mass
        self.candidates, self.head_postings = candidates, head_postings
        self.quantization, self.block_size, self.reorder = quantization, block_size, reorder
        self._index: Any = None
        self._default_head = 0  # the index's own head_postings, restored when a setting gives none

    @property
    def config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "query_mass": self.query_mass,
            "candidates": self.candidates,
            "head_postings": self.head_postings,
            "quantization": self.quantization,
            "block_size": self.block_size,
            "reorder": self.reorder,
        }

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        from laconic_ray.index.inverted import InvertedIndex

        self._index = InvertedIndex.build(
            _checked(doc_ids, docs),
            doc_ids,
            quantization=self.quantization,
            block_size=self.block_size,
            reorder=self.reorder,
        )
        self._default_head = self._index.head_postings

    def _knobs(self) -> dict[str, Any]:
        head = self._default_head if self.head_postings is None else self.head_postings
        if self._index.head_postings != head:
            self._index.head_postings = head
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "query_mass": self.query_mass,
            "candidates": self.candidates,
        }

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        ids, _ = self._index.search(q_indices, q_values, k, **self._knobs())
        return ids

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        return [ids for ids, _ in self._index.batch_search(queries, k, num_threads=threads, **self._knobs())]

    def index_bytes(self) -> int:
        stats = self._index.stats()
        return int(stats["bytes"] + (stats["candidate_view_bytes"] if self.candidates else 0))


class Seismic:
    """Seismic (pyseismic-lsr): clustered, statically pruned posting lists with summaries; approximate.

    Built with ``SeismicDatasetLV(dim=vocab).add_documents_by_id`` (CSR arrays straight in, no token strings)
    and ``SeismicIndexLV.build_from_dataset`` — the ``LV`` variants, because the plain ones keep component
    ids in 16 bits and our vocabulary has 128,256 ids. Queries name components by their id as a string
    (``"42"``), in Seismic's fixed-width string dtype. The index is saved under ``workdir`` so that
    ``index_bytes`` is its size on disk.

    ``search`` (one query, one thread) is what single-thread figures must time: ``batch_search`` with
    ``num_threads=1`` still keeps two cores busy. ``SETTINGS`` holds the two operating points measured on
    ``synthetic.generate(20_000, 200, seed=0)``; at that size ``n_postings=3500`` prunes nothing, so the
    build knobs need re-tuning (``n_postings`` up, in proportion) on collections of millions.
    """

    name = "seismic"
    SEARCH_KNOBS: ClassVar[frozenset[str]] = frozenset({"query_cut", "heap_factor"})
    SETTINGS: ClassVar[dict[str, dict[str, Any]]] = {
        "recall95": {"query_cut": 5, "heap_factor": 0.9},  # recall@10 0.957 at 20k docs
        "recall99": {"query_cut": 8, "heap_factor": 0.9},  # recall@10 0.995 at 20k docs
    }

    def __init__(
        self,
        query_cut: int = 5,
        heap_factor: float = 0.9,
        *,
        n_postings: int = 3500,
        centroid_fraction: float = 0.1,
        summary_energy: float = 0.4,
        max_fraction: float = 1.5,
        min_cluster_size: int = 2,
        doc_cut: int = 15,
        sorted_summaries: bool = True,
        build_threads: int = 0,
    ) -> None:
        self.query_cut, self.heap_factor, self.sorted_summaries = query_cut, heap_factor, sorted_summaries
        self.build_args = {
            "n_postings": n_postings,
            "centroid_fraction": centroid_fraction,
            "summary_energy": summary_energy,
            "max_fraction": max_fraction,
            "min_cluster_size": min_cluster_size,
            "doc_cut": doc_cut,
            "num_threads": build_threads,
        }
        self._index: Any = None
        self._file: Path | None = None
        self._string_type: Any = None

    @classmethod
    def at(cls, setting: str, **kwargs: Any) -> Seismic:
        """An adapter at one of the ``SETTINGS`` (``"recall95"``, ``"recall99"``), other knobs as given."""
        return cls(**{**cls.SETTINGS[setting], **kwargs})

    @property
    def config(self) -> dict[str, Any]:
        return {
            "query_cut": self.query_cut,
            "heap_factor": self.heap_factor,
            "sorted": self.sorted_summaries,
            **self.build_args,
        }

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        import seismic

        docs = _checked(doc_ids, docs)
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        self._string_type = seismic.get_seismic_string()
        dataset = seismic.SeismicDatasetLV(dim=docs.shape[1])
        dataset.add_documents_by_id(
            list(doc_ids),
            docs.indices.astype(np.int64),
            docs.data.astype(np.float32),
            docs.indptr.astype(np.int64),
        )
        with _quiet(out / "seismic.log"):
            self._index = seismic.SeismicIndexLV.build_from_dataset(dataset, **self.build_args)
            self._index.save(str(out / "index"))
        self._file = out / "index.index.seismic"

    def _query(self, q_indices: np.ndarray, q_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(q_indices).astype(self._string_type), np.asarray(q_values, dtype=np.float32)

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        if len(q_indices) == 0:
            return []
        components, values = self._query(q_indices, q_values)
        hits = self._index.search(
            query_id="q",
            query_components=components,
            query_values=values,
            k=k,
            query_cut=self.query_cut,
            heap_factor=self.heap_factor,
            sorted=self.sorted_summaries,
        )
        return [doc for _, _, doc in hits]

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        queries = sp.csr_matrix(queries, dtype=np.float32)
        present = [i for i in range(queries.shape[0]) if queries.indptr[i + 1] > queries.indptr[i]]
        results: list[list[str]] = [[] for _ in range(queries.shape[0])]
        if not present:
            return results
        pairs = [self._query(*row) for row in _rows(queries[present])]
        hits = self._index.batch_search(
            queries_ids=np.array([str(i) for i in present], dtype=self._string_type),
            query_components=[c for c, _ in pairs],
            query_values=[v for _, v in pairs],
            k=k,
            query_cut=self.query_cut,
            heap_factor=self.heap_factor,
            sorted=self.sorted_summaries,
            num_threads=threads,
        )
        for ranked in hits:
            if ranked:
                results[int(ranked[0][0])] = [doc for _, _, doc in ranked]
        return results

    def index_bytes(self) -> int:
        assert self._file is not None, "build first"
        return _path_bytes(self._file)


class BMP:
    """BMP (Block-Max Pruning, Mallia, Suel & Tonellotto, SIGIR 2024), package ``bmp``: block-at-a-time search
    over a block forward index, ordered by block upper bounds. ``alpha`` < 1 stops early (approximate),
    ``beta`` < 1 keeps only that share of the query terms; 1/1 is exact up to BMP's quantisation.

    Built through ``bmp.InvertedIndexer``: ``add_term(term, [(doc, impact), ...])`` per term, then
    ``add_document(doc_id, [(term_number, impact), ...])`` per document, then ``finish()``; a term's number is
    its ``add_term`` order. BMP's own limits, which the adapter has to respect:

    * term numbers are 16-bit (``TermId = u16``): with more than 65,536 distinct terms, numbers wrap and
      unrelated terms alias (the plain ``bmp.Indexer`` numbers terms by first appearance, which aliases
      frequent terms: recall@10 0.971 instead of 0.985 at 20k docs). We number terms by decreasing document
      frequency and drop all but the ``max_terms`` most frequent (at 20k synthetic docs: 98,851 terms, the
      dropped ones occur in about one document each);
    * impacts are 8-bit (block maxima are cast to ``u8``, so larger values wrap): documents are scaled by
      ``255 / max weight``;
    * query weights are capped at 32 levels (``MAX_TERM_WEIGHT``, rescaled with ``ceil`` above that): we scale
      each query to ``round(32 w / max w)`` (at least 1) ourselves, which is more accurate than BMP's ceil.
      This is what bounds BMP's recall at alpha 1: 0.985 at 20k docs;
    * scores are 16-bit (``TopKHeap<u16>``, saturating bounds): fine for SPLADE-like vectors (the largest
      score on our synthetic set is ~27,000), an overflow risk for much longer queries;
    * ``Searcher.search`` panics (``pyo3_runtime.PanicException``, a ``BaseException``) when no block bound
      beats the initial threshold, e.g. a query of one term whose top impacts tie, or no known term. Queries
      with no known term return ``[]``; other panics return ``[]`` and count in ``self.panics``.

    ``Searcher.search`` holds the GIL and the package has no parallel batch call except a TREC-file one, so
    ``batch_search`` runs the queries one after the other (``threads`` ignored).
    """

    name = "bmp"
    SEARCH_KNOBS: ClassVar[frozenset[str]] = frozenset({"alpha", "beta"})

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        *,
        bsize: int = 32,
        compress_range: bool = False,
        query_levels: int = 32,
        max_terms: int = 65_536,
    ) -> None:
        self.alpha, self.beta = alpha, beta
        self.bsize, self.compress_range = bsize, compress_range
        self.query_levels, self.max_terms = query_levels, max_terms
        self.panics = 0
        self.dropped_terms = 0
        self._searcher: Any = None
        self._known: np.ndarray = np.zeros(0, dtype=bool)
        self._file: Path | None = None

    @property
    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "bsize": self.bsize,
            "compress_range": self.compress_range,
            "query_levels": self.query_levels,
            "max_terms": self.max_terms,
        }

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        import bmp

        docs = _checked(doc_ids, docs)
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        self._file = out / "index.bmp"
        impacts = docs.copy()
        scale = 255.0 / float(docs.data.max()) if docs.nnz else 1.0
        impacts.data = np.minimum(255, _impacts(docs.data, scale))
        csc = impacts.tocsc()
        csc.sort_indices()
        df = np.diff(csc.indptr)
        by_df = np.argsort(-df, kind="stable")
        by_df = by_df[df[by_df] > 0]
        kept = by_df[: self.max_terms]
        self.dropped_terms = int(len(by_df) - len(kept))
        number = np.full(docs.shape[1], -1, dtype=np.int64)
        number[kept] = np.arange(len(kept))
        self._known = number >= 0
        indexer = bmp.InvertedIndexer(str(self._file), self.bsize, self.compress_range)
        for term in kept.tolist():
            s, e = csc.indptr[term], csc.indptr[term + 1]
            indexer.add_term(
                str(term), list(zip(csc.indices[s:e].tolist(), csc.data[s:e].tolist(), strict=True))
            )
        for doc_id, (terms, values) in zip(doc_ids, _rows(impacts), strict=True):
            numbers = number[terms]
            keep = numbers >= 0
            indexer.add_document(
                doc_id, list(zip(numbers[keep].tolist(), values[keep].tolist(), strict=True))
            )
        with _quiet(out / "bmp.log"):
            indexer.finish()
        self._searcher = bmp.Searcher(str(self._file))

    def _query(self, q_indices: np.ndarray, q_values: np.ndarray) -> dict[str, int]:
        q_indices, q_values = np.asarray(q_indices), np.asarray(q_values, dtype=np.float64)
        keep = self._known[q_indices] & (q_values > 0)
        if not keep.any():
            return {}
        q_indices, q_values = q_indices[keep], q_values[keep]
        weights = _impacts(q_values, self.query_levels / q_values.max())
        return dict(zip(map(str, q_indices.tolist()), weights.tolist(), strict=True))

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        query = self._query(q_indices, q_values)
        if not query:
            return []
        try:
            docnos, _ = self._searcher.search(query, k=k, alpha=self.alpha, beta=self.beta)
        except BaseException as error:  # pyo3's PanicException derives from BaseException
            if type(error).__name__ != "PanicException":
                raise
            self.panics += 1
            return []
        return list(docnos)

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        return [self.search(terms, values, k) for terms, values in _rows(sp.csr_matrix(queries))]

    def index_bytes(self) -> int:
        assert self._file is not None, "build first"
        return _path_bytes(self._file)


class PISA:
    """PISA through ``pyterrier_pisa._pisathon`` (the C++ extension), below pyterrier's pandas layer.

    Build: the adapter writes PISA's binary inverted collection itself (``inv.docs``/``inv.freqs``/
    ``inv.sizes``, terms in lexicographic order as the lexicon lookup requires, ``fwd.terms``,
    ``fwd.documents``; ``_pisathon.build_binlex`` for the two lexicons) from a CSC of ``round(100 w)``
    impacts, then ``_pisathon.prepare_index(ctx, dir, encoding, "quantized", "", block_size=64, quantize=0)``
    computes the block-max data and compresses the index. The "quantized" scorer returns the stored impact,
    so scores are integer dot products.

    Search: ``_pisathon.retrieve(ctx, algorithm, [(0, {term: weight})], k=, threads=1, pretokenised=1,
    query_weighted=1, result_*=buffers)``. Trap: the extension reads a query weight as a *repeat count*
    (``for i in 1..weight: push(term)``; PISA then counts the repeats), so weights must be integers already,
    ``round(100 w)``; a float like 0.37 would silently become 0. ``algorithm``: ``maxscore`` (default),
    ``block_max_wand``, ``block_max_maxscore``, ``ranked_or`` ... all exact. ``batch_search`` hands all
    queries to one ``retrieve`` call with ``threads`` (TBB workers).
    """

    name = "pisa"

    def __init__(
        self,
        algorithm: str = "maxscore",
        *,
        encoding: str = "block_simdbp",
        block_size: int = 64,
        scale: float = 100.0,
    ) -> None:
        self.algorithm, self.encoding, self.block_size, self.scale = algorithm, encoding, block_size, scale
        self._ctx: Any = None
        self._dir: Path | None = None
        self._pisa: Any = None

    @property
    def config(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "encoding": self.encoding,
            "block_size": self.block_size,
            "scale": self.scale,
        }

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        from pyterrier_pisa import _pisathon

        self._pisa = _pisathon
        docs = _checked(doc_ids, docs)
        if any(any(c.isspace() for c in d) for d in doc_ids):
            raise ValueError("PISA's document lexicon is line based: doc ids must not contain whitespace")
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        self._dir = out
        impacts = docs.copy()
        impacts.data = _impacts(docs.data, self.scale).astype(np.uint32)
        csc = impacts.tocsc()
        csc.sort_indices()
        terms = np.flatnonzero(np.diff(csc.indptr))
        names = np.array([str(t) for t in terms.tolist()])
        order = np.argsort(names, kind="stable")  # lexicographic, as PISA's lexicon binary search needs
        with open(out / "inv.docs", "wb") as f_docs, open(out / "inv.freqs", "wb") as f_freqs:
            f_docs.write(np.array([1, docs.shape[0]], dtype=np.uint32).tobytes())
            for term in terms[order].tolist():
                s, e = csc.indptr[term], csc.indptr[term + 1]
                length = np.array([e - s], dtype=np.uint32).tobytes()
                f_docs.write(length + csc.indices[s:e].astype(np.uint32).tobytes())
                f_freqs.write(length + csc.data[s:e].tobytes())
        lengths = np.asarray(impacts.sum(axis=1), dtype=np.uint32).ravel()
        with open(out / "inv.sizes", "wb") as f_sizes:
            f_sizes.write(np.array([docs.shape[0]], dtype=np.uint32).tobytes() + lengths.tobytes())
        (out / "fwd.terms").write_text("".join(f"{name}\n" for name in names[order]))
        (out / "fwd.documents").write_text("".join(f"{d}\n" for d in doc_ids))
        with _quiet(out / "pisa.log"):
            _pisathon.build_binlex(str(out / "fwd.documents"), str(out / "fwd.doclex"))
            _pisathon.build_binlex(str(out / "fwd.terms"), str(out / "fwd.termlex"))
            self._ctx = _pisathon.RetrievalContext()
            _pisathon.prepare_index(
                self._ctx,
                str(out),
                self.encoding,
                "quantized",
                "",
                block_size=self.block_size,
                quantize=0,
                stop_fname="",
            )

    def _query(self, q_indices: np.ndarray, q_values: np.ndarray) -> dict[str, float]:
        weights = np.rint(np.asarray(q_values, dtype=np.float64) * self.scale)
        return {
            str(t): w for t, w in zip(np.asarray(q_indices).tolist(), weights.tolist(), strict=True) if w > 0
        }

    def _retrieve(self, queries: list[tuple[int, dict[str, float]]], k: int, threads: int) -> list[list[str]]:
        n = max(1, len(queries) * k)
        qidx = np.empty(n, dtype=np.int32)
        docnos = np.empty(n, dtype=object)
        size = self._pisa.retrieve(
            self._ctx,
            self.algorithm,
            queries,
            k=k,
            threads=threads,
            pretokenised=1,
            query_weighted=1,
            result_qidxs=qidx,
            result_docnos=docnos,
            result_ranks=np.empty(n, dtype=np.int32),
            result_scores=np.empty(n, dtype=np.float32),
        )
        results: list[list[str]] = [[] for _ in queries]
        for q, doc in zip(qidx[:size].tolist(), docnos[:size].tolist(), strict=True):
            results[q].append(doc)  # each query's hits are written contiguously, best first
        return results

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        return self._retrieve([(0, self._query(q_indices, q_values))], k, 1)[0]

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        rows = [(i, self._query(t, v)) for i, (t, v) in enumerate(_rows(sp.csr_matrix(queries)))]
        return self._retrieve(rows, k, threads)

    def index_bytes(self) -> int:
        """What search maps: the compressed index, its block-max data and the two lexicons."""
        assert self._dir is not None, "build first"
        wand = f"quantized.q0.bmw.{self.block_size}"
        files = [wand, f"{wand}.{self.encoding}", "fwd.termlex", "fwd.doclex"]
        return sum(_path_bytes(self._dir / f) for f in files)


class LuceneImpact:
    """Lucene impact search through Anserini (pyserini 1.6's fat jar), with the Java searcher called directly.

    Build: documents go to an Anserini ``JsonVectorCollection`` (``{"id", "contents": "", "vector":
    {"t<id>": round(100 w)}}``, split into one file per indexing thread, since Anserini indexes a file per
    thread), then a subprocess runs ``python -m pyserini.index.lucene --collection JsonVectorCollection
    --input <dir> --index <dir> --generator DefaultLuceneDocumentGenerator --impact --pretokenized
    --threads N [--optimize]``. Anserini turns each weight into a term frequency by repeating the term, so
    indexing is slow (about a minute for 20k documents on two busy cores).

    Search: ``io.anserini.search.SimpleImpactSearcher(index).search(HashMap<String, Integer>, k)`` through
    pyjnius (``pyserini.pyclass``), with ``round(100 w)`` query weights. Not ``LuceneImpactSearcher``: its
    module imports ``pyserini.encode``, which builds an OpenAI client at import and fails without an API key,
    and it would drop query terms through its idf filter. About 1 ms of each query is pyjnius building the
    Java map (~35 us per entry). Anserini scores with a sort on (score, docid) and re-analyses the query, as
    its command-line search does. ``batch_search`` is ``SimpleImpactSearcher.batch_search`` (Java threads).

    Java: Anserini 1.x needs Java 21+; ``JAVA_HOME`` is set to ``java_home`` (if unset) before pyjnius loads.
    The JVM lives for the rest of the process.
    """

    name = "lucene"

    def __init__(
        self,
        *,
        scale: float = 100.0,
        index_threads: int = 2,
        optimize: bool = True,
        java_home: str = DEFAULT_JAVA_HOME,
    ) -> None:
        self.scale, self.index_threads, self.optimize, self.java_home = (
            scale,
            index_threads,
            optimize,
            java_home,
        )
        self._dir: Path | None = None
        self._searcher: Any = None
        self._map: Any = None
        self._int: Any = None
        self._list: Any = None

    @property
    def config(self) -> dict[str, Any]:
        return {"scale": self.scale, "index_threads": self.index_threads, "optimize": self.optimize}

    def _java_env(self) -> dict[str, str]:
        os.environ.setdefault("JAVA_HOME", self.java_home)
        java_bin = str(Path(os.environ["JAVA_HOME"]) / "bin")
        if java_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = java_bin + os.pathsep + os.environ.get("PATH", "")
        return dict(os.environ)

    def build(self, doc_ids: list[str], docs: sp.csr_matrix, workdir: str) -> None:
        docs = _checked(doc_ids, docs)
        out = Path(workdir)
        collection = out / "collection"
        collection.mkdir(parents=True, exist_ok=True)
        self._dir = out / "index"
        impacts = _impacts(docs.data, self.scale)
        n_files = max(1, min(self.index_threads, docs.shape[0]))
        bounds = np.linspace(0, docs.shape[0], n_files + 1).astype(int)
        for f, (start, end) in enumerate(itertools.pairwise(bounds.tolist())):
            with open(collection / f"part-{f:03d}.jsonl", "w") as fout:
                for i in range(start, end):
                    s, e = docs.indptr[i], docs.indptr[i + 1]
                    vector = ", ".join(
                        f'"t{t}": {w}'
                        for t, w in zip(docs.indices[s:e].tolist(), impacts[s:e].tolist(), strict=True)
                    )
                    fout.write(
                        f'{{"id": {json.dumps(doc_ids[i])}, "contents": "", "vector": {{{vector}}}}}\n'
                    )
        command = [
            sys.executable, "-m", "pyserini.index.lucene",
            "--collection", "JsonVectorCollection",
            "--input", str(collection),
            "--index", str(self._dir),
            "--generator", "DefaultLuceneDocumentGenerator",
            "--impact", "--pretokenized",
            "--threads", str(self.index_threads),
        ] + (["--optimize"] if self.optimize else [])  # fmt: skip
        with open(out / "anserini.log", "w") as log:
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._java_env(), check=False
            )
        if done.returncode != 0:
            tail = (out / "anserini.log").read_text()[-2000:]
            raise RuntimeError(f"Anserini indexing failed ({done.returncode}):\n{tail}")
        self._open(out)

    def _open(self, out: Path) -> None:
        self._java_env()
        with _quiet(out / "jvm.log"):
            from pyserini.pyclass import JArrayList, JHashMap, JInt, autoclass

            self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(self._dir))
        self._map, self._int, self._list = JHashMap, JInt, JArrayList

    def _query(self, q_indices: np.ndarray, q_values: np.ndarray) -> Any:
        """A ``HashMap<String, Integer>`` of ``round(100 w)`` weights (pyserini 1.6 takes integers only);
        ``None`` when every weight rounds to 0."""
        weights = np.rint(np.asarray(q_values, dtype=np.float64) * self.scale).astype(np.int64)
        pairs = [
            (t, w) for t, w in zip(np.asarray(q_indices).tolist(), weights.tolist(), strict=True) if w > 0
        ]
        if not pairs:
            return None
        query = self._map()
        for term, weight in pairs:
            query.put(f"t{term}", self._int(weight))
        return query

    def search(self, q_indices: np.ndarray, q_values: np.ndarray, k: int) -> list[str]:
        query = self._query(q_indices, q_values)
        if query is None:
            return []
        return [hit.docid for hit in self._searcher.search(query, k)]

    def batch_search(self, queries: sp.csr_matrix, k: int, threads: int = 1) -> list[list[str]]:
        rows = list(_rows(sp.csr_matrix(queries)))
        query_list, qid_list = self._list(), self._list()
        for i, (terms, values) in enumerate(rows):
            query = self._query(terms, values)
            if query is not None:
                query_list.add(query)
                qid_list.add(str(i))
        results: list[list[str]] = [[] for _ in rows]
        if query_list.size():
            hits = self._searcher.batch_search(query_list, qid_list, k, threads)
            for i in range(len(rows)):
                ranked = hits.get(str(i))
                if ranked is not None:
                    results[i] = [hit.docid for hit in ranked]
        return results

    def index_bytes(self) -> int:
        assert self._dir is not None, "build first"
        return _path_bytes(self._dir)


ENGINES: dict[str, type] = {
    "exhaustive": Exhaustive,
    "laconic_ray": LaconicRay,
    "seismic": Seismic,
    "bmp": BMP,
    "pisa": PISA,
    "lucene": LuceneImpact,
    "taat": TermAtATime,
}


def make(name: str, **knobs: Any) -> Engine:
    """An adapter by name (a key of ``ENGINES``) with its constructor knobs."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; one of {sorted(ENGINES)}")
    return ENGINES[name](**knobs)
