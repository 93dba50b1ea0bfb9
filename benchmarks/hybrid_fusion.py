"""Choose the hybrid fusion on a dev split, then report it once on test (issue 27).

    .venv/bin/python benchmarks/hybrid_fusion.py --run runs/adapt-cacm --collection cacm --dev-from test

``--run`` is a quickstart output (its index and final model); the dev split is the run's own
(``<run>/data/dev-split/<name>``, when it was made with ``dev_every``), else one carved here with the same
rule (every 5th judged query by id, from ``--dev-from``). RRF and normalised interpolation at each
``--weights`` are scored on dev; the best is applied to test (the other 4 in 5 when dev came from test) and
printed once, with BM25 and the learned run alone on the same queries. Everything runs through
``laconic eval retriever=hybrid`` (``hybrid.depth`` = ``--depth``, the service's default of 100).
"""

from __future__ import annotations

import argparse
import json
import os

from laconic_ray.config import EvalConfig, load_config
from laconic_ray.eval.evaluate import run_eval
from laconic_ray.quickstart import carve_dev

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a quickstart output folder")
    parser.add_argument("--collection", required=True, help="its collection's name under $LACONIC_DATA")
    parser.add_argument("--dev-from", default="test", choices=["train", "test"])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--model", default="", help="default: the run's final model")
    args = parser.parse_args()
    with open(os.path.join(args.run, "summary.json")) as f:
        summary = json.load(f)
    model = args.model or summary["model"]
    root = os.path.join(args.run, "data", "dev-split", args.collection)
    if not os.path.isdir(root):
        data = os.environ.get("LACONIC_DATA", os.path.join(HERE, "..", "..", "shared", "datasets"))
        root = carve_dev(
            os.path.join(data, args.collection),
            os.path.join(args.run, "data", "fusion-dev", args.collection),
            5,
            args.dev_from,
        )

    def evaluate(split: str, *extra: str) -> dict:
        config = load_config(EvalConfig, os.path.join(HERE, "..", "conf", "eval.yaml"), [
            f"dataset={root}", f"split={split}", f"index={summary['index']}", f"model={model}",
            "retriever=hybrid", "k=100", f"hybrid.depth={args.depth}", *extra,
        ])  # fmt: skip
        return run_eval(config)

    choices = [("hybrid.fusion=rrf",)] + [
        ("hybrid.fusion=interpolation", f"hybrid.weight={w}") for w in args.weights
    ]
    dev = {" ".join(c): round(evaluate("dev", *c)["metrics"]["nDCG@10"], 4) for c in choices}
    chosen = max(dev, key=lambda c: dev[c])
    test = evaluate("test", *chosen.split())
    print(json.dumps({
        "collection": args.collection, "model": model, "dev_nDCG@10": dev, "chosen": chosen,
        "test_queries": test["queries"], "test_hybrid": {k: round(v, 4) for k, v in test["metrics"].items()},
        "test_components": test["components"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
