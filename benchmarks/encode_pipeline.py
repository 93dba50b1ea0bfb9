"""Ray Data encode pipeline vs a plain single-process loop: same model, same documents, same output format.

    .venv/bin/python benchmarks/encode_pipeline.py [--docs 2000] [--repeats 3]

The tiny random Llama of conf/model/tiny.yaml (BERT vocabulary), SciFact passages. Variants, alternated in
each repeat, medians reported with ratios against the plain loop:

* plain: one process, torch with 2 threads, read -> encode (length-sorted batches) -> write_part, as a user
  would write it by hand;
* ray-1: the pipeline with one actor holding 2 CPUs (2 torch threads);
* ray-2: two actors with 1 CPU each.

The local Ray cluster is started once, before timing; each pipeline run includes its actors' start and
model load (the plain loop includes its model load too). The per-document cost split (tokenize, pad,
forward, pool, write) comes from the pipeline's own journal records.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()


def plain_loop(model_dir: str, corpus: str, output: str, batch_size: int) -> float:
    import torch

    from laconic_ray import sparse
    from laconic_ray.data.beir import iter_documents
    from laconic_ray.model import SparseEncoder

    torch.set_num_threads(2)
    started = time.perf_counter()
    encoder = SparseEncoder.from_pretrained(model_dir)
    docs = list(iter_documents(corpus))
    csr = encoder.encode_documents([d.full_text() for d in docs], batch_size=batch_size, top_k=512)
    sparse.write_sparse(output, [d.id for d in docs], csr, encoder.vocab_size, metadata={"model": model_dir})
    return time.perf_counter() - started


def pipeline(model_dir: str, corpus: str, output: str, batch_size: int, actors: int) -> tuple[float, dict]:
    from laconic_ray.config import EncodeConfig, load_config
    from laconic_ray.distributed.encode import run_encode

    config = load_config(
        EncodeConfig,
        "conf/encode.yaml",
        [
            f"model={model_dir}",
            f"corpus={corpus}",
            f"output={output}",
            f"batch_size={batch_size}",
            f"num_actors={actors}",
            f"num_cpus_per_actor={2 // actors}",
            "shard_bytes=400000",
        ],
    )
    started = time.perf_counter()
    run_encode(config)
    seconds = time.perf_counter() - started
    split: dict[str, float] = {"busy_s": 0.0}
    for record in Path(output, "_progress").glob("part-*.json"):
        entry = json.loads(record.read_text())
        split["busy_s"] += entry["seconds"]  # time the actors spent on shards (read to written)
        for key, value in entry["split_s"].items():
            split[key] = split.get(key, 0.0) + value
    return seconds, split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import os

    import ray

    from laconic_ray.config import ModelConfig, load_config
    from laconic_ray.model.build import build_encoder

    tmp = Path(tempfile.mkdtemp())
    model_dir = str(tmp / "model")
    build_encoder(load_config(ModelConfig, "conf/model/tiny.yaml")).save_pretrained(model_dir)
    lines = Path(os.environ["LACONIC_DATA"], "scifact", "corpus.jsonl").read_text().splitlines(keepends=True)
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(lines[: args.docs]))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    times: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    splits: dict[str, dict] = {}
    for repeat in range(args.repeats):
        out = tmp / f"out{repeat}"
        times["plain"].append(plain_loop(model_dir, str(corpus), str(out / "plain"), args.batch_size))
        for actors in (1, 2):
            seconds, split = pipeline(
                model_dir, str(corpus), str(out / f"ray{actors}"), args.batch_size, actors
            )
            times[f"ray-{actors}"].append(seconds)
            splits[f"ray-{actors}"] = split
        shutil.rmtree(out)
    result = {"docs": args.docs, "repeats": args.repeats, "batch_size": args.batch_size}
    for name, values in times.items():
        result[name] = {
            "seconds": round(statistics.median(values), 2),
            "docs_per_s": round(args.docs / statistics.median(values), 1),
        }
    for actors, name in ((1, "ray-1"), (2, "ray-2")):
        result[name]["ratio_vs_plain"] = round(result[name]["docs_per_s"] / result["plain"]["docs_per_s"], 3)
        # startup (actors, imports, model load, Ray Data) is fixed; the rest scales with the corpus
        busy = splits[name].pop("busy_s") / actors
        result[name]["fixed_overhead_s"] = round(result[name]["seconds"] - busy, 2)
        result[name]["steady_ratio_vs_plain"] = round(result["plain"]["seconds"] / busy, 3)
        total = sum(splits[name].values())
        result[name]["cost_split"] = {k: round(v / total, 3) for k, v in splits[name].items()}
        result[name]["ms_per_doc"] = {k: round(1000 * v / args.docs, 2) for k, v in splits[name].items()}
    shutil.rmtree(tmp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
