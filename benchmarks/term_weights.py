"""What the corpus's sqrt(idf) term weights do for the untrained model, before any training (issue 27).

    LACONIC_DATA=../shared/datasets .venv/bin/python benchmarks/term_weights.py scifact cranfield cacm

The quickstart's untrained model (conf/quickstart.yaml's train.model: the tiny random-init Llama, seed 0,
documents capped at 256 weights), each collection's corpus encoded once, exact search of its full test split,
nDCG@10 and R@100 without and with the term weights of that corpus (term_weights.from_corpus, as
`term_weights=true` computes them).
"""

from __future__ import annotations

import json
import os
import sys

from laconic_ray.config import QuickstartConfig, load_config
from laconic_ray.data.beir import BeirDataset
from laconic_ray.eval.metrics import evaluate
from laconic_ray.index import InvertedIndex
from laconic_ray.model import term_weights
from laconic_ray.model.build import build_encoder

HERE = os.path.dirname(os.path.abspath(__file__))


def scores(encoder, docs, queries, qrels, scale=None) -> dict[str, float]:
    top_k = encoder.settings.top_k
    if scale is not None:
        encoder.set_term_weights(scale)
    vectors = encoder.encode_documents([d.full_text() for d in docs], top_k=top_k)
    index = InvertedIndex.build(vectors, [d.id for d in docs])
    found = index.batch_search(encoder.encode_queries([q.text for q in queries]), 100)
    run = {q.id: dict(zip(ids, s.tolist(), strict=True)) for q, (ids, s) in zip(queries, found, strict=True)}
    metrics, _ = evaluate(run, qrels)
    return {"nDCG@10": round(metrics["nDCG@10"], 4), "R@100": round(metrics["R@100"], 4)}


def main() -> None:
    import torch

    preset = load_config(QuickstartConfig, os.path.join(HERE, "..", "conf", "quickstart.yaml"), [])
    data = os.environ.get("LACONIC_DATA", os.path.join(HERE, "..", "..", "shared", "datasets"))
    out = {}
    for name in sys.argv[1:] or ["scifact", "cranfield", "cacm"]:
        collection = BeirDataset(os.path.join(data, name))
        docs, qrels = list(collection.corpus()), collection.qrels("test")
        queries = [q for q in collection.queries("test") if q.id in qrels]
        encoder = build_encoder(preset.train.model)
        plain = scores(encoder, docs, queries, qrels)
        scale, _meta = term_weights.from_corpus(encoder, collection.root)
        weighted = scores(encoder, docs, queries, qrels, torch.from_numpy(scale))
        out[name] = {"queries": len(queries), "plain": plain, "term_weights": weighted,
                     "gain": round(weighted["nDCG@10"] - plain["nDCG@10"], 4)}  # fmt: skip
        print(name, json.dumps(out[name]), flush=True)


if __name__ == "__main__":
    main()
