"""The ``laconic`` command: ``laconic <stage> [CONF.yaml] [key=value ...]``.

Every stage reads a YAML config plus dotlist overrides, logs progress to stderr, and prints one last line of
JSON on stdout with its key figures (counts, timings, metrics, output URIs) so that scripts and CI can read
results. Exit codes: 0 done, 1 the stage failed, 2 bad usage or config (or a stage not built yet).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from laconic_ray.config import ConfigError, load_config

log = logging.getLogger("laconic_ray")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A CLI stage: its schema and runner are ``module:attr`` strings, imported only when the stage runs so
    that ``laconic --help`` stays fast and light."""

    help: str
    schema: str | None = None  # "laconic_ray.config:EncodeConfig"
    runner: str | None = None  # "laconic_ray.distributed.encode:run_encode"; run(config) -> dict
    default_conf: str | None = None
    issue: str = ""

    @property
    def built(self) -> bool:
        return self.schema is not None and self.runner is not None


STAGES: dict[str, Stage] = {
    "quickstart": Stage(
        "run every stage end to end on SciFact with a tiny model (local Ray, local storage)",
        schema="laconic_ray.config:QuickstartConfig",
        runner="laconic_ray.quickstart:run_quickstart",
        default_conf="conf/quickstart.yaml",
    ),
    "train": Stage(
        "two-phase curriculum on Ray Train (phase 0/1/2, FSDP, resume)",
        schema="laconic_ray.config:TrainConfig",
        runner="laconic_ray.distributed.train:run_train",
        default_conf="conf/train/tiny.yaml",
    ),
    "mine": Stage(
        "weak pairs (phase 1) and hard negatives (phase 2) as training examples",
        schema="laconic_ray.config:MineConfig",
        runner="laconic_ray.data.mining:run_mine",
        default_conf="conf/mine.yaml",
    ),
    "encode": Stage(
        "encode a corpus or queries with Ray Data into sparse Parquet shards",
        schema="laconic_ray.config:EncodeConfig",
        runner="laconic_ray.distributed.encode:run_encode",
        default_conf="conf/encode.yaml",
    ),
    "index": Stage(
        "build partitioned inverted-index shards on CPU Ray tasks",
        schema="laconic_ray.config:IndexConfig",
        runner="laconic_ray.distributed.index:run_index",
        default_conf="conf/index.yaml",
    ),
    "serve": Stage(
        "serve index shards behind a scatter-gather router (Python + HTTP)",
        schema="laconic_ray.config:ServeConfig",
        runner="laconic_ray.distributed.service:run_serve",
        default_conf="conf/serve.yaml",
    ),
    "search": Stage(
        "query a running service, or shard actors started on the spot",
        schema="laconic_ray.config:ServeConfig",
        runner="laconic_ray.distributed.service:run_search",
        default_conf="conf/serve.yaml",
    ),
    "eval": Stage(
        "nDCG@10 / Recall@100 / MRR@10 of a run against qrels; BM25 reference",
        schema="laconic_ray.config:EvalConfig",
        runner="laconic_ray.eval.evaluate:run_eval",
        default_conf="conf/eval.yaml",
    ),
    "plan": Stage(
        "per-GPU memory plan of a training config (FSDP, activations)",
        schema="laconic_ray.config:PlanConfig",
        runner="laconic_ray.training.plan:run_plan",
        default_conf="conf/train/llama3-8b.yaml",
    ),
    "export": Stage(
        "export vectors to Anserini JsonVectorCollection or Seismic format",
        schema="laconic_ray.config:ExportConfig",
        runner="laconic_ray.eval.export:run_export",
    ),
    "regress": Stage(
        "run a regression matrix (conf/regressions/*.yaml) and judge it OK / OKish / FAIL",
        schema="laconic_ray.config:RegressConfig",
        runner="laconic_ray.eval.regress:run_regress",
        default_conf="conf/regressions/scifact.yaml",
    ),
}


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The first argument is the config file unless it looks like an override."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _default_conf(stage: Stage) -> str | None:
    """A stage's default YAML, found from the working directory or the source checkout; else schema defaults."""
    if stage.default_conf is None:
        return None
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / stage.default_conf).is_file():
            return str(base / stage.default_conf)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laconic",
        description="LACONIC / CSPLADE learned sparse retrieval on Ray. "
        "Each stage takes a YAML config and key=value overrides, and prints a JSON summary as its last line.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, stage in STAGES.items():
        p = sub.add_parser(
            name, help=stage.help + ("" if stage.built else " [not built yet]"), description=stage.help
        )
        p.add_argument(
            "args",
            nargs="*",
            metavar="CONF.yaml | key=value",
            help="a config file (optional when the stage has a default) then key=value overrides",
        )
    return parser


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_stage(name: str, args: Sequence[str], runner: Callable[[Any], dict] | None = None) -> dict[str, Any]:
    """Load the stage's config and run it; return its summary (what the CLI prints as JSON)."""
    stage = STAGES[name]
    path, overrides = _split_args(args)
    config = load_config(_import(stage.schema), path or _default_conf(stage), overrides)
    started = time.perf_counter()
    summary = (runner or _import(stage.runner))(config)
    summary.setdefault("seconds", round(time.perf_counter() - started, 3))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    configure_logging(ns.verbose)
    stage = STAGES[ns.stage]
    if not stage.built:
        print(f"laconic {ns.stage}: not built yet (arrives with {stage.issue})", file=sys.stderr)
        return 2
    ray_was_up = _ray_running()
    try:
        summary = run_stage(ns.stage, ns.args)
    except ConfigError as e:
        print(f"laconic {ns.stage}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"laconic {ns.stage}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        log.exception("laconic %s failed", ns.stage)
        print(f"laconic {ns.stage}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if _ray_running() and not ray_was_up:  # a cluster this command started: stop it, without hanging
            from laconic_ray.distributed.cluster import shutdown_ray

            shutdown_ray()
    print(json.dumps(summary, default=str))
    return int(summary.get("exit_code", 0))


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to ask
    return ray is not None and ray.is_initialized()


if __name__ == "__main__":
    raise SystemExit(main())
