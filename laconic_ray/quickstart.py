"""``laconic quickstart``: every stage for real, end to end, on an embedded default.

    collection (LACONIC_DATA, or the public BEIR archive) -> weak pairs -> phase 1 (Ray Train)
    -> BM25 hard negatives on the train split -> phase 2 (Ray Train) -> corpus encoded with Ray Data
    -> 2-shard index on CPU actors -> served (Python client and HTTP) -> evaluated on the test split
    -> report (markdown + PNG) and one JSON line with nDCG@10 and the stage timings

With ``train.phase2.enabled=false`` (conf/adapt.yaml) it is label-free: phase 1 on the corpus's own pairs,
no hard negatives, the final model named ``adapted``. ``dev_every`` carves a dev split (evaluated beside test).

Baselines for the report (untrained model, phase 1, BM25, and the final run fused with BM25: ``hybrid``) are
evaluated in-process; the final model goes through the full distributed path. A local Ray cluster is started in-process and everything is written under
``output`` (runs/quickstart by default). Each stage skips work its output already holds, so a rerun after an
interruption picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from laconic_ray import storage
from laconic_ray.config import EncodeConfig, IndexConfig, QuickstartConfig, ServeConfig
from laconic_ray.data.beir import BeirDataset, download_beir, resolve_dataset
from laconic_ray.eval.fusion import fuse_runs
from laconic_ray.eval.metrics import evaluate

log = logging.getLogger(__name__)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.started = time.perf_counter()
                log.info("quickstart: %s ...", name)

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.started, 1)
                log.info("quickstart: %s done in %.1f s", name, timer.seconds[name])

        return _Span()


def find_dataset(config: QuickstartConfig) -> str:
    """The collection's folder: under the data root, or downloaded from BEIR when allowed."""
    try:
        root = resolve_dataset(config.dataset, config.data_root)
    except FileNotFoundError:
        root = ""
    if root and storage.exists(root):
        return root
    if not config.download or os.sep in config.dataset:
        raise FileNotFoundError(
            f"collection {config.dataset!r} not found (set LACONIC_DATA, or download=true)"
        )
    target = config.data_root or os.environ.get("LACONIC_DATA") or os.path.join(config.output, "datasets")
    log.info("downloading BEIR %s into %s", config.dataset, target)
    return download_beir(config.dataset, target)


def slice_dataset(root: str, target: str, corpus_limit: int | None, query_limit: int | None) -> str:
    """A smaller copy for shortened runs: the first ``query_limit`` judged queries of each split, every document
    they judge, and the first ``corpus_limit`` other documents."""
    if os.path.exists(os.path.join(target, "corpus.jsonl")):
        return target
    dataset = BeirDataset(root)
    os.makedirs(os.path.join(target, "qrels"), exist_ok=True)
    keep_queries: set[str] = set()
    judged: set[str] = set()
    for split in dataset.splits():
        qrels = dataset.qrels(split)
        chosen = sorted(qrels)[:query_limit] if query_limit else sorted(qrels)
        keep_queries.update(chosen)
        write_qrels(os.path.join(target, "qrels", f"{split}.tsv"), {q: qrels[q] for q in chosen})
        judged.update(d for q in chosen for d in qrels[q])
    with open(os.path.join(target, "corpus.jsonl"), "w") as f:
        others = 0
        for doc in dataset.corpus():
            if doc.id in judged or corpus_limit is None or others < corpus_limit:
                others += doc.id not in judged
                f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    with open(os.path.join(target, "queries.jsonl"), "w") as f:
        for q in dataset.queries():
            if q.id in keep_queries:
                f.write(json.dumps({"_id": q.id, "text": q.text}) + "\n")
    return target


