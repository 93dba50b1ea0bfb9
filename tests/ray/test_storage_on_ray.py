"""Ray Data reads what our storage layer wrote, on S3 through the pyarrow wrapper of s3fs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from laconic_ray import sparse, storage


def test_ray_data_reads_sparse_parts_listed_by_the_manifest(ray_session, s3_bucket):
    base, options = s3_bucket
    uri = storage.join(base, "vecs")
    rng = np.random.default_rng(0)
    csr = sp.random(300, 1000, density=0.02, format="csr", random_state=1, dtype=np.float32)
    csr.data = rng.random(csr.nnz).astype(np.float32) + 0.1
    csr.sort_indices()
    ids = [f"doc{i}" for i in range(300)]
    manifest = sparse.write_sparse(uri, ids, csr, 1000, rows_per_file=100, options=options)

    fs, _ = storage.pyarrow_filesystem(uri, options)
    paths = [storage.filesystem(storage.join(uri, f.path), options)[1] for f in manifest.files]
    ds = ray_session.data.read_parquet(paths, filesystem=fs)
    rows = sorted(ds.take_all(), key=lambda r: int(r["doc_id"][3:]))
    assert len(rows) == 300
    for i in (0, 151, 299):
        row = csr[i]
        assert rows[i]["doc_id"] == f"doc{i}"
        assert list(rows[i]["indices"]) == row.indices.tolist()
        assert np.array_equal(np.asarray(rows[i]["values"], np.float32), row.data)
