"""A new user's first hour, as they would run it: the `laconic` command from a directory of their own (not the
checkout), with only LACONIC_DATA set (no LACONIC_TOKENIZERS, no ../shared): a shortened quickstart where
every stage runs and every artefact exists, then the README's `laconic serve` on a 2-CPU local cluster until
/health answers, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from laconic_ray import sparse, storage
from laconic_ray.data.beir import BeirDataset
from laconic_ray.data.examples import read_examples
from laconic_ray.model import SparseEncoder

SHORT = [
    "corpus_limit=300",
    "query_limit=40",
    "weak_pairs=512",
    "train.phase1.steps=4",
    "train.phase2.steps=2",
    "train.checkpoint_every=2",
    "train.phase1.micro_batch_queries=8",
    "train.phase1.queries_per_step=16",
    "train.phase2.micro_batch_queries=2",
    "train.phase2.queries_per_step=4",
    "train.phase1.passage_max_length=64",
    "train.phase2.passage_max_length=64",
    "dev_every=4",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def user(tmp_path_factory, data_root):
    """A user's directory and environment: only the data root, nothing of our machines'."""
    home = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LACONIC_", "RAY_", "PYTEST"))}
    env.update(LACONIC_DATA=str(data_root), LACONIC_CACHE=str(home / ".cache"))
    return home, env


def laconic(home: Path, env: dict, *args: str, timeout: float = 900) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "laconic_ray", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_shortened_quickstart_from_a_users_directory(user):
    home, env = user
    summary = laconic(home, env, "quickstart", "output=runs/qs", f"port={_free_port()}", *SHORT)
    out = home / "runs" / "qs"
    assert summary["output"] == str(out)  # relative paths resolved against the user's directory
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
    for phase in (1, 2):  # the tiny preset's tokenizer came from the package, and was saved with the model
        model = out / "train" / f"phase{phase}" / "model"
        assert SparseEncoder.from_pretrained(str(model)).vocab_size == 30522
        assert (model / "vocab.txt").exists() or (model / "tokenizer.json").exists()
    ids, _, _ = sparse.read_sparse(str(out / "vectors"))
    corpus = len((out / "data" / "collection" / "corpus.jsonl").read_text().splitlines())
    assert len(ids) == corpus and summary["docs"] == corpus
    assert storage.read_manifest(str(out / "index"), kind="index").metadata["num_shards"] == 2
    # evaluation of every model, latency of both serving paths, the report
    assert set(summary["ndcg10"]) == {"untrained", "phase1", "phase2", "bm25", "hybrid"}
    # 1 in 4 of the 40 train queries held out as dev (mining never saw them), evaluated with the final model
    dev = BeirDataset(str(out / "data" / "dev-split" / "collection"))
    assert len(dev.qrels("dev")) == 10 and len(dev.qrels("train")) == 30
    mined = {e.query_id for e in read_examples(str(out / "data" / "negatives"))}
    assert mined and not mined & set(dev.qrels("dev"))
    assert summary["metrics"]["phase2_dev"]["mean_query_nnz"] > 0
    assert all(0 <= v <= 1 for v in summary["ndcg10"].values()) and summary["ndcg10"]["bm25"] > 0.3
    assert set(summary["latency_ms"]) == {"python_client", "http"}
    report = (out / "report.md").read_text()
    assert "nDCG@10" in report and "phase2" in report
    for figure in ("loss.png", "nnz.png", "ndcg10.png", "latency.png"):
        assert (out / "report" / figure).stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["nDCG@10"] == summary["nDCG@10"]


def test_the_label_free_adapt_preset_on_a_corpus_without_training_queries(user):
    """conf/adapt.yaml on Cranfield (test qrels only): pairs from the corpus alone, phase 1 only, then untrained vs
    adapted vs BM25 vs hybrid on test, with a dev split carved from test as the README says."""
    home, env = user
    summary = laconic(home, env, "quickstart", "conf/adapt.yaml", "dataset=cranfield", "output=runs/adapt",
                      "corpus_limit=200", "query_limit=30", "weak_pairs=256", "train.phase1.steps=3",
                      "train.phase1.micro_batch_queries=8", "train.phase1.queries_per_step=8", "http=false",
                      "dev_every=3", "dev_from=test", "term_weights=true")  # fmt: skip
    out = home / "runs" / "adapt"
    assert set(summary["ndcg10"]) == {"untrained", "adapted", "bm25", "hybrid"}
    # sqrt(idf) of the (sliced) corpus, computed once by the driver, from the untrained model on: the workers
    # read the file, the export carries it, the evaluation's encoders apply it
    made = json.loads((out / "train" / "term_weights.json").read_text())
    assert made["corpus"] == str(out / "data" / "dev-split" / "collection")  # the run's own, sliced
    assert made["documents"] == sum(1 for _ in BeirDataset(made["corpus"]).corpus()) >= 200
    for model in (out / "models" / "untrained", out / "train" / "phase1" / "model"):
        assert json.loads((model / "laconic.json").read_text())["term_weights"] is True
        assert json.loads((model / "term_weights.json").read_text())["weights"] == made["weights"]
    assert "mine_hard_negatives" not in summary["timings_s"] and not (out / "train" / "phase2").exists()
    sources = {e.source for e in read_examples(str(out / "data" / "weak"))}
    assert sources == {"weak:title_body", "weak:cropping", "weak:inverse_cloze"}
    assert summary["metrics"]["adapted_dev"]["nDCG@10"] >= 0 and summary["metrics"]["hybrid"]["nDCG@10"] > 0


def test_the_adapt_preset_on_a_bare_corpus_of_ones_own(user, data_root):
    """The user the adapt preset is for: a folder holding a corpus.jsonl and nothing else (no queries, no
    qrels). Mined, trained, encoded, indexed and served; nothing scored, and the summary says so."""
    home, env = user
    own = home / "my-corpus"
    own.mkdir()
    with open(data_root / "cranfield" / "corpus.jsonl") as src:
        (own / "corpus.jsonl").write_text("".join(line for _, line in zip(range(120), src, strict=False)))
    summary = laconic(home, env, "quickstart", "conf/adapt.yaml", f"dataset={own}", "output=runs/own",
                      "weak_pairs=64", "train.phase1.steps=2", "train.phase1.micro_batch_queries=8",
                      "train.phase1.queries_per_step=8", "http=false")  # fmt: skip
    assert summary["nDCG@10"] is None and summary["ndcg10"] == {} and summary["metrics"] == {}
    assert summary["docs"] == 120 and summary["latency_ms"]["python_client"]["p50_ms"] > 0
    assert "nothing scored" in (home / "runs" / "own" / "report.md").read_text()
    model = home / "runs" / "own" / "train" / "phase1" / "model"
    assert json.loads((model / "term_weights.json").read_text())["documents"] == 120


def test_the_readmes_serve_command_is_healthy_on_two_cpus(user):
    home, env = user
    out = home / "runs" / "qs"
    if not (out / "index" / "manifest.json").exists():
        pytest.skip("needs the quickstart's index (the test above)")
    port = _free_port()
    # README: laconic serve conf/serve.yaml index=runs/quickstart/index model=... (2 shards + HTTP > 2 CPUs)
    command = [
        sys.executable, "-m", "laconic_ray", "serve", "conf/serve.yaml", "index=runs/qs/index",
        "model=runs/qs/train/phase2/model", "ray.num_cpus=2", f"port={port}",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        # it answers /health once Serve routes to a replica, a moment before `serve.run` returns; the
        # service says "Ctrl-C stops" when a Ctrl-C stops it cleanly rather than interrupting its start
        deadline = time.monotonic() + 240
        while not any("Ctrl-C stops" in line for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            health = json.loads(response.read())
        assert health["ok"] and health["index"] == str(out / "index")
        body = json.dumps({"query": "sodium channels in heart muscle", "k": 3}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/search", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["hits"]) == 3
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        stdout = server.communicate(timeout=120)[0]
        reader.join(timeout=10)
    stderr = "".join(lines)
    assert server.returncode == 0, stderr[-2000:]
    assert "using" in stderr and "instead" in stderr  # it sized itself to the 2 CPUs, and said so
    assert json.loads(stdout.strip().splitlines()[-1])["shards"] == 2
