"""The fault soak at reduced size (tests/soak.py; benchmarks/soak.py runs it at 200k documents): a real
collection on 2 shards, both clients checking every answer while bad queries, stray connections, a killed
shard actor and a killed HTTP replica hit the service."""

from __future__ import annotations

import json
import socket

from laconic_ray import sparse
from laconic_ray.config import IndexConfig, ServeConfig, load_config
from laconic_ray.distributed.index import run_index
from laconic_ray.distributed.service import searcher_from
from laconic_ray.index import InvertedIndex
from tests.soak import FAULTS, run_soak
from tests.vectors import bm25_queries, collection_vectors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fault_soak_gives_no_wrong_or_lost_answers(ray_session, tmp_path, data_root):
    from ray import serve

    from laconic_ray.distributed.http import deploy

    doc_ids, docs = collection_vectors("scifact")
    _, queries = bm25_queries("scifact", "test")
    sparse.write_sparse(str(tmp_path / "vecs"), doc_ids, docs, docs.shape[1])
    run_index(
        load_config(
            IndexConfig,
            None,
            [
                f"input={tmp_path / 'vecs'}",
                f"output={tmp_path / 'index'}",
                "num_shards=2",
                "num_cpus_per_task=0.5",
            ],
        )
    )
    serve.shutdown()  # a fresh Serve on our port
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [
            f"index={tmp_path / 'index'}",
            "name=soak",
            "num_cpus_per_shard=0.25",
            "http_cpus=0.25",
            "http_replicas=2",  # one is killed; the proxy keeps routing to the other
            f"port={_free_port()}",
            "max_restarts=5",
            "timeout_s=30",
            # a request Serve's proxy holds (on the killed HTTP replica: 2 of ~30 soaks) gets its 408 and is
            # retried well within the gap between faults
            "request_timeout_s=3",
        ],
    )
    searcher = searcher_from(config, name=config.name)
    try:
        url = deploy(config, config.storage.options())
        rows = [
            {"indices": queries[i].indices.tolist(), "values": queries[i].data.tolist()}
            for i in range(queries.shape[0])
        ]
        report = run_soak(
            searcher, config.name, url, InvertedIndex.build(docs, doc_ids), rows, baseline_s=4, fault_gap_s=7
        )
    finally:
        serve.shutdown()
        searcher.shutdown()
    print(json.dumps(report))
    assert report["bad_queries"]["sent"] > 20
    assert report["bad_queries"]["refused_naming_the_field"] == report["bad_queries"]["sent"], report[
        "bad_queries"
    ]
    assert not report["bad_queries"]["server_failures_not_at_a_replica_kill"], report["bad_queries"]
    for name, stream in report["streams"].items():
        assert stream["answered"] > 100, (name, stream)
        assert stream["wrong"] == 0 and stream["lost"] == 0 and stream["partial"] == 0, (name, stream)
        # every fault's effect on latency has passed well within its 7 s gap (the goal is <= 5 s at full size)
        assert all(stream["recovery_s"][f] is not None for f in FAULTS), (name, stream["recovery_s"])
