"""Choose the hybrid fusion on judged queries it is not reported on, then report it once (issue 27).

    .venv/bin/python benchmarks/hybrid_fusion.py --run runs/adapt-cacm --collection cacm --dev-from test
    .venv/bin/python benchmarks/hybrid_fusion.py --run runs/adapt-cacm --collection cacm --folds 5

``--run`` is a quickstart output (its index and final model). Two protocols over the same candidates, RRF and
min-max interpolation at each ``--weights`` (the learned run's share), ``hybrid.depth`` = ``--depth`` (the
service's default, 100):

* dev split (default): the run's own dev split (``<run>/data/dev-split/<name>``, when it was made with
  ``dev_every``), else one carved here with the same rule (every 5th judged query by id, from ``--dev-from``);
  the best on dev is applied once to test (the other 4 in 5 when dev came from test).
* ``--folds K``: K-fold cross-validation over the test queries (``eval.fusion.cross_validate``: each fold
  scored with the choice best on the other folds), for collections whose dev split is too small to choose
  anything (CACM: 10 queries). When the run has a dev split it stays out (the run's recipe was chosen on it).

The learned and BM25 runs are retrieved once per split through ``laconic eval`` (k=100) and fused here with the
code ``retriever=hybrid`` uses (``eval.fusion.fuse_runs``); BM25 and the learned run alone are printed on the
same queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

from laconic_ray.config import EvalConfig, HybridConfig, load_config
from laconic_ray.data.beir import BeirDataset
from laconic_ray.eval.evaluate import run_eval
from laconic_ray.eval.fusion import cross_validate, fuse_runs
from laconic_ray.eval.metrics import compare, evaluate
from laconic_ray.eval.runs import read_run
from laconic_ray.quickstart import carve_dev

HERE = os.path.dirname(os.path.abspath(__file__))
MEASURE = "nDCG@10"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a quickstart output folder")
    parser.add_argument("--collection", required=True, help="its collection's name under $LACONIC_DATA")
    parser.add_argument("--dev-from", default="test", choices=["train", "test"])
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation on test instead of dev")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--model", default="", help="default: the run's final model")
    args = parser.parse_args()
    if args.folds == 1 or args.folds < 0:  # before minutes of retrieval, not after
        parser.error(f"--folds: 0 (dev split) or at least 2, got {args.folds}")
    with open(os.path.join(args.run, "summary.json")) as f:
        summary = json.load(f)
    model = args.model or summary["model"]
    data = os.environ.get("LACONIC_DATA", os.path.join(HERE, "..", "..", "shared", "datasets"))
    root = os.path.join(args.run, "data", "dev-split", args.collection)
    if not os.path.isdir(root):
        root = os.path.join(data, args.collection)
        if not args.folds:
            target = os.path.join(args.run, "data", "fusion-dev", args.collection)
            root = carve_dev(root, target, 5, args.dev_from)
    choices = {"rrf": HybridConfig(fusion="rrf", depth=args.depth)} | {
        f"interpolation {w}": HybridConfig(fusion="interpolation", weight=w, depth=args.depth)
        for w in args.weights
    }
    scratch = tempfile.mkdtemp(prefix="hybrid-fusion-")

    def scores(split: str) -> dict:
        """{choice or component: {qid: nDCG@10}} over the split's judged queries."""
        runs = {}
        for retriever in ("laconic", "bm25"):
            output = os.path.join(scratch, split, retriever)
            config = load_config(EvalConfig, os.path.join(HERE, "..", "conf", "eval.yaml"), [
                f"dataset={root}", f"split={split}", f"index={summary['index']}", f"model={model}",
                f"retriever={retriever}", "k=100", f"output={output}",
            ])  # fmt: skip
            run_eval(config)
            runs[retriever] = read_run(os.path.join(output, "run.trec"))
        qrels = BeirDataset(root).qrels(split)
        fused = {name: fuse_runs(runs["laconic"], runs["bm25"], c, 100) for name, c in choices.items()}
        return {
            name: {q: m[MEASURE] for q, m in evaluate(run, qrels, [MEASURE])[1].items()}
            for name, run in (fused | {"bm25": runs["bm25"], "learned": runs["laconic"]}).items()
        }

    def mean(values: dict) -> float:
        return round(sum(values.values()) / len(values), 4)

    test = scores("test")
    result = {"collection": args.collection, "model": model, "test_queries": len(test["bm25"])}
    if args.folds:
        cv = cross_validate({name: test[name] for name in choices}, args.folds)
        hybrid = cv["per_query"]
        result |= {"protocol": f"{args.folds}-fold cross-validation on test", "folds": cv["folds"]}
    else:
        dev = {name: mean(values) for name, values in scores("dev").items() if name in choices}
        chosen = max(dev, key=lambda name: dev[name])
        hybrid = test[chosen]
        result |= {"protocol": "dev split", "dev": dev, "chosen": chosen,
                   "fusion": dataclasses.asdict(choices[chosen])}  # fmt: skip
    paired = compare(*({q: {MEASURE: v} for q, v in run.items()} for run in (hybrid, test["bm25"])), MEASURE)
    result |= {"hybrid": mean(hybrid), "bm25": mean(test["bm25"]), "learned": mean(test["learned"]),
               "hybrid_vs_bm25": {k: v for k, v in paired.items() if k != "per_query_delta"}}  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
