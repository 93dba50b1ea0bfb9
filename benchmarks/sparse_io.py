"""Sparse round-trip throughput (write_sparse + read_sparse), local disk vs S3 on loopback (moto server).

    .venv/bin/python benchmarks/sparse_io.py [--repeats 5]

Vectors: BM25 weights over all 5,183 SciFact documents (BERT vocabulary), the same ones the tests use.
Both targets run side by side in one process, alternating, and medians are reported with the S3/local ratio
(the machines are shared and noisy; absolute numbers vary, ratios much less).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()
for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(key, "bench")

from laconic_ray import sparse  # noqa: E402
from laconic_ray.storage import StorageOptions  # noqa: E402
from tests.vectors import collection_vectors  # noqa: E402


def start_moto() -> str:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    return f"http://127.0.0.1:{port}"


def round_trip(uri, ids, csr, options) -> tuple[float, float]:
    t0 = time.perf_counter()
    sparse.write_sparse(uri, ids, csr, csr.shape[1], rows_per_file=2000, options=options)
    t1 = time.perf_counter()
    got_ids, got, _ = sparse.read_sparse(uri, options)
    t2 = time.perf_counter()
    assert got_ids == ids and got.nnz == csr.nnz
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ids, csr = collection_vectors("scifact")
    import s3fs

    options = StorageOptions(endpoint_url=start_moto())
    s3fs.S3FileSystem(**options.s3_kwargs()).mkdir("bench")
    tmp = tempfile.mkdtemp()
    times: dict[str, list[tuple[float, float]]] = {"local": [], "s3": []}
    for _ in range(args.repeats):
        times["local"].append(round_trip(os.path.join(tmp, uuid.uuid4().hex), ids, csr, None))
        times["s3"].append(round_trip(f"s3://bench/{uuid.uuid4().hex}", ids, csr, options))
    shutil.rmtree(tmp)
    n = len(ids)
    result = {"docs": n, "nnz": int(csr.nnz), "repeats": args.repeats}
    for target, runs in times.items():
        write = statistics.median(w for w, _ in runs)
        read = statistics.median(r for _, r in runs)
        result[target] = {
            "write_docs_per_s": round(n / write),
            "read_docs_per_s": round(n / read),
            "round_trip_docs_per_s": round(n / (write + read)),
        }
    result["s3_over_local_round_trip"] = round(
        result["s3"]["round_trip_docs_per_s"] / result["local"]["round_trip_docs_per_s"], 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
