"""Partitioned index build and scatter-gather serving: exact equality with one index, shard crashes under load,
S3 shards, HTTP validation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import ray

from laconic_ray import sparse, storage
from laconic_ray.config import IndexConfig, ServeConfig, load_config
from laconic_ray.distributed import serving
from laconic_ray.distributed.index import run_index
from laconic_ray.distributed.service import searcher_from
from laconic_ray.distributed.serving import ShardedSearcher, ShardStartupError, _wait_name_free
from laconic_ray.index import InvertedIndex, QueryError
from tests.vectors import bm25_queries, collection_vectors


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, data_root):
    doc_ids, docs = collection_vectors("scifact")
    uri = str(tmp_path_factory.mktemp("vecs") / "scifact")
    sparse.write_sparse(uri, doc_ids, docs, docs.shape[1], rows_per_file=1500, metadata={"model": "bm25"})
    _, queries = bm25_queries("scifact", "test")
    return uri, doc_ids, docs, queries


def build(input_uri, output, *overrides, options=None):
    return run_index(
        load_config(
            IndexConfig,
            "conf/index.yaml",
            [f"input={input_uri}", f"output={output}", "num_cpus_per_task=0.5", *overrides],
        )
    )


def searcher(index, **kwargs):
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [f"index={index}", "num_cpus_per_shard=0.5", *[f"{k}={v}" for k, v in kwargs.items()]],
    )
    return searcher_from(config)


def as_queries(csr):
    return [{"indices": csr[i].indices.tolist(), "values": csr[i].data.tolist()} for i in range(csr.shape[0])]


@pytest.mark.parametrize("partition", ["range", "hash"])
def test_four_shards_equal_one_index_exactly(ray_session, vectors, tmp_path, partition):
    uri, doc_ids, docs, queries = vectors
    summary = build(uri, str(tmp_path / "index"), "num_shards=4", f"partition={partition}")
    assert summary["shards"] == 4 and summary["docs"] == len(doc_ids)
    # a rerun with a complete manifest does nothing
    assert build(uri, str(tmp_path / "index"), "num_shards=4")["skipped"] == "already complete"
    whole = InvertedIndex.build(docs, doc_ids)
    client = searcher(str(tmp_path / "index"), timeout_s=120)  # a busy CI machine must not time a shard out
    try:
        results = client.batch_search(as_queries(queries), k=100)
        for qi, result in enumerate(results):
            ids, scores = whole.search(queries[qi].indices, queries[qi].data, 100)
            assert not result.partial
            assert result.doc_ids == ids
            np.testing.assert_array_equal(result.scores, scores)
        one = client.search(as_queries(queries)[3], k=10)
        assert one.doc_ids == whole.search(queries[3].indices, queries[3].data, 10)[0]
        stats = client.stats()
        assert (
            sum(s["docs"] for s in stats["shards"]) == len(doc_ids) and stats["queries"] == len(results) + 1
        )
        assert stats["direct_channels"] == 8  # the scatter ran over direct connections (2 lanes a shard) ...
        assert all(s["calls"] == 2 and s["failures"] == 0 for s in stats["shards"])  # ... every time
        assert all(s["candidate_view_bytes"] == 0 for s in stats["shards"])  # exact search derives nothing
        assert ray.get(client.actors[0][0].stats.remote())["channel_requests"] == 2
    finally:
        client.shutdown()


def test_a_killed_shard_loses_no_query(ray_session, vectors, tmp_path, monkeypatch):
    # channels reopen as soon as the restarted actor answers, not one retry window later per lane (the soak
    # measured ~1 s of slower actor calls after each restart); on the old code this waits a minute
    monkeypatch.setattr(serving, "CHANNEL_RETRY_S", 60.0)
    uri, _doc_ids, _docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    client = searcher(str(tmp_path / "index"), max_restarts=3, timeout_s=30)
    stream = [as_queries(queries)[i % queries.shape[0]] for i in range(1000)]
    try:
        reference = [r.doc_ids for r in client.batch_search(stream[:300], k=10)]
        victim = ray.get(client.actors[1][0].stats.remote())["pid"]
        results, errors = [], []
        killed = threading.Event()

        def run():
            for i, query in enumerate(stream):
                if i == 200:
                    os.kill(victim, signal.SIGKILL)  # the shard's process dies mid-stream
                    killed.set()
                try:
                    results.append(client.search(query, k=10))
                except Exception as e:  # every failure counts
                    errors.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(timeout=600)
        assert killed.is_set() and not worker.is_alive()
        assert errors == [] and len(results) == 1000
        assert not any(r.partial for r in results)
        assert [r.doc_ids for r in results] == [reference[i % 300] for i in range(1000)]
        stats = client.stats()
        assert stats["shards"][1]["restarts"] >= 1  # it came back
        # the channels died with the actor (those queries went by actor call) and every lane, used since or
        # not, has one to the new process once it is back
        assert stats["shards"][1]["failures"] >= 1
        address = tuple(ray.get(client.actors[1][0].open_channel.remote(serving._node_ip()), timeout=30))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            c is None or c.closed or c.address != address for c in client._channels[1]
        ):
            assert client.search(stream[0], k=10).doc_ids == reference[0]
        assert [c.address for c in client._channels[1]] == [address] * 2
        assert client.stats()["direct_channels"] == 4  # 2 shards x 2 lanes
    finally:
        client.shutdown()


def test_a_shard_dead_for_good_gives_marked_partial_answers_quickly_and_warns_once(
    ray_session, vectors, tmp_path, caplog
):
    # The other shards' hits, exactly, marked partial with the missing shard named; no query waits for a
    # timeout (the actor is known dead); and one warning, not one per query (each carried Ray's 20-line error)
    uri, _doc_ids, _docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    client = searcher(str(tmp_path / "index"), timeout_s=30)
    try:
        alive = InvertedIndex.load(storage.join(client.index, client.manifest.files[0].path))
        ray.kill(client.actors[1][0], no_restart=True)
        stream = as_queries(queries)[:40]
        with caplog.at_level("WARNING", logger="laconic_ray.distributed.serving"):
            started = time.perf_counter()
            results = [client.search(q, k=10) for q in stream]
            took = time.perf_counter() - started
        for i, result in enumerate(results):
            assert result.partial and result.missing_shards == [1]
            assert result.doc_ids == alive.search(queries[i].indices, queries[i].data, 10)[0]
        assert took < 20, f"{took:.1f} s for 40 queries"
        no_answer = [r for r in caplog.records if "gave no answer" in r.getMessage()]
        assert len(no_answer) == 1, [r.getMessage() for r in no_answer]
        assert "\n" not in no_answer[0].getMessage() and "answers are partial" in no_answer[0].getMessage()
    finally:
        client.shutdown()


def test_channel_failures_fall_back_to_actor_calls(ray_session, vectors, tmp_path):
    uri, doc_ids, docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    whole = InvertedIndex.build(docs, doc_ids)
    client = searcher(str(tmp_path / "index"), timeout_s=30)
    try:
        stream = as_queries(queries)[:20]
        expected = [whole.search(queries[i].indices, queries[i].data, 10)[0] for i in range(20)]
        client._channels[0][0].close()  # e.g. the connection reset under it (lane 0: the first batch's)
        calls = ray.get(client.actors[0][0].stats.remote())["channel_requests"]
        # shard 0 answers by actor call (and is asked for its address again in the background) ...
        assert [r.doc_ids for r in client.batch_search(stream[:10], k=10)] == expected[:10]
        assert ray.get(client.actors[0][0].stats.remote())["channel_requests"] == calls
        deadline = time.monotonic() + 60
        while client.stats()["direct_channels"] < 4 and time.monotonic() < deadline:
            assert client.search(stream[0], k=10).doc_ids == expected[0]
        # ... until a later query finds the address there and reconnects
        assert [client.search(q, k=10).doc_ids for q in stream[10:]] == expected[10:]
        assert client.stats()["direct_channels"] == 4
        assert ray.get(client.actors[0][0].stats.remote())["channel_requests"] >= calls + 10
        direct = searcher(str(tmp_path / "index"), timeout_s=30, direct=False)  # actor calls only
        try:
            assert [r.doc_ids for r in direct.batch_search(stream, k=10)] == expected
            assert direct.stats()["direct_channels"] == 0
        finally:
            direct.shutdown()
    finally:
        client.shutdown()


def test_shards_on_s3(ray_session, vectors, tmp_path, s3_bucket):
    base, options = s3_bucket
    uri, doc_ids, docs, queries = vectors
    out = storage.join(base, "index")
    build(uri, out, "num_shards=3", "partition=hash", f"storage.endpoint_url={options.endpoint_url}")
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [f"index={out}", "num_cpus_per_shard=0.5", f"storage.endpoint_url={options.endpoint_url}"],
    )
    client = searcher_from(config)
    try:
        whole = InvertedIndex.build(docs, doc_ids)
        got = client.batch_search(as_queries(queries[:20]), k=10)
        for qi in range(20):
            assert got[qi].doc_ids == whole.search(queries[qi].indices, queries[qi].data, 10)[0]
    finally:
        client.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body or b"{}")
        except ValueError:  # e.g. the 413's plain text
            return e.code, {"text": body.decode()}


def test_http_service_answers_and_validates(ray_session, vectors, tmp_path):
    from ray import serve

    from laconic_ray.distributed.http import deploy, replica_urls

    uri, doc_ids, _docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    port = _free_port()
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [
            f"index={tmp_path / 'index'}",
            "num_cpus_per_shard=0.5",
            "http_cpus=0.5",
            f"port={port}",
            "name=httptest",
            "max_k=50",
            "max_batch=4",
            "max_query_chars=100",
            "max_query_terms=64",
            "max_body_bytes=16384",
            "request_timeout_s=2",
        ],
    )
    shards = ShardedSearcher(config.index, name=config.name, num_cpus_per_shard=0.5)
    try:
        base = deploy(config, config.storage.options())
        assert base == f"http://127.0.0.1:{port}"
        vector = as_queries(queries)[0]
        expected = shards.search(vector, 10).doc_ids
        status, body = post(f"{base}/search", {"vector": vector, "k": 10})
        assert status == 200 and not body["partial"]
        assert [h["doc_id"] for h in body["hits"]] == expected
        # direct ingress: the replica answers the same on its own port, bound to the configured host
        (direct,) = replica_urls(config.name, config.host)
        assert direct.startswith("http://127.0.0.1:") and direct != base
        status, body = post(f"{direct}/search", {"vector": vector, "k": 10})
        assert status == 200 and [h["doc_id"] for h in body["hits"]] == expected
        status, body = post(
            f"{base}/batch_search", {"queries": [{"vector": v} for v in as_queries(queries)[:3]], "k": 5}
        )
        assert status == 200 and len(body["results"]) == 3
        with urllib.request.urlopen(f"{base}/health") as r:
            assert json.loads(r.read())["ok"]
        with urllib.request.urlopen(f"{base}/stats") as r:
            stats = json.loads(r.read())
        assert stats["docs"] == len(doc_ids)
        assert stats["http_replica"]["gc_threshold"][0] == 20000  # as configured (Python's own: 700)
        with urllib.request.urlopen(f"{base}/openapi.json") as r:
            assert "/batch_search" in json.loads(r.read())["paths"]
        bad = [
            ({"vector": vector, "k": 0}, "k"),
            ({"vector": vector, "k": 51}, "limit of 50"),
            ({"vector": {"indices": [1, 30522], "values": [1.0, 1.0]}}, "vector.indices: 30522 is outside"),
            ({"vector": {"indices": [1, 2], "values": [1.0]}}, "2 indices but 1 values"),
            ({"vector": {"indices": [1], "values": [-1.0]}}, '"values", 0]'),  # pydantic names the item
            (
                {"vector": {"indices": [5, 5], "values": [3e38, 3e38]}},
                "vector.values: the weights of repeated term id 5 sum",
            ),
            ({"vector": {"indices": [], "values": []}}, "vector.indices: no terms"),
            ({"vector": {"indices": list(range(65)), "values": [1.0] * 65}}, "65 terms, the limit is 64"),
            ({"query": "x", "vector": vector}, "exactly one"),
            ({}, "exactly one"),
            ({"query": "text without a model"}, "no model"),
            ({"vector": {"indices": "nope", "values": []}}, "indices"),
        ]
        for body, message in bad:
            status, answer = post(f"{base}/search", body)
            assert 400 <= status < 500, (body, status, answer)
            assert message in json.dumps(answer), (body, answer)
        status, answer = post(f"{base}/batch_search", {"queries": [{"vector": vector}] * 5})
        assert status == 422 and "batch limit" in json.dumps(answer)
        status, answer = post(
            f"{base}/batch_search",
            {"queries": [{"vector": vector}, {"vector": {"indices": [5], "values": [1e39]}}]},
        )
        assert status == 422 and "queries[1].vector.values: weights must be finite" in answer["detail"]
        status, _ = post(f"{base}/search", None, raw=b"{not json")
        assert status == 422
        status, answer = post(
            f"{base}/search", None, raw=b'{"vector": {"indices": [1' + b", 1" * 6000 + b"]}}"
        )
        assert status == 413  # refused before parsing
        # the same vector works afterwards: nothing a bad request did lingers
        status, body = post(f"{base}/search", {"vector": vector, "k": 10})
        assert status == 200 and [h["doc_id"] for h in body["hits"]] == expected
        # a request held on the HTTP replica (stopped here, as one dying mid-request can be held) is answered
        # 408, which a client retries, at request_timeout_s: not held until the client gives up
        replica_pid = stats["http_replica"]["pid"]
        os.kill(replica_pid, signal.SIGSTOP)
        try:
            sent = time.perf_counter()
            status, answer = post(f"{base}/search", {"vector": vector, "k": 10})
            held = time.perf_counter() - sent
        finally:
            os.kill(replica_pid, signal.SIGCONT)
        assert status == 408 and 1.9 < held < 10, (status, answer, held)
        status, body = post(f"{base}/search", {"vector": vector, "k": 10})
        assert status == 200 and [h["doc_id"] for h in body["hits"]] == expected
        # Serve keeps its first HTTP address: deploying for another port must say so, not answer elsewhere
        with pytest.raises(ValueError, match=f"already runs on this cluster with HTTP on 127.0.0.1:{port}"):
            deploy(dataclasses.replace(config, port=_free_port(), name="other"), config.storage.options())
    finally:
        serve.shutdown()
        shards.shutdown()


def test_laconic_serve_and_search_commands(ray_session, vectors, tmp_path, data_root):
    """`laconic serve` and `laconic search`, with retriever=hybrid (BM25 actor beside the shards): a one-shot
    search and the running service give the same fused ranking."""
    from laconic_ray.distributed.service import run_search, run_serve
    from tests.models import tiny_encoder

    uri, doc_ids, _docs, _queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    tiny_encoder().save_pretrained(str(tmp_path / "model"))  # BERT vocabulary, like the index
    port = _free_port()
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [
            f"index={tmp_path / 'index'}",
            f"model={tmp_path / 'model'}",
            "num_cpus_per_shard=0.5",
            "http_cpus=0.5",
            f"port={port}",
            "name=cmd",
            "query=sodium channels in heart muscle",
            "k=5",
            "retriever=hybrid",
            f"bm25={data_root / 'scifact'}",
            "bm25_cpus=0.5",
        ],
    )
    # `laconic search` with no service at host:port starts shard actors of its own for the query
    alone = run_search(dataclasses.replace(config, port=_free_port()))
    assert alone["via"] == "shard actors" and len(alone["hits"]) == 5
    stop, ready, summary = threading.Event(), threading.Event(), {}

    def serve_until_stopped() -> None:
        try:
            summary.update(run_serve(config, stop, ready))
        finally:
            ready.set()  # a service that failed to start wakes the test too

    server = threading.Thread(target=serve_until_stopped)
    server.start()
    try:
        assert ready.wait(180) and server.is_alive(), "laconic serve did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert json.loads(r.read())["ok"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
            assert json.loads(r.read())["bm25"]["docs"] == 5183
        via_http = run_search(config)  # ... and asks the running service when there is one
        assert via_http["via"] == "http"
        # the same ranking; scores to float32 rounding (the query is encoded in another process)
        assert [h["doc_id"] for h in via_http["hits"]] == [h["doc_id"] for h in alone["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in via_http["hits"]], [h["score"] for h in alone["hits"]], rtol=1e-5
        )
    finally:
        stop.set()
        server.join(timeout=120)
    assert summary["url"] == f"http://127.0.0.1:{port}" and summary["docs"] == len(doc_ids)
    assert len(summary["replica_urls"]) == 1  # direct ingress (on in the test cluster)


def test_a_query_a_shard_rejects_never_desynchronises_the_others(ray_session, vectors, tmp_path):
    """Issue 21's critical bug: one query that every shard refuses left the other shards' answers unread on
    their channels, and every later query got the previous query's answer."""
    uri, doc_ids, docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=3")
    whole = InvertedIndex.build(docs, doc_ids)
    stream = as_queries(queries)[:30]
    expected = [whole.search(queries[i].indices, queries[i].data, 10)[0] for i in range(30)]
    for direct in (True, False):
        client = searcher(str(tmp_path / "index"), timeout_s=60, direct=direct)
        try:
            # the reported trigger: finite weights whose sum is not; refused on the client, naming the field
            with pytest.raises(QueryError, match="query 0: values: the weights of repeated term id 5 sum"):
                client.search({"indices": [5, 5], "values": [3e38, 3e38]}, k=10)
            # a query that does reach the shards and is refused there (client checks bypassed): the same
            # error on the channel path and the actor-call path, never retried into a partial answer
            bad = (np.array([0, 1]), np.array([5]), np.array([np.inf], np.float32))  # CSR arrays
            for _ in range(3):
                with pytest.raises(QueryError, match="not finite"):
                    client._search(*bad, 10, "exact")
                for i in (0, 1, 2):  # ... and every later query gets its own answer
                    result = client.search(stream[i], k=10)
                    assert result.doc_ids == expected[i] and not result.partial
            assert [r.doc_ids for r in client.batch_search(stream, k=10)] == expected
            stats = client.stats()
            assert all(s["retries"] == 0 for s in stats["shards"])
            if direct:
                assert stats["direct_channels"] == 6  # the refusals closed no channel (3 shards x 2 lanes)
        finally:
            client.shutdown()