def write_qrels(path: str, qrels: dict[str, dict[str, int]]) -> None:
    with open(path, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in sorted(qrels):
            for d, rel in sorted(qrels[q].items()):
                f.write(f"{q}\t{d}\t{rel}\n")


def carve_dev(root: str, target: str, every: int, source: str = "train") -> str:
    """``root`` with every ``every``-th judged ``source`` query (sorted by id) moved from qrels/<source>.tsv
    into qrels/dev.tsv; corpus and queries are links to ``root``'s files, other splits copied as they are.
    (From test only where a collection has nothing else, e.g. CACM: test is then the other 1 - 1/every.)"""
    if os.path.exists(os.path.join(target, "qrels", "dev.tsv")):
        return target
    dataset = BeirDataset(root)
    if source not in dataset.splits():
        raise ValueError(
            f"dev_every: {root} has no qrels/{source}.tsv to carve a dev split from (dev_from=<split>, or "
            "dev_every=null)"
        )
    if "dev" in dataset.splits():
        raise ValueError(
            f"dev_every: {root} already has a dev split (qrels/dev.tsv): set dev_every=null to use it"
        )
    os.makedirs(os.path.join(target, "qrels"), exist_ok=True)
    for uri in (dataset.corpus_uri(), dataset.queries_uri()):
        link = os.path.join(target, os.path.basename(uri))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(uri), link)
    for split in dataset.splits():
        qrels = dataset.qrels(split)
        if split == source:
            ids = sorted(qrels)
            dev = set(ids[every - 1 :: every])
            write_qrels(os.path.join(target, "qrels", "dev.tsv"), {q: qrels[q] for q in dev})
            qrels = {q: r for q, r in qrels.items() if q not in dev}
        write_qrels(os.path.join(target, "qrels", f"{split}.tsv"), qrels)
    return target


def evaluate_model(model: str, dataset: BeirDataset, batch_size: int) -> dict[str, float]:
    """Encode corpus and test queries in-process, search exactly, score (the report's baselines)."""
    from laconic_ray.index import InvertedIndex
    from laconic_ray.model import SparseEncoder

    encoder = SparseEncoder.from_pretrained(model)
    docs = list(dataset.corpus())
    vectors = encoder.encode_documents(
        [d.full_text() for d in docs], batch_size=batch_size, top_k=encoder.settings.top_k
    )
    index = InvertedIndex.build(vectors, [d.id for d in docs])
    queries = list(dataset.queries("test"))
    results = index.batch_search(
        encoder.encode_queries([q.text for q in queries], batch_size=batch_size), 100
    )
    run = {
        q.id: dict(zip(ids, scores.tolist(), strict=True))
        for q, (ids, scores) in zip(queries, results, strict=True)
    }
    metrics, _ = evaluate(run, dataset.qrels("test"))
    rounded = {m: round(v, 4) for m, v in metrics.items()}
    _record(model, dataset, rounded)
    return {**rounded, "mean_doc_nnz": round(vectors.nnz / len(docs), 1)}


def _record(model: str, dataset: BeirDataset, metrics: dict[str, float], split: str = "test") -> None:
    """The figures into the local checkpoint's laconic.json and model card."""
    from laconic_ray.model import card

    if not storage.is_remote(model) and os.path.isfile(os.path.join(model, "laconic.json")):
        card.record_evaluation(model, os.path.basename(dataset.root.rstrip("/")), split, metrics)


def complete_answers(
    searcher: Any, texts: list[str], k: int, timeout_s: float, attempts: int = 2
) -> list[Any]:
    """The searcher's answers to ``texts``, none of them partial: a metric computed over answers that miss a
    shard is wrong without looking wrong (an overloaded machine once turned nDCG@10 0.67 into 0.0). A batch
    with partial answers is asked again, then refused with what to change."""
    for attempt in range(1, attempts + 1):
        answers = searcher.batch_search(texts, k)
        partial = [i for i, a in enumerate(answers) if a.partial]
        if not partial:
            return answers
        missing = sorted({s for i in partial for s in answers[i].missing_shards})
        log.warning(
            "%d of %d answers partial (shards %s did not answer), attempt %d of %d",
            len(partial),
            len(answers),
            missing,
            attempt,
            attempts,
        )
    raise RuntimeError(
        f"{len(partial)} of {len(answers)} served answers were partial (shards {missing} gave no answer within "
        f"{timeout_s:g} s): the evaluation would be wrong, so it stops here. The machine is likely "
        "overloaded: stop other work, or raise the shards' time limit (serve_timeout_s=...)"
    )


