"""Inverted-index shards: block-max layout, numba search kernels, top-k merging (pure NumPy + numba, no Ray)."""

from laconic_ray.index.inverted import InvertedIndex, QueryError
from laconic_ray.index.layout import IndexFormatError
from laconic_ray.index.merge import merge_topk

__all__ = ["IndexFormatError", "InvertedIndex", "QueryError", "merge_topk"]