def test_concurrent_clients_are_batched_and_each_gets_its_answer(ray_session, vectors, tmp_path):
    uri, doc_ids, docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    whole = InvertedIndex.build(docs, doc_ids)
    stream = as_queries(queries)
    expected = [whole.search(queries[i].indices, queries[i].data, 5)[0] for i in range(len(stream))]
    # two batches in flight to each single-replica shard, searched side by side on two threads
    client = searcher(str(tmp_path / "index"), timeout_s=60, threads_per_shard=2)
    assert client.stats()["direct_channels"] == 4  # 2 shards x 2 lanes
    wrong, errors = [], []

    def run(offset: int) -> None:
        for j in range(60):
            i = (offset * 7 + j) % len(stream)
            try:
                if client.search(stream[i], k=5).doc_ids != expected[i]:
                    wrong.append(i)
            except Exception as e:
                errors.append(e)

    try:
        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == [] and wrong == []
        stats = client.stats()
        assert stats["queries"] == 480 and stats["batches"] < 480  # several callers shared shard calls
        assert max(s["overlap_peak"] for s in stats["shards"]) == 2  # a shard searched two batches at once
    finally:
        client.shutdown()


def test_named_actors_holding_another_index_are_replaced_not_reused(ray_session, vectors, tmp_path):
    uri, doc_ids, docs, queries = vectors
    build(uri, str(tmp_path / "a"), "num_shards=2")
    sparse.write_sparse(str(tmp_path / "half"), doc_ids[:1000], docs[:1000], docs.shape[1])
    build(str(tmp_path / "half"), str(tmp_path / "b"), "num_shards=2")
    first = ShardedSearcher(str(tmp_path / "a"), name="reuse", num_cpus_per_shard=0.5)
    second = None
    try:
        # another process attaching to `name=reuse` for index b: refused, naming what the actors hold
        with pytest.raises(ShardStartupError, match="serves another index"):
            ShardedSearcher.attach(str(tmp_path / "b"), "reuse")
        # starting `name=reuse` for index b (e.g. `laconic serve` again after a rebuild): replaced
        second = ShardedSearcher(str(tmp_path / "b"), name="reuse", num_cpus_per_shard=0.5)
        assert second.stats()["docs"] == 1000
        half = InvertedIndex.build(docs[:1000], doc_ids[:1000])
        assert (
            second.search(as_queries(queries)[0], k=10).doc_ids
            == half.search(queries[0].indices, queries[0].data, 10)[0]
        )
    finally:
        first.close_channels()
        (second or first).shutdown()