def latency(fn, queries: list[Any]) -> dict[str, float]:
    for q in queries[:10]:
        fn(q)
    seconds = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        seconds.append(time.perf_counter() - started)
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(seconds), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def run_quickstart(config: QuickstartConfig) -> dict[str, Any]:
    from laconic_ray.data.mining import run_mine
    from laconic_ray.distributed.cluster import ensure_ray
    from laconic_ray.distributed.encode import run_encode
    from laconic_ray.distributed.index import run_index
    from laconic_ray.distributed.service import searcher_from
    from laconic_ray.distributed.train import run_train
    from laconic_ray.eval.evaluate import bm25_run
    from laconic_ray.model.build import build_encoder, resolve_term_weights

    out = os.path.abspath(config.output)
    os.makedirs(out, exist_ok=True)
    timer = Timer()
    results: dict[str, dict[str, float]] = {}

    with timer("dataset"):
        root = find_dataset(config)
        if config.corpus_limit or config.query_limit:
            root = slice_dataset(
                root, os.path.join(out, "data", "collection"), config.corpus_limit, config.query_limit
            )
        if config.dev_every:
            name = os.path.basename(root.rstrip("/"))  # the collection keeps its name in reports and cards
            target = os.path.join(out, "data", "dev-split", name)
            root = carve_dev(root, target, config.dev_every, config.dev_from)
        dataset = BeirDataset(root)
    # a corpus of one's own, no qrels: everything runs but the scoring (the adapt preset reads no label)
    labelled = "test" in dataset.splits()
    supervised = config.train.phase2.enabled  # false: the adapt preset, no labels before the evaluation
    if supervised and "train" not in dataset.splits():
        raise ValueError(
            f"dataset: {root} has no qrels/train.tsv, and phase 2 mines hard negatives for judged train "
            "queries; for a corpus without labels use conf/adapt.yaml (phase 1 on the corpus's own pairs)"
        )
    if not labelled:
        log.warning(
            "%s has no qrels/test.tsv: trained, encoded, indexed and served, but nothing scored", root
        )
    ensure_ray(config.ray)

    with timer("mine_weak_pairs"):
        weak = os.path.join(out, "data", "weak")
        if not storage.exists(os.path.join(weak, storage.MANIFEST_NAME)):
            run_mine(
                dataclasses.replace(
                    config.mine, dataset=root, output=weak, phase=1, max_pairs=config.weak_pairs
                )
            )
    negatives = os.path.join(out, "data", "negatives")
    if supervised:
        with timer("mine_hard_negatives"):
            if not storage.exists(os.path.join(negatives, storage.MANIFEST_NAME)):
                run_mine(
                    dataclasses.replace(
                        config.mine, dataset=root, output=negatives, phase=2, split="train", source="qrels"
                    )
                )
    final = "phase2" if supervised else "adapted"  # the final model's name in the results

    train = dataclasses.replace(
        config.train,
        output=os.path.join(out, "train"),
        phase1=dataclasses.replace(config.train.phase1, data=weak),
        phase2=dataclasses.replace(config.train.phase2, data=negatives),
    )
    if config.term_weights:  # before the untrained model is built: the prior is where training starts
        model = dataclasses.replace(train.model, term_weights=f"idf:{root}")
        train = dataclasses.replace(train, model=resolve_term_weights(model, train.output))
    baselines = config.baselines and labelled
    if baselines:
        with timer("eval_untrained"):
            untrained = os.path.join(out, "models", "untrained")
            if not storage.exists(os.path.join(untrained, "laconic.json")):
                build_encoder(train.model).save_pretrained(untrained)
            results["untrained"] = evaluate_model(untrained, dataset, config.encode_batch_size)
    with timer("train"):
        trained = run_train(train)
    final_model = trained["model"]
    bm25: dict = {}  # the BM25 test run: a baseline, and the hybrid's lexical half
    if baselines:
        if supervised:
            with timer("eval_phase1"):
                results["phase1"] = evaluate_model(
                    os.path.join(train.output, "phase1", "model"), dataset, config.encode_batch_size
                )
        with timer("eval_bm25"):
            bm25 = bm25_run(dataset, list(dataset.queries("test")), 100, k1=0.9, b=0.4, threads=2, cache=None)
            results["bm25"] = {m: round(v, 4) for m, v in evaluate(bm25, dataset.qrels("test"))[0].items()}

    with timer("encode"):
        vectors = os.path.join(out, "vectors")
        encoded = run_encode(
            EncodeConfig(
                model=final_model,
                corpus=dataset.corpus_uri(),
                output=vectors,
                batch_size=config.encode_batch_size,
                top_k=train.model.top_k,  # the model's own cap (laconic.json), as the baselines use it
                num_actors=1,
                num_cpus_per_actor=2,
                shard_bytes=2 * 1024 * 1024,
            )
        )
    with timer("index"):
        index_uri = os.path.join(out, "index")
        indexed = run_index(
            IndexConfig(input=vectors, output=index_uri, num_shards=config.num_shards, num_cpus_per_task=0.5)
        )
    with timer("serve_and_eval"):
        serve_config = ServeConfig(
            index=index_uri,
            model=final_model,
            name="quickstart",
            num_cpus_per_shard=0.5,
            port=config.port,
            http_cpus=0.5,
            timeout_s=config.serve_timeout_s,
        )
        searcher = searcher_from(serve_config, name=serve_config.name)
        vectors_q = None
        try:
            judged = [("dev", f"{final}_dev")] * bool(config.dev_every) + [("test", final)]
            for split, name in judged if labelled else []:
                queries = list(dataset.queries(split))
                answers = complete_answers(searcher, [q.text for q in queries], 100, serve_config.timeout_s)
                run = {
                    q.id: dict(zip(a.doc_ids, a.scores, strict=True))
                    for q, a in zip(queries, answers, strict=True)
                }
                metrics = {m: round(v, 4) for m, v in evaluate(run, dataset.qrels(split))[0].items()}
                label = (
                    f"dev (1 in {config.dev_every} {config.dev_from} queries)" if split == "dev" else split
                )
                _record(final_model, dataset, metrics, label)
                vectors_q = searcher.vectorize([q.text for q in queries])
                results[name] = {**metrics, "mean_doc_nnz": encoded.get("mean_nnz", 0.0),
                                 "mean_query_nnz": round(vectors_q.nnz / len(queries), 1)}  # fmt: skip
            if bm25:  # the served test run fused with BM25's (eval/fusion.py)
                fused = fuse_runs(run, bm25, config.hybrid, 100)
                results["hybrid"] = {
                    m: round(v, 4) for m, v in evaluate(fused, dataset.qrels("test"))[0].items()
                }
            if vectors_q is None:  # nothing judged: the latency of the documents' openings as queries
                openings = [
                    " ".join(d.full_text().split()[:12]) for d in itertools.islice(dataset.corpus(), 100)
                ]
                vectors_q = searcher.vectorize([t for t in openings if t.strip()])
            sparse_queries = [
                {"indices": vectors_q[i].indices.tolist(), "values": vectors_q[i].data.tolist()}
                for i in range(vectors_q.shape[0])
            ]
            latencies = {"python_client": latency(lambda q: searcher.search(q, 10), sparse_queries)}
            if config.http:
                latencies["http"] = _http_latency(serve_config, sparse_queries)
        finally:
            searcher.shutdown()

    summary = {
        "dataset": dataset.name,
        "nDCG@10": results[final]["nDCG@10"] if labelled else None,
        "ndcg10": {name: r["nDCG@10"] for name, r in results.items() if "dev" not in name},
        "metrics": results,
        "latency_ms": latencies,
        "timings_s": timer.seconds,
        "total_s": round(sum(timer.seconds.values()), 1),
        "output": out,
        "model": final_model,
        "index": index_uri,
        "docs": indexed.get("docs"),
    }
    write_report(out, summary, trained)
    return summary


