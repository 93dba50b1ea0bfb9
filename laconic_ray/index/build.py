"""Build the arrays of a block-max inverted index from a CSR matrix.

Layout (why it is fast): documents are numbered in doc-id order and cut into fixed blocks of ``block_size``
(64 by default). For every term, its postings are grouped by block; each (term, block) pair is one *entry*
holding the block id, the term's maximum impact inside the block, and where its postings start. Search
first sums ``q_w * block_max`` over the query's entries to get an upper bound per block (a few thousand
numbers), then scores only the blocks whose bound can still beat the current k-th score, best bound first
(block-max pruning, as in BMP, Mallia et al. SIGIR 2024). Within a block a posting needs just one byte for the
document (its offset in the block) and one or two for the impact: that is the doc-id compression.

Document numbering: ``reorder="bp"`` (the default) numbers documents by recursive graph bisection
(reorder.py) so that each block holds documents that share terms, which is what makes block bounds tight;
``"none"`` keeps doc-id order. Either way ties are broken by doc id: ``doc_rank`` maps an internal number to
the document's rank in doc-id order, the kernels compare ranks, and the doc-id table is kept in rank order.

Quantization: ``uint8``/``uint16`` impacts are ``round(w / scale)`` with ``scale = max weight / dtype max``
unless a scale is given (``scale=0.01`` keeps Lucene-style ``round(100 w)`` integers exactly); weights that
round to 0 are dropped, as Lucene drops them. ``float32`` keeps weights as they are (scale 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from laconic_ray.index.layout import ShardMeta
from laconic_ray.index.reorder import bisection_order

QUANTIZATIONS = {"uint8": np.uint8, "uint16": np.uint16, "float32": np.float32}
REORDERINGS = ("bp", "none")
MAX_BLOCK_SIZE = 256  # offsets are stored in one byte


def quantize_impacts(values: np.ndarray, quantization: str, scale: float | None) -> tuple[np.ndarray, float]:
    """``(impacts, scale)`` with ``score = scale * sum(q_w * impact)``."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, got {quantization!r}")
    dtype = QUANTIZATIONS[quantization]
    if quantization == "float32":
        if scale not in (None, 1.0):
            raise ValueError("float32 impacts take no scale")
        return values.astype(np.float32), 1.0
    top = float(np.iinfo(dtype).max)
    if scale is None:
        peak = float(values.max()) if len(values) else 1.0
        scale = peak / top if peak > 0 else 1.0
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    scaled = np.rint(values.astype(np.float64) / scale)
    if len(scaled) and scaled.max() > top:
        raise ValueError(
            f"weight {float(values.max())} / scale {scale} = {scaled.max():.0f} exceeds {quantization}'s {top:.0f}; "
            "give a larger scale or a wider quantization"
        )
    return scaled.astype(dtype), float(scale)


PACKED = {np.dtype(np.uint8): np.uint16, np.dtype(np.uint16): np.uint32}
DENSE_COVERAGE = 0.5  # a term with entries in at least this share of the blocks gets an entry in every block


