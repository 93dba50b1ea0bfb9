"""Numba search kernels over the block-max layout of build.py.

One query:
1. **Block bounds**: ``ub[b] = sum over query terms of q_w * block_max[t, b]`` from the term's entries (only
   blocks where a query term occurs get a bound > 0). This touches one entry per (term, block), 64x fewer
   items than the postings.
2. **Best-bound-first scoring**: blocks are visited in decreasing bound (in rounds; where bounds are flat,
   the blocks left are scored term at a time instead, see ``search_one``). A block is scored exactly (each query
   term's postings inside it, found through step 1's records, accumulated into a 64-slot buffer) and its
   documents offered to a top-k heap, which holds their ranks in doc-id order (``doc_rank``; the identity
   when empty) so that ties go to the lower doc id whatever the internal numbering. As soon as
   ``alpha * ub[b]`` falls below the k-th score, no later block can contribute (exact when ``alpha == 1``)
   and the search stops.

Entry points called from Python release the GIL (``nogil``): a shard actor receives and decodes the next
request on another thread while one is searched.

Scores are accumulated in float64: ``q_w`` (float32, 24 significant bits) times an integer impact (<= 16 bits)
is exact, and sums of a few dozen such products stay exact in 53 bits, so the result does not depend on the
order of summation and equals an exhaustive float64 dot product bit for bit; bounds get a relative margin
(``BOUND_SLACK``) so that rounding can never make a bound undercut a score.
"""

from __future__ import annotations

import numba as nb
import numpy as np

BOUND_SLACK = 1e-12


def writable(array: np.ndarray) -> np.ndarray:
    """A query array numba sees as writable: Ray hands actor calls their numpy arguments read-only, and
    numba compiles a kernel again for read-only types (0.9 s on an idle core, seconds more on a busy one,
    holding the GIL): the first actor call after a shard restart on a fresh install stalled every thread of
    the new process ~5 s (the fault soak). Query arrays are small: a copy costs microseconds."""
    return array if array.flags.writeable else array.copy()