def _http_latency(config: ServeConfig, queries: list[dict]) -> dict[str, float]:
    """POST /search latency over one kept-alive connection (what a service client holds)."""
    import http.client

    from ray import serve

    from laconic_ray.distributed.http import deploy, serve_running

    started_serve = not serve_running()
    deploy(config, config.storage.options())
    connection = http.client.HTTPConnection(config.host, config.port, timeout=60)

    def ask(q):
        connection.request(
            "POST", "/search", json.dumps({"vector": q, "k": 10}), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /search answered {response.status}: {body[:200]!r}")

    try:
        return latency(ask, queries)
    finally:
        connection.close()
        serve.delete(config.name)
        if started_serve:  # leave the cluster as we found it (a shared one may serve other apps)
            serve.shutdown()


def write_report(out: str, summary: dict[str, Any], trained: dict[str, Any]) -> None:
    """report.md and PNG figures: loss and nnz over training, nDCG@10 by model, serving latency."""
    from laconic_ray.distributed.train import read_history
    from laconic_ray.eval.plots import plot_bars, plot_series

    figures = Path(out, "report")
    figures.mkdir(parents=True, exist_ok=True)
    losses, nnz = {}, {}
    for phase in trained["phases"]:
        history = read_history(phase["history"]) if phase.get("history") else []
        name = f"phase {phase['phase']}"
        losses[name] = [(h["step"], h["loss"]) for h in history if "loss" in h]
        nnz[f"{name} queries"] = [(h["step"], h["nnz_query"]) for h in history if "nnz_query" in h]
        nnz[f"{name} passages"] = [(h["step"], h["nnz_passage"]) for h in history if "nnz_passage" in h]
    plot_series(losses, str(figures / "loss.png"), "optimizer step", "loss", "training loss", log_y=True)
    plot_series(
        nnz,
        str(figures / "nnz.png"),
        "optimizer step",
        "non-zero weights per vector",
        "sparsity over training",
        log_y=True,
    )
    if summary["ndcg10"]:
        plot_bars(summary["ndcg10"], str(figures / "ndcg10.png"), "nDCG@10", f"{summary['dataset']} test")
    plot_bars(
        {k: v["p50_ms"] for k, v in summary["latency_ms"].items()},
        str(figures / "latency.png"),
        "p50 ms per query",
        "search latency (10 results)",
    )
    rows = (
        "\n".join(
            f"| {name} | {r.get('nDCG@10', 0):.4f} | {r.get('R@100', 0):.4f} | {r.get('RR@10', 0):.4f} | "
            f"{r.get('mean_doc_nnz', '')} |"
            for name, r in summary["metrics"].items()
        )
        or "| (no qrels/test.tsv in the collection: nothing scored) | | | | |"
    )
    timings = "\n".join(f"| {k} | {v} |" for k, v in summary["timings_s"].items())
    lat = "\n".join(f"| {k} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in summary["latency_ms"].items())
    text = f"""# laconic_ray quickstart: {summary["dataset"]}

| model | nDCG@10 | Recall@100 | MRR@10 | mean nnz per document |
|---|---|---|---|---|
{rows}

![nDCG@10](report/ndcg10.png)

## Training

![loss](report/loss.png)
![nnz](report/nnz.png)

## Serving ({summary.get("docs")} documents, exact search)

| path | p50 ms | p99 ms |
|---|---|---|
{lat}

![latency](report/latency.png)

## Stage timings (seconds, total {summary["total_s"]})

| stage | seconds |
|---|---|
{timings}
"""
    Path(out, "report.md").write_text(text)
    Path(out, "summary.json").write_text(json.dumps(summary, indent=1))