def test_shard_actors_that_cannot_start_fail_fast_with_the_knobs_named(ray_session, vectors, tmp_path):
    uri, doc_ids, docs, queries = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    started = time.monotonic()
    with pytest.raises(ShardStartupError, match="no node offers 1 no_such_resource"):
        searcher(str(tmp_path / "index"), shard_resource="no_such_resource")
    assert time.monotonic() - started < 30  # at once, not after a deadline
    free = ray.available_resources().get("CPU", 0)
    # more CPUs than this (local) machine has free: sized down to fit, instead of waiting forever
    fitted = searcher(str(tmp_path / "index"), num_cpus_per_shard=free)
    try:
        assert (
            fitted.search(as_queries(queries)[0], 10).doc_ids
            == InvertedIndex.build(docs, doc_ids).search(queries[0].indices, queries[0].data, 10)[0]
        )
    finally:
        fitted.shutdown()
    _wait_for_cpus(free)  # ray.kill returns before the killed actors' CPUs are back
    # actors still loading at the deadline: the error says what they wait for, and they are not left behind
    with pytest.raises(
        ShardStartupError, match=r"shard actor\(s\) not running after 0 s .*num_cpus_per_shard"
    ):
        searcher(str(tmp_path / "index"), startup_timeout_s=0.2)
    _wait_for_cpus(free)  # the actors that did start were killed: their CPUs come back