@nb.njit(cache=True, inline="always")
def _worse(s1, i1, s2, i2):
    """Is (s1, i1) ranked below (s2, i2)? Higher score first; equal scores: lower doc number first."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@nb.njit(cache=True)
def _sift_down(hs, hi, n, pos):
    while True:
        child = 2 * pos + 1
        if child >= n:
            return
        right = child + 1
        if right < n and _worse(hs[right], hi[right], hs[child], hi[child]):
            child = right
        if not _worse(hs[child], hi[child], hs[pos], hi[pos]):
            return
        hs[pos], hs[child] = hs[child], hs[pos]
        hi[pos], hi[child] = hi[child], hi[pos]
        pos = child


@nb.njit(cache=True)
def _offer(hs, hi, n, k, score, doc):
    """Offer a document to the min-heap of the current top-k (root = the k-th best); returns the new size."""
    if n < k:
        pos = n
        hs[pos] = score
        hi[pos] = doc
        while pos > 0:
            parent = (pos - 1) // 2
            if not _worse(hs[pos], hi[pos], hs[parent], hi[parent]):
                break
            hs[pos], hs[parent] = hs[parent], hs[pos]
            hi[pos], hi[parent] = hi[parent], hi[pos]
            pos = parent
        return n + 1
    if _worse(hs[0], hi[0], score, doc):
        hs[0] = score
        hi[0] = doc
        _sift_down(hs, hi, n, 0)
    return n


@nb.njit(cache=True)
def _drain(hs, hi, n, out_scores, out_docs):
    """Heap -> ``out_scores``/``out_docs`` best first; returns ``n``."""
    for pos in range(n - 1, -1, -1):
        out_scores[pos] = hs[0]
        out_docs[pos] = hi[0]
        hs[0] = hs[pos]
        hi[0] = hi[pos]
        _sift_down(hs, hi, pos, 0)
    return n


@nb.njit(cache=True)
def _find_entry(entry_block, lo, hi, block):
    """Index of ``block`` among entry_block[lo:hi] (ascending), or -1."""
    while lo < hi:
        mid = (lo + hi) >> 1
        value = entry_block[mid]
        if value < block:
            lo = mid + 1
        elif value > block:
            hi = mid
        else:
            return mid
    return -1


# sparse query terms whose (term, block) -> entry map is tabulated; any further ones use binary search
MAX_TABLE_TERMS = 64
ROUND_FACTOR = 0.85  # each round scores the blocks whose bound lies within this factor of the last round's
# bounds are flat when more than FLAT_SHARE of the candidate blocks have a bound within FLAT_LEVEL of the best
# one: then nearly all of them need scoring, and once the top k is full they are scored in one go (issue 24)
FLAT_LEVEL = 0.5
FLAT_SHARE = 0.2
GROUP = 64  # blocks scored together: gathers of independent loads let the CPU overlap cache misses


@nb.njit(cache=True, inline="always")
def _posting(post_doc, post_imp, p):
    """(offset in block, impact) of posting ``p``; integer impacts are packed with the offset in the low byte
    (one load instead of two), float impacts keep a separate offset array."""
    if post_doc.shape[0] == 0:
        v = post_imp[p]
        return int(v % 256), v // 256
    return int(post_doc[p]), post_imp[p]


@nb.njit(cache=True, inline="always")
def _impact(post_doc, post_imp, p):
    """The impact of posting ``p`` (see ``_posting``; ``//`` rather than ``>>`` types for float shards too)."""
    if post_doc.shape[0] == 0:
        return post_imp[p] // 256
    return post_imp[p]


@nb.njit(cache=True)
def search_one(
    q_terms,
    q_weights,
    k,
    alpha,
    term_ptr,
    entry_block,
    entry_max,
    entry_post,
    post_doc,
    post_imp,
    doc_rank,
    post_abs,
    n_docs,
    block_size,
    accumulate_docs,
    switch,
    ub,
    table,
    taat_acc,
    stamp,
    out_scores,
    out_docs,
):
    """Top-``k`` of one query into ``out_scores``/``out_docs`` (best first, as ranks in doc-id order); returns
    how many were found.

    Scratch owned by the caller: ``ub`` ([n_blocks] float64), ``table`` ([n_blocks, MAX_TABLE_TERMS]
    int64: per block, the entry of each of the query's first sparse terms, so that scoring a block reads a
    few adjacent cache lines), with ``stamp`` a number not used by the previous query on the same table (no
    clearing needed), and ``taat_acc`` ([n_blocks * block_size] float64, all zero between queries).
    Raw scores: multiply by the shard's scale outside. A shard of at most ``accumulate_docs`` documents is
    searched term at a time instead (``_search_accumulate``; exact whatever ``alpha``), which needs
    ``post_abs``, the internal document number of every posting (``flat_postings``; may be empty otherwise).

    (1) One pass over the query terms' entries sums the block bounds and records, per (query term, block),
    where the term's postings in that block are. Dense terms (one entry per block, build.pad_dense_terms)
    need no record: their entry for block ``b`` is ``term_ptr[t] + b``, and their bounds add in one
    contiguous pass. (2) Blocks are scored in rounds of decreasing bound (each round takes the blocks whose
    bound lies within ``ROUND_FACTOR`` of the previous round's floor), so the k-th score ``theta`` rises
    early; the search stops once no unscored block can reach ``theta / alpha``.
    A block left out has ``alpha * bound < theta <= final k-th score``: with ``alpha = 1`` it cannot hold a
    top-k document, so the result is exact.

    Flat bounds (more than ``FLAT_SHARE`` of the candidate blocks within ``FLAT_LEVEL`` of the best bound: a
    head-heavy vocabulary such as BERT's 30,522 ids, where frequent terms sit in most blocks) prune little
    whatever the k-th score: once the top k is full, every block that can still contribute is scored at once,
    term at a time (``_score_term_at_a_time``: one pass over the query terms' entries, ``term_entries`` of
    them) when that costs less than a lookup per block and query term (``switch * m * nq > term_entries``).
    Measured on issue 24's head-heavy regime: 1.49x the block-by-block rounds, 1.7x the naive kernel; on
    regimes with spiky bounds nothing changes (benchmarks/README.md). Both paths sum the same float64
    products, so the results are identical.
    """
    if n_docs <= accumulate_docs:
        return _search_accumulate(
            q_terms,
            q_weights,
            k,
            term_ptr,
            entry_post,
            post_doc,
            post_imp,
            doc_rank,
            post_abs,
            n_docs,
            out_scores,
            out_docs,
        )
    n_blocks = ub.shape[0]
    nq = q_terms.shape[0]
    ranked = doc_rank.shape[0] > 0
    ub[:] = 0.0
    tag = stamp << 32
    dense_base = np.full(nq, -1, dtype=np.int64)  # dense terms: their first entry
    slot = np.full(nq, -1, dtype=np.int64)  # sparse terms: their column of the table (-1: binary search)
    n_slots = 0
    term_entries = 0  # entries of the query's terms: what a term-at-a-time pass streams
    for i in range(nq):
        t = q_terms[i]
        w = q_weights[i]
        e0, e1 = term_ptr[t], term_ptr[t + 1]
        term_entries += e1 - e0
        if e1 - e0 == n_blocks:
            dense_base[i] = e0
            maxima = entry_max[e0:e1]
            for b in range(n_blocks):
                ub[b] += w * maxima[b]
        elif n_slots < table.shape[1]:
            slot[i] = n_slots
            for e in range(e0, e1):
                b = entry_block[e]
                ub[b] += w * entry_max[e]
                table[b, n_slots] = tag | e
            n_slots += 1
        else:
            for e in range(e0, e1):
                ub[entry_block[e]] += w * entry_max[e]

    n_cand = 0
    top = 0.0
    for b in range(n_blocks):
        if ub[b] > 0.0:
            n_cand += 1
            if ub[b] > top:
                top = ub[b]
    cand = np.empty(n_cand, dtype=np.int64)
    j = 0
    high = 0
    for b in range(n_blocks):
        if ub[b] > 0.0:
            cand[j] = b
            j += 1
            if ub[b] >= FLAT_LEVEL * top:
                high += 1
    # flat bounds (many blocks near the best): bounds will not prune much, whatever the k-th score
    flat = high > FLAT_SHARE * n_cand

    hs = np.empty(k, dtype=np.float64)
    hi = np.empty(k, dtype=np.int64)
    n = 0
    batch = np.empty(n_cand, dtype=np.int64)
    found = np.empty(GROUP * nq, dtype=np.int64)  # entry of each (block in group, query term) hit
    found_slot = np.empty(GROUP * nq, dtype=np.int64)
    found_term = np.empty(GROUP * nq, dtype=np.int64)
    lo = np.empty(GROUP * nq, dtype=np.int64)
    hi_p = np.empty(GROUP * nq, dtype=np.int64)
    acc = np.zeros(GROUP * block_size, dtype=np.float64)
    ceiling = np.inf
    floor = top * ROUND_FACTOR
    remaining = n_cand
    while remaining > 0:
        weak = False
        if n == k:
            # blocks below theta / alpha cannot contribute: make this the last round if that is higher
            needed = hs[0] / (alpha * (1.0 + BOUND_SLACK))
            if needed >= ceiling:
                break
            if needed > floor or flat:
                # with flat bounds nearly every block left can still contribute: score them all now, term at
                # a time if one pass over the query terms' entries costs less than visiting them one by one
                floor = needed
                weak = flat
        m = 0
        for j in range(n_cand):
            u = ub[cand[j]]
            if u >= floor and u < ceiling:
                batch[m] = cand[j]
                m += 1
        remaining -= m
        if weak and switch * m * nq > term_entries:
            n = _score_term_at_a_time(
                q_terms,
                q_weights,
                k,
                term_ptr,
                entry_block,
                entry_post,
                post_doc,
                post_imp,
                doc_rank,
                n_docs,
                block_size,
                ub,
                floor,
                ceiling,
                batch[:m],
                taat_acc,
                hs,
                hi,
                n,
            )
            m = 0
        for g0 in range(0, m, GROUP):
            g1 = min(m, g0 + GROUP)
            # gather the hits first, then their posting ranges, then the postings: independent loads
            nf = 0
            for j in range(g0, g1):
                b = batch[j]
                row = table[b]
                for i in range(nq):
                    if dense_base[i] >= 0:
                        e = dense_base[i] + b
                    elif slot[i] >= 0:
                        code = row[slot[i]]
                        e = code & 0xFFFFFFFF if (code >> 32) == stamp else -1
                    else:
                        t = q_terms[i]
                        e = _find_entry(entry_block, term_ptr[t], term_ptr[t + 1], b)
                    if e >= 0:
                        found[nf] = e
                        found_slot[nf] = (j - g0) * block_size
                        found_term[nf] = i
                        nf += 1
            for x in range(nf):
                lo[x] = entry_post[found[x]]
                hi_p[x] = entry_post[found[x] + 1]
            for x in range(nf):
                offset = found_slot[x]
                w = q_weights[found_term[x]]
                for p in range(lo[x], hi_p[x]):
                    off, imp = _posting(post_doc, post_imp, p)
                    acc[offset + off] += w * imp
            for j in range(g0, g1):
                base = batch[j] * block_size
                offset = (j - g0) * block_size
                for off in range(block_size):
                    s = acc[offset + off]
                    if s > 0.0:
                        acc[offset + off] = 0.0
                        doc = base + off
                        if doc >= n_docs:
                            continue
                        # the heap call only for documents that enter the top k (most do not)
                        if n < k or s >= hs[0]:
                            r = np.int64(doc_rank[doc]) if ranked else doc
                            if n < k or s > hs[0] or r < hi[0]:
                                n = _offer(hs, hi, n, k, s, r)
        ceiling = floor
        floor = floor * ROUND_FACTOR
    return _drain(hs, hi, n, out_scores, out_docs)


@nb.njit(cache=True)
def _score_term_at_a_time(
    q_terms,
    q_weights,
    k,
    term_ptr,
    entry_block,
    entry_post,
    post_doc,
    post_imp,
    doc_rank,
    n_docs,
    block_size,
    ub,
    floor,
    ceiling,
    blocks,
    acc,
    hs,
    hi,
    n,
):
    """Score ``blocks`` (those whose bound lies in ``[floor, ceiling)``) term at a time: each query term's
    entries are streamed once, and the postings of entries in those blocks accumulate into ``acc`` (one slot
    per internal document, all zero on entry and on return); then each block's documents are offered to the
    heap. Same sums as the block-at-a-time path (exact in float64, whatever the order), so the same results.
    Returns the heap's new size."""
    ranked = doc_rank.shape[0] > 0
    for i in range(q_terms.shape[0]):
        t = q_terms[i]
        w = q_weights[i]
        for e in range(term_ptr[t], term_ptr[t + 1]):
            b = entry_block[e]
            u = ub[b]
            if u >= floor and u < ceiling:
                base = np.int64(b) * block_size
                for p in range(entry_post[e], entry_post[e + 1]):
                    off, imp = _posting(post_doc, post_imp, p)
                    acc[base + off] += w * imp
    for j in range(blocks.shape[0]):
        base = blocks[j] * block_size
        for doc in range(base, min(base + block_size, n_docs)):
            s = acc[doc]
            if s > 0.0:
                acc[doc] = 0.0
                if n < k or s >= hs[0]:
                    r = np.int64(doc_rank[doc]) if ranked else doc
                    if n < k or s > hs[0] or r < hi[0]:
                        n = _offer(hs, hi, n, k, s, r)
    return n


@nb.njit(cache=True)
def _search_accumulate(
    q_terms,
    q_weights,
    k,
    term_ptr,
    entry_post,
    post_doc,
    post_imp,
    doc_rank,
    post_abs,
    n_docs,
    out_scores,
    out_docs,
):
    """Exact top-``k`` term at a time: every posting of every query term into one accumulator per document,
    then one pass over the accumulators. On a small shard the block bounds prune little, and streaming each
    term's postings beats visiting blocks and gathering their entries (SciFact's 5,183 BM25 vectors, ~21,500
    postings per query: 37 against 58 us, kernel alone). The postings are read through ``post_abs`` (absolute
    document numbers) rather than entry by entry: entries of small shards hold ~3 postings each, and the
    per-entry loop cost as much as the postings (Cranfield: 11.8 -> 6.7 us per query, accumulation alone)."""
    acc = np.zeros(n_docs, dtype=np.float64)
    for i in range(q_terms.shape[0]):
        t = q_terms[i]
        w = q_weights[i]
        # a term's postings are contiguous across its entries: one flat loop, no per-block bookkeeping
        for p in range(entry_post[term_ptr[t]], entry_post[term_ptr[t + 1]]):
            acc[post_abs[p]] += w * _impact(post_doc, post_imp, p)
    hs = np.empty(k, dtype=np.float64)
    hi = np.empty(k, dtype=np.int64)
    n = 0
    ranked = doc_rank.shape[0] > 0
    # kept inline: the same test in a helper taking the heap arrays cost ~16 ns per document (20x), as a call
    theta = 0.0  # the k-th score once the heap is full
    for doc in range(n_docs):
        s = acc[doc]
        if s >= theta and s > 0.0:
            r = np.int64(doc_rank[doc]) if ranked else doc
            if n < k or s > hs[0] or r < hi[0]:
                n = _offer(hs, hi, n, k, s, r)
                if n == k:
                    theta = hs[0]
    return _drain(hs, hi, n, out_scores, out_docs)


def flat_postings(entry_block, entry_post, post_doc, post_imp, block_size, n_docs):
    """The internal document number of every posting (``post_abs`` of the term-at-a-time kernel): uint16
    while the shard has at most 65,536 documents. Derived on first search, not stored: a shard small enough to
    be searched term at a time spends at most a few MB on it."""
    counts = np.diff(np.asarray(entry_post, dtype=np.int64))
    block = np.repeat(np.asarray(entry_block, dtype=np.int64), counts) * block_size
    offset = np.asarray(post_imp) & 0xFF if len(post_doc) == 0 else np.asarray(post_doc)
    return (block + offset).astype(np.uint16 if n_docs <= 1 << 16 else np.uint32)


# ------------------------------------------------------------------------------------------------------
# Candidate search (Seismic's idea, issue 24): where block bounds are flat (frequent ids in most blocks), no
# bound prunes, so an approximate search must choose documents, not blocks. Each term's ``head`` is its
# heaviest postings; the documents with the best partial scores over the query terms' heads are the
# candidates, scored exactly through a forward view (each document's terms and impacts). Both are derived
# from the inverted arrays on first use (``candidate_view``), not stored: the shard format is unchanged.


@nb.njit(cache=True, nogil=True)
def doc_postings(entry_block, entry_post, post_doc, post_imp, block_size, n_docs):
    """How many postings each internal document has (the forward view's row lengths)."""
    counts = np.zeros(n_docs, dtype=np.int64)
    for e in range(entry_block.shape[0]):
        base = np.int64(entry_block[e]) * block_size
        for p in range(entry_post[e], entry_post[e + 1]):
            off, _ = _posting(post_doc, post_imp, p)
            counts[base + off] += 1
    return counts


@nb.njit(cache=True, nogil=True)
def fill_candidate_view(
    term_ptr,
    entry_block,
    entry_post,
    post_doc,
    post_imp,
    block_size,
    fwd_ptr,
    fwd_term,
    fwd_imp,
    head_ptr,
    head_doc,
    head_imp,
):
    """Fill the forward view (``fwd_term``/``fwd_imp`` of document ``d`` at ``fwd_ptr[d]:fwd_ptr[d + 1]``,
    terms ascending) and each term's head (``head_doc``/``head_imp`` at ``head_ptr[t]:head_ptr[t + 1]``:
    its ``head_ptr[t + 1] - head_ptr[t]`` heaviest postings in document order; ties at the threshold go to
    the lower internal numbers). One pass over the postings, term by term."""
    fill = fwd_ptr[:-1].copy()
    longest = 0
    for t in range(term_ptr.shape[0] - 1):
        longest = max(longest, np.int64(entry_post[term_ptr[t + 1]]) - np.int64(entry_post[term_ptr[t]]))
    buf = np.empty(longest, dtype=np.float64)
    for t in range(term_ptr.shape[0] - 1):
        e0, e1 = term_ptr[t], term_ptr[t + 1]
        n = np.int64(entry_post[e1]) - np.int64(entry_post[e0])
        keep = head_ptr[t + 1] - head_ptr[t]
        j = 0
        for e in range(e0, e1):
            base = np.int64(entry_block[e]) * block_size
            for p in range(entry_post[e], entry_post[e + 1]):
                off, imp = _posting(post_doc, post_imp, p)
                d = base + off
                fwd_term[fill[d]] = t
                fwd_imp[fill[d]] = imp
                fill[d] += 1
                buf[j] = imp
                j += 1
        if keep == 0:
            continue
        # the keep-th largest impact; postings above it all go in, postings equal to it while room is left
        tau = np.partition(buf[:n], n - keep)[n - keep] if keep < n else -np.inf
        room = keep
        for j in range(n):
            if buf[j] > tau:
                room -= 1
        out = head_ptr[t]
        for e in range(e0, e1):
            base = np.int64(entry_block[e]) * block_size
            for p in range(entry_post[e], entry_post[e + 1]):
                off, imp = _posting(post_doc, post_imp, p)
                if imp > tau or (imp == tau and room > 0):
                    if not imp > tau:
                        room -= 1
                    head_doc[out] = base + off
                    head_imp[out] = imp
                    out += 1


@nb.njit(cache=True)
def _search_candidates(q_terms, q_weights, k, candidates, doc_rank, view, acc, qv, out_scores, out_docs):
    """Approximate top-``k``: (1) partial scores ``sum q_w * impact`` over the query terms' heads, into
    ``acc`` (one slot per internal document, zero on entry and on return); (2) the ``max(candidates, k)``
    documents with the best partial scores; (3) their exact scores through the forward view against the query as a
    dense vector ``qv`` (zero on entry and on return), the same float64 sums as the inverted path, in
    document order (forward rows read front to back). A document in no head of a query term is never found:
    that is the approximation, as in Seismic's static pruning."""
    fwd_ptr, fwd_term, fwd_imp, head_ptr, head_doc, head_imp = view
    nq = q_terms.shape[0]
    reach = 0
    for i in range(nq):
        t = q_terms[i]
        qv[t] = q_weights[i]
        reach += head_ptr[t + 1] - head_ptr[t]
    touched = np.empty(reach, dtype=np.int64)
    m = 0
    for i in range(nq):
        t = q_terms[i]
        w = q_weights[i]
        for p in range(head_ptr[t], head_ptr[t + 1]):
            d = head_doc[p]
            if acc[d] == 0.0:
                touched[m] = d
                m += 1
            acc[d] += w * head_imp[p]
    c = max(candidates, k)
    cs = np.empty(c, dtype=np.float64)
    ci = np.empty(c, dtype=np.int64)
    nc = 0
    for j in range(m):
        d = touched[j]
        s = acc[d]
        acc[d] = 0.0
        if nc < c or s > cs[0]:
            nc = _offer(cs, ci, nc, c, s, d)
    chosen = np.sort(ci[:nc])
    hs = np.empty(k, dtype=np.float64)
    hi = np.empty(k, dtype=np.int64)
    n = 0
    ranked = doc_rank.shape[0] > 0
    for j in range(nc):
        d = chosen[j]
        s = 0.0
        for p in range(fwd_ptr[d], fwd_ptr[d + 1]):
            s += qv[fwd_term[p]] * fwd_imp[p]
        if n < k or s >= hs[0]:
            r = np.int64(doc_rank[d]) if ranked else d
            if n < k or s > hs[0] or r < hi[0]:
                n = _offer(hs, hi, n, k, s, r)
    for i in range(nq):
        qv[q_terms[i]] = 0.0
    return _drain(hs, hi, n, out_scores, out_docs)


@nb.njit(cache=True, parallel=True, nogil=True)
def search_batch(
    q_ptr,
    q_terms,
    q_weights,
    k,
    alpha,
    term_ptr,
    entry_block,
    entry_max,
    entry_post,
    post_doc,
    post_imp,
    doc_rank,
    post_abs,
    n_docs,
    block_size,
    accumulate_docs,
    switch,
    n_chunks,
    ubs,
    tables,
    taat_accs,
    stamp0,
    out_scores,
    out_docs,
    out_counts,
):
    """Many queries (CSR ``q_ptr``/``q_terms``/``q_weights``) over ``n_chunks`` parallel chunks of queries.
    Chunk ``c`` uses scratch ``ubs[c]`` / ``tables[c]`` (owned by the caller and reused across calls: zeroing
    a fresh table per call cost ~0.5 ms on a 200k-document shard, more than a small batch's search), with
    stamps ``stamp0 + qi``, which the caller keeps unused on those tables before. Results go to row ``i`` of
    ``out_scores``/``out_docs`` ([n_queries, k])."""
    n_queries = q_ptr.shape[0] - 1
    per_chunk = (n_queries + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        ub = ubs[c]
        table = tables[c]
        taat_acc = taat_accs[c]
        for qi in range(c * per_chunk, min(n_queries, (c + 1) * per_chunk)):
            lo, hi = q_ptr[qi], q_ptr[qi + 1]
            out_counts[qi] = search_one(
                q_terms[lo:hi],
                q_weights[lo:hi],
                k,
                alpha,
                term_ptr,
                entry_block,
                entry_max,
                entry_post,
                post_doc,
                post_imp,
                doc_rank,
                post_abs,
                n_docs,
                block_size,
                accumulate_docs,
                switch,
                ub,
                table,
                taat_acc,
                stamp0 + qi,
                out_scores[qi],
                out_docs[qi],
            )


@nb.njit(cache=True)
def prepare_query(indices, values, vocab_size, query_mass):
    """Validate and normalise one query: merge duplicate ids (summing), drop zero weights, order by weight
    (largest first), keep the largest weights that make up ``query_mass`` of the total.

    Returns ``(terms, weights, error, bad)``: ``error`` 0 = fine, 1 = term id ``bad`` outside the vocabulary,
    2 = weight at position ``bad`` not finite or negative.
    """
    n = indices.shape[0]
    for j in range(n):
        if indices[j] < 0 or indices[j] >= vocab_size:
            return np.empty(0, np.int64), np.empty(0), 1, j
        v = values[j]
        if not (v >= 0.0) or v == np.inf:  # NaN fails the first test
            return np.empty(0, np.int64), np.empty(0), 2, j
    order = np.argsort(indices, kind="mergesort")
    terms = np.empty(n, np.int64)
    weights = np.empty(n, np.float64)
    m = 0
    for j in range(n):
        t = indices[order[j]]
        if m > 0 and terms[m - 1] == t:
            weights[m - 1] += values[order[j]]
        else:
            terms[m] = t
            weights[m] = values[order[j]]
            m += 1
    keep = 0
    for j in range(m):
        if weights[j] > 0.0:
            terms[keep] = terms[j]
            weights[keep] = weights[j]
            keep += 1
    by_weight = np.argsort(-weights[:keep], kind="mergesort")
    terms, weights = terms[:keep][by_weight], weights[:keep][by_weight]
    if query_mass < 1.0 and keep > 0:
        target = query_mass * weights.sum() * (1.0 - 1e-12)
        total = 0.0
        cut = keep
        for j in range(keep):
            total += weights[j]
            if total >= target:
                cut = j + 1
                break
        terms, weights = terms[:cut], weights[:cut]
    return terms, weights, 0, -1


@nb.njit(cache=True, nogil=True)
def prepare_batch(q_ptr, indices, values, vocab_size, query_mass):
    """``prepare_query`` for every row of a CSR batch in one call (a dispatch per query costs more than a
    small shard's search). Returns ``(ptr, terms, weights, error, bad_row, bad)``: the prepared rows as CSR,
    and on an error the first failing row and ``prepare_query``'s error and position within it."""
    n_rows = q_ptr.shape[0] - 1
    ptr = np.zeros(n_rows + 1, np.int64)
    terms = np.empty(indices.shape[0], np.int64)
    weights = np.empty(indices.shape[0], np.float64)
    for r in range(n_rows):
        lo, hi = q_ptr[r], q_ptr[r + 1]
        t, w, error, bad = prepare_query(indices[lo:hi], values[lo:hi], vocab_size, query_mass)
        if error != 0:
            return ptr, terms, weights, error, r, bad
        m = t.shape[0]
        terms[ptr[r] : ptr[r] + m] = t
        weights[ptr[r] : ptr[r] + m] = w
        ptr[r + 1] = ptr[r] + m
    return ptr, terms[: ptr[n_rows]], weights[: ptr[n_rows]], 0, -1, -1


F32_MAX = float(np.finfo(np.float32).max)


@nb.njit(cache=True, nogil=True)
def check_query(indices, values, vocab_size):
    """A client's query vector -> ``(ids, weights, error, bad)``: ids sorted and unique, float32 weights with a
    repeated id's weights summed (as float32, the way the index reads them). ``error``: 0 fine; 1 id at
    position ``bad`` outside ``[0, vocab_size)``; 2 weight at position ``bad`` negative, NaN or beyond
    float32's range; 3 the weights of repeated id ``bad`` sum beyond float32's range."""
    n = indices.shape[0]
    for j in range(n):
        if indices[j] < 0 or indices[j] >= vocab_size:
            return np.empty(0, np.int64), np.empty(0, np.float32), 1, j
        v = values[j]
        if not (v >= 0.0) or v > F32_MAX:  # NaN fails the first test
            return np.empty(0, np.int64), np.empty(0, np.float32), 2, j
    order = np.argsort(indices, kind="mergesort")
    ids = np.empty(n, np.int64)
    weights = np.empty(n, np.float32)
    m = 0
    for j in range(n):
        t = indices[order[j]]
        w = np.float32(values[order[j]])
        if m > 0 and ids[m - 1] == t:
            weights[m - 1] = np.float32(weights[m - 1] + w)
            if weights[m - 1] > F32_MAX:
                return np.empty(0, np.int64), np.empty(0, np.float32), 3, t
        else:
            ids[m] = t
            weights[m] = w
            m += 1
    return ids[:m], weights[:m], 0, -1


@nb.njit(cache=True, nogil=True)
def search_query(
    indices,
    values,
    vocab_size,
    query_mass,
    scale,
    k,
    alpha,
    term_ptr,
    entry_block,
    entry_max,
    entry_post,
    post_doc,
    post_imp,
    doc_rank,
    post_abs,
    n_docs,
    block_size,
    accumulate_docs,
    switch,
    ub,
    table,
    taat_acc,
    stamp,
    out_scores,
    out_docs,
):
    """``prepare_query`` then ``search_one``, as one call from Python: a single dispatch and no query arrays
    boxed and unboxed in between (~2 us per query, a tenth of a small shard's whole search). Scores come out
    multiplied by the shard's ``scale`` (the same float64 product the caller would compute).

    Returns ``(found, error, bad)``: ``error``/``bad`` as ``prepare_query``'s, ``found`` 0 on an error."""
    terms, weights, error, bad = prepare_query(indices, values, vocab_size, query_mass)
    if error != 0:
        return 0, error, bad
    found = search_one(
        terms,
        weights,
        k,
        alpha,
        term_ptr,
        entry_block,
        entry_max,
        entry_post,
        post_doc,
        post_imp,
        doc_rank,
        post_abs,
        n_docs,
        block_size,
        accumulate_docs,
        switch,
        ub,
        table,
        taat_acc,
        stamp,
        out_scores,
        out_docs,
    )
    for j in range(found):
        out_scores[j] *= scale
    return found, 0, -1


@nb.njit(cache=True, nogil=True)
def candidates_query(
    indices,
    values,
    vocab_size,
    query_mass,
    scale,
    k,
    candidates,
    doc_rank,
    fwd_ptr,
    fwd_term,
    fwd_imp,
    head_ptr,
    head_doc,
    head_imp,
    acc,
    qv,
    out_scores,
    out_docs,
):
    """``search_query`` for candidate search (``prepare_query`` then ``_search_candidates``, scores scaled). Its
    own entry point, so that the exact path's dispatch does not type the view's arrays on every call."""
    terms, weights, error, bad = prepare_query(indices, values, vocab_size, query_mass)
    if error != 0:
        return 0, error, bad
    view = (fwd_ptr, fwd_term, fwd_imp, head_ptr, head_doc, head_imp)
    found = _search_candidates(terms, weights, k, candidates, doc_rank, view, acc, qv, out_scores, out_docs)
    for j in range(found):
        out_scores[j] *= scale
    return found, 0, -1


@nb.njit(cache=True, parallel=True, nogil=True)
def candidates_batch(
    q_ptr,
    q_terms,
    q_weights,
    k,
    candidates,
    doc_rank,
    fwd_ptr,
    fwd_term,
    fwd_imp,
    head_ptr,
    head_doc,
    head_imp,
    n_chunks,
    accs,
    qvs,
    out_scores,
    out_docs,
    out_counts,
):
    """``search_batch`` for candidate search: chunk ``c`` of the queries uses scratch ``accs[c]``/``qvs[c]``."""
    view = (fwd_ptr, fwd_term, fwd_imp, head_ptr, head_doc, head_imp)
    n_queries = q_ptr.shape[0] - 1
    per_chunk = (n_queries + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        for qi in range(c * per_chunk, min(n_queries, (c + 1) * per_chunk)):
            lo, hi = q_ptr[qi], q_ptr[qi + 1]
            out_counts[qi] = _search_candidates(
                q_terms[lo:hi],
                q_weights[lo:hi],
                k,
                candidates,
                doc_rank,
                view,
                accs[c],
                qvs[c],
                out_scores[qi],
                out_docs[qi],
            )
