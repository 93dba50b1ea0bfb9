"""Fixtures shared by every tier: the data root, S3 on loopback (moto in server mode), and one local Ray
cluster for the Ray and integration tiers (started on first use).

moto's server speaks the real S3 wire protocol over HTTP on 127.0.0.1, so s3fs/botocore run exactly as they
would against AWS or MinIO (this is how s3fs's own suite tests). Credentials are dummies set for the whole
session, before any Ray worker starts, so that every process sees the same ones.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# Where our machines keep the shared collections and tokenizers (the Makefile sets the variables too).
SHARED = next(
    (p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), REPO.parent / "shared"
)


def pytest_configure(config):
    os.environ.setdefault("LACONIC_DATA", str(SHARED / "datasets"))
    os.environ.setdefault("LACONIC_TOKENIZERS", str(SHARED / "tokenizers"))
    os.environ.update(_S3_ENV)  # tests never talk to a real AWS account
    os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["LACONIC_DATA"])
    assert (root / "scifact" / "corpus.jsonl").exists(), (
        f"test collections not found under {root}: set LACONIC_DATA to the folder holding scifact/, cacm/, ..."
    )
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket: returns ``(base_uri, StorageOptions)``."""
    import s3fs

    from laconic_ray.storage import StorageOptions

    options = StorageOptions(endpoint_url=s3_endpoint)
    fs = s3fs.S3FileSystem(**options.s3_kwargs())
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}", options


# One local Ray cluster for the whole session (Ray and integration tiers). Logical num_cpus=4 on these 2-core
# machines: two training workers on a 2-CPU cluster would leave nothing for Ray Data and hang. Dashboard off.
@pytest.fixture(scope="session")
def ray_session():
    import ray

    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV
    from laconic_ray.distributed.http import DIRECT_INGRESS_ENV

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # workers inherit the driver's environment at ray.init; Serve's direct ingress on, so that the HTTP
    # tests reach the app both through the proxy and on its replica's own port
    for key, value in {**LOCAL_RAY_ENV, **DIRECT_INGRESS_ENV}.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=1_500_000_000,
            configure_logging=False,
            log_to_driver=True,
        )
    yield ray
    from laconic_ray.distributed.cluster import shutdown_ray

    shutdown_ray(timeout_s=60)
