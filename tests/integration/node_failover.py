"""Run by test_node_failover.py in its own process: a 3-node ray.cluster_utils.Cluster loses the node that
holds the index shards, and the shards come back on the surviving index node. Prints one JSON line."""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from laconic_ray import sparse
from laconic_ray.config import IndexConfig, load_config
from laconic_ray.distributed.index import run_index
from laconic_ray.distributed.serving import ShardedSearcher
from tests.vectors import bm25_queries, collection_vectors


def main(workdir: str) -> None:
    doc_ids, docs = collection_vectors("cacm")
    _, queries = bm25_queries("cacm", "test")
    sparse.write_sparse(f"{workdir}/vecs", doc_ids, docs, docs.shape[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, resources={"index_shard": 2}) for _ in range(2)]
    ray.init(address=cluster.address)
    try:
        run_index(
            load_config(
                IndexConfig,
                None,
                [f"input={workdir}/vecs", f"output={workdir}/index", "num_shards=2", "num_cpus_per_task=0.5"],
            )
        )
        searcher = ShardedSearcher(
            f"{workdir}/index",
            shard_resource="index_shard",
            num_cpus_per_shard=1,
            max_restarts=5,
            timeout_s=120,
        )
        batch = [
            {"indices": queries[i].indices.tolist(), "values": queries[i].data.tolist()}
            for i in range(queries.shape[0])
        ]
        before = [r.doc_ids for r in searcher.batch_search(batch, 10)]
        placed = {s["shard"]: s["nodes"][0] for s in searcher.stats()["shards"]}
        victim = next(w for w in workers if w.node_id == placed[0])
        cluster.remove_node(victim)
        after = searcher.batch_search(batch, 10)
        stats = searcher.stats()
        print(
            json.dumps(
                {
                    "same_results": [r.doc_ids for r in after] == before,
                    "partial": any(r.partial for r in after),
                    "shard0_before": placed[0],
                    "shard0_after": stats["shards"][0]["nodes"][0],
                    "victim": victim.node_id,
                    "restarts": [s["restarts"] for s in stats["shards"]],
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