def pad_dense_terms(
    term_ptr: np.ndarray,
    entry_block: np.ndarray,
    entry_max: np.ndarray,
    entry_post: np.ndarray,
    n_blocks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Give every term present in >= ``DENSE_COVERAGE`` of the blocks one entry per block (empty ones: max 0,
    no postings), so that the kernels find its entry for block ``b`` at ``term_ptr[t] + b`` and sum its bounds
    in one contiguous, vectorised pass, instead of scattering entry by entry and tabulating where each
    entry is. Those frequent terms are ~85% of a query's entries on SPLADE-like data; padding them costs
    a few percent more entries."""
    counts = np.diff(term_ptr)
    dense = (counts >= DENSE_COVERAGE * n_blocks) & (counts > 0)
    if not dense.any():
        return term_ptr, entry_block, entry_max, entry_post
    new_counts = np.where(dense, n_blocks, counts)
    new_ptr = np.zeros(len(term_ptr), dtype=np.int64)
    np.cumsum(new_counts, out=new_ptr[1:])
    total = int(new_ptr[-1])
    term_of = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(len(entry_block)) - term_ptr[term_of]
    pos = new_ptr[term_of] + np.where(dense[term_of], entry_block, within)
    new_block = np.empty(total, dtype=entry_block.dtype)
    new_block[pos] = entry_block
    dense_terms = np.flatnonzero(dense)
    padded = (new_ptr[dense_terms][:, None] + np.arange(n_blocks)).ravel()
    new_block[padded] = np.tile(np.arange(n_blocks, dtype=entry_block.dtype), len(dense_terms))
    new_max = np.zeros(total, dtype=entry_max.dtype)
    new_max[pos] = entry_max
    # an empty entry starts (and ends) where the next non-empty one starts: postings are contiguous per term
    # and terms are in order, so a reversed running minimum fills the gaps
    new_post = np.full(total + 1, np.iinfo(entry_post.dtype).max, dtype=entry_post.dtype)
    new_post[pos] = entry_post[:-1]
    new_post[-1] = entry_post[-1]
    new_post = np.minimum.accumulate(new_post[::-1])[::-1].copy()
    return new_ptr, new_block, new_max, new_post


def pack_postings(offsets: np.ndarray, impacts: np.ndarray) -> dict[str, np.ndarray]:
    """Integer impacts share a word with the in-block offset (``impact << 8 | offset``): one load per posting.
    Float impacts keep a separate offset array (``post_doc``); packed shards store it empty."""
    wide = PACKED.get(impacts.dtype)
    if wide is None:
        return {"post_doc": offsets, "post_imp": impacts}
    return {"post_doc": np.zeros(0, dtype=np.uint8), "post_imp": (impacts.astype(wide) << 8) | offsets}


def build_arrays(
    csr: sp.csr_matrix,
    doc_ids: Sequence[str],
    *,
    vocab_size: int | None = None,
    quantization: str = "uint8",
    scale: float | None = None,
    block_size: int = 64,
    reorder: str = "bp",
) -> tuple[dict[str, np.ndarray], ShardMeta]:
    """Arrays + description of a shard holding the rows of ``csr`` (weights > 0) named by ``doc_ids``."""
    from laconic_ray import sparse

    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in [1, {MAX_BLOCK_SIZE}], got {block_size}")
    if reorder not in REORDERINGS:
        raise ValueError(f"reorder must be one of {REORDERINGS}, got {reorder!r}")
    csr = sp.csr_matrix(csr)
    vocab_size = int(vocab_size or csr.shape[1])
    if csr.shape[1] > vocab_size:
        raise ValueError(f"matrix has {csr.shape[1]} columns, more than vocab_size {vocab_size}")
    sparse.validate_rows(list(doc_ids), csr.indptr, csr.indices, csr.data, vocab_size)
    n_docs = csr.shape[0]

    # rank order: by doc id ("ties broken by doc id" = "ties broken by rank")
    ids = np.asarray(doc_ids, dtype=object)
    order = np.argsort(ids.astype(str), kind="stable") if n_docs else np.zeros(0, dtype=np.int64)
    ordered = csr[order]
    impacts, scale = quantize_impacts(ordered.data, quantization, scale)
    ordered = sp.csr_matrix((impacts, ordered.indices, ordered.indptr), shape=(n_docs, vocab_size))
    ordered.eliminate_zeros()  # weights that rounded to 0
    doc_len = np.diff(ordered.indptr).astype(np.int32)
    # internal order: the bisection's (internal number i is the document of rank doc_rank[i])
    if reorder == "bp" and n_docs > block_size:
        doc_rank = bisection_order(ordered, block_size=block_size)
        ordered = ordered[doc_rank]
    else:
        doc_rank = np.zeros(0, dtype=np.int64)  # empty: internal number = rank

    csc = ordered.tocsc()  # term-major; rows (internal doc numbers) ascending within each term
    csc.sort_indices()
    n_postings = csc.nnz
    n_blocks = max(1, -(-n_docs // block_size))
    blocks = csc.indices // block_size  # int32, like the indices
    # An entry starts wherever the block changes or a new term's postings begin.
    change = np.empty(n_postings, dtype=bool)
    if n_postings:
        change[0] = True
        np.not_equal(blocks[1:], blocks[:-1], out=change[1:])
        term_starts = csc.indptr[1:-1]
        change[term_starts[term_starts < n_postings]] = True
    starts = np.flatnonzero(change)
    n_entries = len(starts)

    post_dtype = np.uint32 if n_postings < 2**32 else np.int64
    entry_post = np.empty(n_entries + 1, dtype=post_dtype)
    entry_post[:-1] = starts
    entry_post[-1] = n_postings
    imp = csc.data.astype(QUANTIZATIONS[quantization])
    term_ptr, entry_block, entry_max, entry_post = pad_dense_terms(
        # first entry of each term: entries start at postings, terms at indptr
        np.searchsorted(starts, csc.indptr).astype(np.int64),
        blocks[starts].astype(np.uint16 if n_blocks <= 2**16 else np.uint32),
        np.maximum.reduceat(imp, starts) if n_entries else np.zeros(0, imp.dtype),
        entry_post,
        n_blocks,
    )
    n_entries = len(entry_block)
    arrays = {
        "term_ptr": term_ptr,
        "entry_block": entry_block,
        "entry_max": entry_max,
        "entry_post": entry_post,
        **pack_postings((csc.indices % block_size).astype(np.uint8), imp),
        "doc_len": doc_len,
        "doc_rank": doc_rank.astype(np.uint32 if n_docs < 2**32 else np.int64),
    }
    encoded = [str(i).encode() for i in ids[order]]
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    arrays["id_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    arrays["id_offsets"] = offsets
    meta = ShardMeta(
        n_docs=n_docs,
        vocab_size=vocab_size,
        block_size=block_size,
        quantization=quantization,
        scale=scale,
        n_postings=int(n_postings),
        n_entries=int(n_entries),
        reorder=reorder if len(doc_rank) else "none",
    )
    return arrays, meta