@pytest.mark.timeout(180)  # the old code waited forever for a node with 64 CPUs
def test_index_tasks_asking_more_cpus_than_any_node_has_run_locally_and_are_refused_remotely(
    ray_session, vectors, tmp_path, monkeypatch
):
    from laconic_ray.distributed import resources

    uri, doc_ids, _, _ = vectors
    index = str(tmp_path / "index")
    # a local cluster (this machine's 4 CPUs here): each task runs on the largest node's CPUs instead
    assert build(uri, index, "num_shards=2", "num_cpus_per_task=64")["docs"] == len(doc_ids)
    # a remote cluster: refused at once, naming the knob, and the complete index already there is kept
    monkeypatch.setattr(resources, "local_cluster", lambda: False)
    started = time.monotonic()
    with pytest.raises(resources.ResourceError, match="num_cpus_per_task=64 but the largest node has 4 CPUs"):
        build(uri, index, "num_shards=2", "num_cpus_per_task=64", "force=true")
    assert time.monotonic() - started < 30
    assert storage.exists(os.path.join(index, storage.MANIFEST_NAME))
    assert build(uri, index, "num_shards=2")["skipped"] == "already complete"


def _wait_for_cpus(free: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= free


def test_laconic_serve_leaves_nothing_behind_when_it_cannot_deploy(ray_session, vectors, tmp_path):
    from ray import serve

    from laconic_ray.distributed.http import deploy
    from laconic_ray.distributed.service import run_search, run_serve

    uri, *_ = vectors
    build(uri, str(tmp_path / "index"), "num_shards=2")
    build(uri, str(tmp_path / "other"), "num_shards=1")
    serve.shutdown()  # Serve keeps the HTTP address it first started with: start it afresh on ours
    port = _free_port()
    running = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [
            f"index={tmp_path / 'index'}",
            "num_cpus_per_shard=0.5",
            "http_cpus=0.5",
            f"port={port}",
            "name=held",
        ],
    )
    shards = searcher_from(running, name="held")
    try:
        deploy(running, running.storage.options())
        # `laconic search` for another index on the port of a running service: refused, not answered by it
        other = dataclasses.replace(running, index=str(tmp_path / "other"), query="heart", name="x")
        with pytest.raises(ValueError, match=f"serves {tmp_path / 'index'}, not {tmp_path / 'other'}"):
            run_search(other)
        # `laconic serve` on another port while Serve runs on this one: fails, and kills its shard actors
        with pytest.raises(ValueError, match="already runs on this cluster"):
            run_serve(dataclasses.replace(running, port=_free_port(), name="orphan"))
        with pytest.raises(ValueError):
            ray.get_actor("orphan-shard-00000-r0", namespace="laconic")
    finally:
        serve.shutdown()
        shards.shutdown()


