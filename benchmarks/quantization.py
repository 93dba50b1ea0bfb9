"""Encoder quantization: speed and memory at Llama-3-1B widths, quality on the quickstart's trained model.

    .venv/bin/python benchmarks/quantization.py --layers 2 --queries 200 \
        --model runs/quickstart/train/phase2/model

* Speed (no quality: random weights): the llama3-1b *architecture* (conf/model/llama3-1b.yaml: hidden 2048,
  MLP 8192, 32/8 heads, 128,256 ids, tied embeddings) at ``--layers`` decoder layers, the real Llama-3
  tokenizer, bidirectional. Text-query latency = one SciFact test query per call (tokenize, forward, pool
  over the whole vocabulary, CSR), as a service encodes it: p50/p99 over ``--queries`` calls, each variant
  timed in alternating passes over the same queries (so caches warm alike). Model bytes = serialized state.
* Quality (``--model``): SciFact test with the in-process exact index, per quantization: nDCG@10, R@100,
  documents encoded per second, mean document nnz.

Variants: fp32, bf16, int8 (torch dynamic int8 on every Linear and the LM head, laconic_ray's CPU route) and,
when torchao is installed, torchao's int8 weight-only and dynamic-activation configs (uncompiled), which is
what we measured before choosing torch's kernels. Ratios are within one run; keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import setup

setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from laconic_ray.config import ModelConfig, load_config  # noqa: E402
from laconic_ray.model import SparseEncoder  # noqa: E402


def data_root() -> Path:
    return Path(os.environ["LACONIC_DATA"])


def queries(n: int) -> list[str]:
    lines = (data_root() / "scifact" / "queries.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def state_bytes(encoder: SparseEncoder) -> int:
    buffer = io.BytesIO()
    torch.save(encoder.lm.state_dict(), buffer)
    head = getattr(encoder, "_head_chunks", None)
    if head:
        torch.save([m.state_dict() for _, m in head], buffer)
    return buffer.tell()


def torchao_variants(base: SparseEncoder) -> dict[str, SparseEncoder]:
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return {}
    out = {}
    for name, config in (("torchao int8 weight-only (head fp32)", Int8WeightOnlyConfig()),
                         ("torchao int8 dynamic (head fp32)", Int8DynamicActivationInt8WeightConfig())):  # fmt: skip
        encoder = copy.deepcopy(base)
        head = encoder.lm_head
        quantize_(
            encoder.lm,
            config,
            filter_fn=lambda m, fqn, head=head: isinstance(m, torch.nn.Linear) and m is not head,
        )
        out[name] = encoder
    return out


def speed(layers: int, n_queries: int, passes: int) -> list[dict]:
    model = load_config(ModelConfig, "conf/model/llama3-1b.yaml")  # its architecture only (no weights here)
    architecture = {**dict(model.architecture), "num_hidden_layers": layers}
    tokenizer = str(
        Path(__import__("os").environ.get("LACONIC_TOKENIZERS", "../shared/tokenizers")) / "llama3"
    )
    base = SparseEncoder.from_config(architecture, tokenizer, seed=0)
    variants = {
        "fp32": base,
        "bf16": copy.deepcopy(base).quantize("bfloat16"),
        "int8": copy.deepcopy(base).quantize("int8"),
        **torchao_variants(base),
    }
    texts = queries(n_queries)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for encoder in variants.values():  # warm-up
        encoder.encode(texts[:5], "query", batch_size=1)
    for _ in range(passes):
        for name, encoder in variants.items():
            for text in texts:
                started = time.perf_counter()
                encoder.encode([text], "query", batch_size=1)
                timings[name].append((time.perf_counter() - started) * 1e3)
    fp32 = statistics.median(timings["fp32"])
    rows = []
    for name, values in timings.items():
        p50 = statistics.median(values)
        rows.append({
            "variant": name, "layers": layers, "p50_ms": round(p50, 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2), "speedup_vs_fp32": round(fp32 / p50, 2),
            "model_mb": round(state_bytes(variants[name]) / 2**20, 1),
        })  # fmt: skip
    return rows


def quality(model: str) -> list[dict]:
    from laconic_ray.data.beir import BeirDataset
    from laconic_ray.eval.metrics import evaluate
    from laconic_ray.index import InvertedIndex

    dataset = BeirDataset("scifact", data_root_dir=str(data_root()))
    docs = list(dataset.corpus())
    test = list(dataset.queries("test"))
    rows = []
    for method in ("none", "bfloat16", "int8"):
        encoder = SparseEncoder.from_pretrained(model, quantization=method)
        started = time.perf_counter()
        vectors = encoder.encode_documents([d.full_text() for d in docs], top_k=encoder.settings.top_k)
        docs_per_s = len(docs) / (time.perf_counter() - started)
        index = InvertedIndex.build(vectors, [d.id for d in docs])
        results = index.batch_search(encoder.encode_queries([q.text for q in test]), 100)
        run = {
            q.id: dict(zip(ids, s.tolist(), strict=True)) for q, (ids, s) in zip(test, results, strict=True)
        }
        metrics, _ = evaluate(run, dataset.qrels("test"))
        rows.append({
            "quantization": method, "nDCG@10": round(metrics["nDCG@10"], 4), "R@100": round(metrics["R@100"], 4),
            "docs_per_s": round(docs_per_s, 1), "mean_doc_nnz": round(vectors.nnz / len(docs), 1),
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--model", default="", help="a trained checkpoint for the quality rows")
    args = parser.parse_args()
    results = {"speed": speed(args.layers, args.queries, args.passes)}
    print(table(results["speed"]), flush=True)
    if args.model:
        results["quality"] = quality(args.model)
        print(table(results["quality"]))
    out = Path(__file__).parent / "results" / "quantization.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), **results}, indent=1))


if __name__ == "__main__":
    main()
