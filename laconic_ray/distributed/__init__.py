"""Ray glue: the only package that imports ray. It moves data and calls the library; logic lives elsewhere."""

from laconic_ray.distributed.serving import SearchResult, ShardedSearcher

__all__ = ["SearchResult", "ShardedSearcher"]
