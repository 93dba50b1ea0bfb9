"""The HTTP API fuzzed with schemathesis from its own served OpenAPI schema: no input a client can send gets a
5xx, and every response matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from laconic_ray import sparse
from laconic_ray.config import IndexConfig, ServeConfig, load_config
from laconic_ray.distributed.index import run_index
from laconic_ray.distributed.service import searcher_from
from tests.vectors import collection_vectors

EXAMPLES = 60  # per operation and mode; hypothesis shrinks a failure to its smallest example


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory, data_root):
    from ray import serve

    from laconic_ray.distributed.http import deploy
    from tests.models import tiny_encoder

    tmp = tmp_path_factory.mktemp("fuzz")
    doc_ids, docs = collection_vectors("cacm")
    sparse.write_sparse(str(tmp / "vecs"), doc_ids, docs, docs.shape[1])
    run_index(
        load_config(
            IndexConfig,
            None,
            [f"input={tmp / 'vecs'}", f"output={tmp / 'index'}", "num_shards=2", "num_cpus_per_task=0.5"],
        )
    )
    tiny_encoder().save_pretrained(str(tmp / "model"))  # text queries too (BERT vocabulary, like the index)
    serve.shutdown()  # Serve keeps its first HTTP address: start it on ours
    config = load_config(
        ServeConfig,
        "conf/serve.yaml",
        [
            f"index={tmp / 'index'}",
            f"model={tmp / 'model'}",
            "num_cpus_per_shard=0.5",
            "http_cpus=0.5",
            f"port={_free_port()}",
            "name=fuzz",
            "max_k=100",
            "max_batch=8",
            "max_query_chars=500",
            "max_query_terms=256",
            "max_body_bytes=65536",
        ],
    )
    shards = searcher_from(config, name=config.name)
    try:
        yield deploy(config, config.storage.options())
    finally:
        serve.shutdown()
        shards.shutdown()


OPERATIONS = [("POST", "/search"), ("POST", "/batch_search"), ("GET", "/health"), ("GET", "/stats")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE)
    for m, p in OPERATIONS
    if m == "POST"  # GETs take no input to break
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_input_gets_a_server_error_or_breaks_the_schema(service, method, path, mode):
    """Schema-valid requests (positive) and requests that break it (negative), per operation."""
    api = schemathesis.openapi.from_url(f"{service}/openapi.json")
    assert {(m.upper(), p) for p, ops in api.raw_schema["paths"].items() for m in ops} >= set(OPERATIONS)
    operation = api[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run: a CI failure reproduces locally
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case):
        statuses.append(case.call_and_validate(checks=CHECKS, timeout=60).status_code)

    statuses: list[int] = []
    fuzz()
    assert len(statuses) >= (EXAMPLES // 2 if method == "POST" else 1)  # they really reached the service
    if mode == GenerationMode.NEGATIVE:  # what breaks the schema is refused, and says so
        assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    elif path == "/search":  # valid requests are answered (many exceed the service's limits: k, terms, ids)
        assert 200 in statuses, sorted(set(statuses))
    # (/batch_search: a batch is answered only if every query in it is valid, which random lists rarely are)
