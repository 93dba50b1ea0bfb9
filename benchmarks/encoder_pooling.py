"""encode_documents throughput and peak memory: chunked max-pooling vs the naive [batch, tokens, vocab] logits.

    .venv/bin/python benchmarks/encoder_pooling.py [--docs 512] [--batch-size 32] [--repeats 3]

Tiny random Llama (hidden 64, 2 layers) with the real Llama-3 tokenizer and its 128,256-id vocabulary, on
SciFact passages (title + abstract, max 192 tokens). With so small a body the LM head dominates, which is the
point. Each measurement runs in a fresh subprocess (peak RSS is per process), variants alternate, and the
medians are reported with ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()


def measure(variant: str, docs: int, batch_size: int) -> dict:
    import torch

    from laconic_ray.data.beir import BeirDataset
    from laconic_ray.model import encoder as encoder_module
    from tests.models import tiny_encoder

    torch.set_num_threads(2)
    texts = [d.full_text() for _, d in zip(range(docs), BeirDataset("scifact").corpus(), strict=False)]
    enc = tiny_encoder(tokenizer="llama3")
    if variant == "naive":
        encoder_module.max_pool_logits = lambda h, w, b, m, chunk=0: encoder_module.max_pool_logits_naive(
            h, w, b, m
        )
    enc.encode_documents(["warm up", "the kernels"], batch_size=2)  # small: the peak must come from the run
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats: dict = {}
    t0 = time.perf_counter()
    out = enc.encode(texts, "passage", batch_size=batch_size, top_k=512, stats=stats)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "docs_per_s": len(texts) / seconds,
        "peak_rss_mb": peak / 1024,
        "peak_above_model_mb": (peak - base_rss) / 1024,
        "nnz_per_doc": out.nnz / len(texts),
        "split_s": {k: round(v, 3) for k, v in stats.items() if k.endswith("_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["chunked", "naive"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.docs, args.batch_size)))
        return
    runs: dict[str, list[dict]] = {"chunked": [], "naive": []}
    for _ in range(args.repeats):
        for variant in runs:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--docs",
                str(args.docs),
                "--batch-size",
                str(args.batch_size),
            ]
            runs[variant].append(
                json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            )
    summary = {"docs": args.docs, "batch_size": args.batch_size, "repeats": args.repeats}
    for variant, rs in runs.items():
        summary[variant] = {
            "docs_per_s": round(statistics.median(r["docs_per_s"] for r in rs), 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs)),
            "peak_above_model_mb": round(statistics.median(r["peak_above_model_mb"] for r in rs)),
            "split_s": rs[0]["split_s"],
        }
    summary["speedup_chunked_over_naive"] = round(
        summary["chunked"]["docs_per_s"] / summary["naive"]["docs_per_s"], 2
    )
    summary["peak_memory_naive_over_chunked"] = round(
        summary["naive"]["peak_above_model_mb"] / max(summary["chunked"]["peak_above_model_mb"], 1), 1
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
