"""Document reordering by recursive graph bisection (BP), so that a block's documents share their terms.

Why: a block-max index prunes by ``sum over query terms of q_w * (term's max impact in the block)``. In input
order a 64-document block is 64 unrelated documents: every frequent term occurs somewhere in it, with some
large weight, so every block's bound is high and few blocks can be skipped. Numbered so that documents on one
topic sit together, a block holds few distinct terms and a query's bound is high only on the blocks of its
own topics: the same search scores far fewer blocks (BMP, Mallia et al. SIGIR 2024, reports its speed on
BP-reordered indexes; Seismic gets the same effect by clustering each posting list).

The algorithm (Dhulipala et al., KDD 2016; the faster variant of Mackenzie, Petri and Moffat, SIGIR 2021):
split the documents into two halves, then repeatedly swap the pairs of documents whose move lowers the cost
``sum over terms of d1 log2(n1 / (d1 + 1)) + d2 log2(n2 / (d2 + 1))`` (``d1, d2``: the term's documents in
each half of sizes ``n1, n2``; what a log-gap coded posting list of that term costs), then recurse into each
half until a part is one block. Halves are cut at multiples of the block size so that leaves are blocks.

Terms in fewer than ``min_df`` documents cannot bring documents together and terms in more than
``max_df_fraction`` of the documents are in every block anyway; both are left out of the cost (the latter is
Mackenzie et al.'s cut-off, and most of the speed). No library does this in Python (PISA and Rust crates have
it as programs); it is written here in numba, parallel over the parts of each level.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp


@nb.njit(cache=True, inline="always")
def _move_gain(d_from, d_to, n_from, n_to, log2):
    """Cost decrease when one document holding the term moves from a half with ``d_from`` of the term's
    documents (of ``n_from``) to the other half. ``log2[x]`` is a table (most terms of a small part are new,
    so this runs about once per posting per iteration: four table loads instead of four logarithms)."""
    lf, lt = log2[n_from], log2[n_to]
    before = d_from * (lf - log2[d_from + 1]) + d_to * (lt - log2[d_to + 1])
    after = (d_from - 1) * (lf - log2[d_from]) + (d_to + 1) * (lt - log2[d_to + 2])
    return before - after


@nb.njit(cache=True)
def _bisect(order, lo, mid, hi, indptr, indices, deg, gain, seen, terms, stamp, iterations, log2):
    """Improve the split of ``order[lo:hi]`` at ``mid`` by swaps. Scratch of vocabulary size: ``deg[t]`` the
    term's documents in the left and right half, ``gain[t]`` the move gains of a document on each side,
    ``seen[t]`` the last part that listed the term in ``terms``; ``deg`` is zero on entry and on return (only
    this part's terms are touched)."""
    n_l, n_r = mid - lo, hi - mid
    stamp += 1
    n_terms = 0
    for i in range(lo, hi):
        side = 0 if i < mid else 1
        d = order[i]
        for p in range(indptr[d], indptr[d + 1]):
            t = indices[p]
            deg[t, side] += 1
            if seen[t] != stamp:
                seen[t] = stamp
                terms[n_terms] = t
                n_terms += 1
    doc_gain_l = np.empty(n_l, dtype=np.float32)
    doc_gain_r = np.empty(n_r, dtype=np.float32)
    for _ in range(iterations):
        # per-term gains once per iteration, for the terms of this part only
        for j in range(n_terms):
            t = terms[j]
            a, b = deg[t, 0], deg[t, 1]
            gain[t, 0] = _move_gain(a, b, n_l, n_r, log2) if a > 0 else 0.0
            gain[t, 1] = _move_gain(b, a, n_r, n_l, log2) if b > 0 else 0.0
        for i in range(lo, hi):
            d = order[i]
            side = 0 if i < mid else 1
            g = np.float32(0.0)
            for p in range(indptr[d], indptr[d + 1]):
                g += gain[indices[p], side]
            if side == 0:
                doc_gain_l[i - lo] = g
            else:
                doc_gain_r[i - mid] = g
        best_l = np.argsort(-doc_gain_l)
        best_r = np.argsort(-doc_gain_r)
        swaps = 0
        for j in range(min(n_l, n_r)):
            if doc_gain_l[best_l[j]] + doc_gain_r[best_r[j]] <= 0.0:
                break
            x, y = lo + best_l[j], mid + best_r[j]
            dx, dy = order[x], order[y]
            for p in range(indptr[dx], indptr[dx + 1]):
                deg[indices[p], 0] -= 1
                deg[indices[p], 1] += 1
            for p in range(indptr[dy], indptr[dy + 1]):
                deg[indices[p], 1] -= 1
                deg[indices[p], 0] += 1
            order[x], order[y] = dy, dx
            swaps += 1
        if swaps == 0:
            break
    for j in range(n_terms):
        deg[terms[j], 0] = 0
        deg[terms[j], 1] = 0
    return stamp


@nb.njit(cache=True, parallel=True)
def _level(order, starts, ends, block_size, indptr, indices, n_terms, n_workers, iterations, log2):
    """Bisect every part ``[starts[i], ends[i])`` of one level; parts are split over ``n_workers`` workers,
    each with its own scratch."""
    n_parts = starts.shape[0]
    for w in nb.prange(n_workers):
        deg = np.zeros((n_terms, 2), dtype=np.int32)
        gain = np.zeros((n_terms, 2), dtype=np.float32)
        seen = np.zeros(n_terms, dtype=np.int32)
        terms = np.empty(n_terms, dtype=np.int32)
        stamp = 0
        for i in range(w, n_parts, n_workers):
            lo, hi = starts[i], ends[i]
            blocks = (hi - lo + block_size - 1) // block_size
            mid = lo + ((blocks + 1) // 2) * block_size
            stamp = _bisect(
                order, lo, mid, hi, indptr, indices, deg, gain, seen, terms, stamp, iterations, log2
            )


def bisection_order(
    csr: sp.csr_matrix,
    *,
    block_size: int = 64,
    iterations: int = 10,
    min_df: int = 2,
    max_df_fraction: float = 0.1,
    num_threads: int | None = None,
) -> np.ndarray:
    """A permutation ``perm`` of the rows of ``csr``: row ``perm[i]`` becomes document ``i``.

    Deterministic for a given input (no randomness; the initial split is the input order). Time is about
    ``iterations * nnz * log2(rows / block_size)`` term visits (seconds for 10^5-10^6 documents).
    """
    if not 0 < max_df_fraction <= 1:
        raise ValueError(f"max_df_fraction must be in (0, 1], got {max_df_fraction}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    n_docs = csr.shape[0]
    order = np.arange(n_docs, dtype=np.int64)
    if n_docs <= block_size or iterations == 0:
        return order
    csr = sp.csr_matrix(csr)
    df = np.bincount(csr.indices, minlength=csr.shape[1])
    keep = (df >= min_df) & (df <= max_df_fraction * n_docs)
    # compact ids in decreasing document frequency: the terms most postings name share a few hot cache lines
    by_df = np.argsort(-np.where(keep, df, -1), kind="stable")  # kept terms first
    compact = np.empty(len(df), dtype=np.int64)
    compact[by_df] = np.arange(len(df))
    kept = keep[csr.indices]
    indices = compact[csr.indices[kept]].astype(np.int32)
    rows = np.repeat(np.arange(n_docs), np.diff(csr.indptr))
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[kept], minlength=n_docs), out=indptr[1:])
    n_terms = max(int(keep.sum()), 1)
    workers = max(1, int(num_threads or nb.config.NUMBA_NUM_THREADS))
    log2 = np.log2(np.maximum(np.arange(n_docs + 3, dtype=np.float64), 1.0))
    parts = [(0, n_docs)]
    while parts:
        starts = np.array([lo for lo, _ in parts], dtype=np.int64)
        ends = np.array([hi for _, hi in parts], dtype=np.int64)
        _level(
            order,
            starts,
            ends,
            block_size,
            indptr,
            indices,
            n_terms,
            min(workers, len(parts)),
            iterations,
            log2,
        )
        children = []
        for lo, hi in parts:
            blocks = -(-(hi - lo) // block_size)
            mid = lo + ((blocks + 1) // 2) * block_size
            children += [(a, b) for a, b in ((lo, mid), (mid, hi)) if b - a > block_size]
        parts = children
    return order