def test_hybrid_fuses_bm25_per_text_query_and_answers_without_it(ray_session, vectors, tmp_path, data_root):
    """retriever=hybrid: a text query's learned ranking and BM25's (pyserini, in its own actor), both 100
    deep, fused as `laconic eval retriever=hybrid` fuses them; vectors stay learned-only; with the BM25 actor
    gone, answers keep coming within the deadline, learned-only, marked partial with "bm25" missing, and
    /health says so. A setup that cannot start names what is wrong and leaves no actor behind."""
    from laconic_ray.config import ConfigError
    from laconic_ray.data.beir import BeirDataset
    from laconic_ray.data.lucene import BM25, build_bm25_index
    from laconic_ray.eval.fusion import fuse
    from tests.models import tiny_encoder

    uri, _doc_ids, _docs, queries = vectors
    index = str(tmp_path / "index")
    build(uri, index, "num_shards=2")
    tiny_encoder().save_pretrained(str(tmp_path / "model"))
    common = {"index": index, "model": tmp_path / "model", "timeout_s": 5}
    learned = searcher(**common)
    hybrid = searcher(**common, retriever="hybrid", bm25=data_root / "scifact", name="hyb",
                      **{"hybrid.fusion": "interpolation", "hybrid.weight": 0.3})  # fmt: skip
    try:
        bm25 = BM25(build_bm25_index(BeirDataset(str(data_root / "scifact")), layout="multifield"),
                    layout="multifield")  # fmt: skip
        texts = ["sodium channels in heart muscle", "vitamin D deficiency and fractures", "tumour suppressor"]
        vector = as_queries(queries[:1])[0]
        got = hybrid.batch_search([*texts, vector], k=5)
        for text, result in zip(texts, got, strict=False):
            ranked = learned.search(text, k=100)
            expected = fuse(dict(zip(ranked.doc_ids, ranked.scores, strict=True)), dict(bm25.search(text, 100)),
                            hybrid.hybrid, 5)  # fmt: skip
            assert result.doc_ids == list(expected) and result.scores == pytest.approx(
                list(expected.values())
            )
            assert not result.partial and result.missing == []
        assert got[0].doc_ids != learned.search(texts[0], k=5).doc_ids  # BM25 moved something
        assert got[3].doc_ids == learned.search(vector, k=5).doc_ids  # no text: learned only
        stats = hybrid.stats()["bm25"]
        assert stats["docs"] == 5183 and stats["calls"] == 1 and stats["failures"] == 0
        assert hybrid.health()["ok"]

        ray.kill(hybrid.lexical, no_restart=True)
        started = time.monotonic()
        alone = hybrid.search(texts[0], k=5)
        assert time.monotonic() - started < 10  # the deadline (timeout_s=5), not a hang
        assert (
            alone.partial
            and alone.missing == ["bm25"]
            and alone.doc_ids == learned.search(texts[0], 5).doc_ids
        )
        health = hybrid.health()
        assert not health["ok"] and health["down"] == ["bm25"]
        assert hybrid.stats()["bm25"]["failures"] == 1
    finally:
        hybrid.shutdown()
        learned.shutdown()
    with pytest.raises(ConfigError, match="bm25: retriever=hybrid needs bm25="):
        searcher(**common, retriever="hybrid")
    with pytest.raises(
        ShardStartupError,
        match=r"BM25 actor for \S*nowhere failed to start: FileNotFoundError: dataset: \S*nowhere: not found$",
    ):
        searcher(**common, retriever="hybrid", bm25=tmp_path / "nowhere", name="hyb-bad")
    _wait_name_free("hyb-bad-shard-00000-r0", 30)  # the shard actors it had started are gone with it
