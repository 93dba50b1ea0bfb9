"""A shortened quickstart end to end (corpus slice, few steps): every stage runs and every artefact exists."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from laconic_ray import sparse, storage
from laconic_ray.config import QuickstartConfig, load_config
from laconic_ray.distributed.http import serve_running
from laconic_ray.model import SparseEncoder
from laconic_ray.quickstart import run_quickstart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shortened_quickstart_produces_every_artefact(ray_session, tmp_path, data_root):
    out = tmp_path / "qs"
    config = load_config(
        QuickstartConfig,
        "conf/quickstart.yaml",
        [
            f"output={out}",
            "corpus_limit=300",
            "query_limit=40",
            "weak_pairs=512",
            f"port={_free_port()}",
            "train.phase1.steps=4",
            "train.phase2.steps=2",
            "train.checkpoint_every=2",
            "train.phase1.micro_batch_queries=8",
            "train.phase1.queries_per_step=16",
            "train.phase2.micro_batch_queries=2",
            "train.phase2.queries_per_step=4",
            "train.phase1.passage_max_length=64",
            "train.phase2.passage_max_length=64",
        ],
    )
    summary = run_quickstart(config)
    # stages and their artefacts
    assert set(summary["timings_s"]) >= {
        "dataset",
        "mine_weak_pairs",
        "mine_hard_negatives",
        "eval_untrained",
        "train",
        "eval_phase1",
        "eval_bm25",
        "encode",
        "index",
        "serve_and_eval",
    }
    assert storage.read_manifest(str(out / "data" / "weak")).total_rows > 0
    assert storage.read_manifest(str(out / "data" / "negatives")).metadata["num_negatives"] == 15
    for phase in (1, 2):
        assert (
            SparseEncoder.from_pretrained(str(out / "train" / f"phase{phase}" / "model")).vocab_size == 30522
        )
    ids, _, _ = sparse.read_sparse(str(out / "vectors"))
    corpus = len((out / "data" / "collection" / "corpus.jsonl").read_text().splitlines())
    assert len(ids) == corpus and summary["docs"] == corpus
    assert storage.read_manifest(str(out / "index"), kind="index").metadata["num_shards"] == 2
    # evaluation of every model, latency of both serving paths, the report
    assert set(summary["ndcg10"]) == {"untrained", "phase1", "phase2", "bm25"}
    assert all(0 <= v <= 1 for v in summary["ndcg10"].values()) and summary["ndcg10"]["bm25"] > 0.3
    assert set(summary["latency_ms"]) == {"python_client", "http"}
    assert not serve_running()  # the Serve instance the quickstart started is gone again
    report = (out / "report.md").read_text()
    assert "nDCG@10" in report and "phase2" in report
    for figure in ("loss.png", "nnz.png", "ndcg10.png", "latency.png"):
        assert (out / "report" / figure).stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["nDCG@10"] == summary["nDCG@10"]
    assert Path(summary["index"]).exists()
