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
import os
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
        "export vectors to Anserini JsonVectorCollection (+ topics) or Seismic format, or import them (format=parquet)",
        schema="laconic_ray.config:ExportConfig",
        runner="laconic_ray.eval.export:run_export",
    ),
    "study": Stage(
        "run a grid of stage runs (conf/studies/*.yaml), resumable, with report.md, results.csv and figures",
        schema="laconic_ray.config:StudyConfig",
        runner="laconic_ray.studies.runner:run_study",
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
    # the working directory (a checkout), else the configs shipped in the package (laconic_ray/conf)
    for base in (Path.cwd(), Path(__file__).parent):
        if (base / stage.default_conf).is_file():
            return str(base / stage.default_conf)
    return None


def _keys_help(stage: Stage) -> str:
    """The stage's keys, defaults and one-line docs (from its schema), for ``laconic <stage> --help``."""
    from laconic_ray.config import describe_schema

    rows = describe_schema(_import(stage.schema))
    width = max(len(k) for k, _, _ in rows)
    lines = [f"  {key:<{width}}  {default:<14} {doc}".rstrip() for key, default, doc in rows]
    conf = f"default config: {stage.default_conf}\n" if stage.default_conf else ""
    return f"{conf}keys (key=value overrides; defaults before the config file's):\n" + "\n".join(lines)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("laconic_ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(stage_help: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laconic",
        description="LACONIC / CSPLADE learned sparse retrieval on Ray. "
        "Each stage takes a YAML config and key=value overrides, and prints a JSON summary as its last line.",
        epilog="`laconic <stage> --help` lists the stage's keys with their defaults.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--version", action="version", version=f"laconic_ray {version()}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, stage in STAGES.items():
        p = sub.add_parser(
            name,
            help=stage.help + ("" if stage.built else " [not built yet]"),
            description=stage.help,
            epilog=_keys_help(stage) if stage_help == name and stage.built else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "args",
            nargs="*",
            metavar="CONF.yaml | key=value",
            help="a config file (optional when the stage has a default) then key=value overrides",
        )
        p.add_argument("--print-config", action="store_true", help="print the merged config as YAML and exit")
    return parser


# Third-party loggers that flood -v with their own debug output (pyjnius alone printed 46k lines)
QUIET_LOGGERS = (
    "jnius", "pyjnius", "urllib3", "botocore", "boto3", "s3fs", "fsspec", "aiobotocore", "asyncio",
    "matplotlib", "numba", "filelock", "PIL", "httpx", "httpcore", "hpack", "multipart", "h5py", "git",
    "huggingface_hub",
)  # fmt: skip


def configure_logging(verbose: bool = False) -> None:
    if not sys.stderr.isatty():  # the hub's and transformers' bars ("Loading weights") are noise in a log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when they are imported, later
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_stage(name: str, args: Sequence[str], runner: Callable[[Any], dict] | None = None) -> dict[str, Any]:
    """Load the stage's config and run it; return its summary (what the CLI prints as JSON)."""
    started = time.perf_counter()
    summary = (runner or _import(STAGES[name].runner))(stage_config(name, args))
    summary.setdefault("seconds", round(time.perf_counter() - started, 3))
    return summary


def stage_config(name: str, args: Sequence[str]) -> Any:
    stage = STAGES[name]
    path, overrides = _split_args(args)
    return load_config(_import(stage.schema), _shipped(path) if path else _default_conf(stage), overrides)


def _shipped(path: str) -> str:
    """A config path as given, or, when it names one of the shipped configs (``conf/serve.yaml``) and the
    working directory has no such file, the copy in the package: the README's commands work anywhere."""
    if Path(path).exists() or Path(path).is_absolute():
        return path
    shipped = Path(__file__).parent / path
    return str(shipped) if shipped.is_file() else path


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user must change something (a key, a path, a model, credentials): one line
    and exit code 2, the traceback only with -v."""
    from laconic_ray.data.beir import DataFormatError
    from laconic_ray.storage import StorageError

    errors: list[type[BaseException]] = [ConfigError, StorageError, DataFormatError, FileNotFoundError]
    for module, name in (
        ("laconic_ray.index.partition", "ModelMismatchError"),
        ("laconic_ray.distributed.serving", "ShardStartupError"),
        ("laconic_ray.distributed.resources", "ResourceError"),
        ("laconic_ray.model.encoder", "ModelUnavailable"),
        ("laconic_ray.model.encoder", "UnsupportedModel"),
        ("botocore.exceptions", "NoCredentialsError"),
        ("laconic_ray.data.lucene", "BM25Unavailable"),
        ("laconic_ray.data.lucene", "JavaNotFoundError"),
    ):
        loaded = sys.modules.get(module)  # only what the stage imported can have been raised
        if loaded is not None and hasattr(loaded, name):
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = next((a for a in argv if a in STAGES), None) if {"-h", "--help"} & set(argv) else None
    parser = build_parser(stage_help=wants_help)
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [a for a in unknown if a.startswith("-")]
        hint = ""
        if flags:  # `--dataset scifact` -> dataset=scifact
            key, _, value = flags[0].lstrip("-").replace("-", "_").partition("=")
            after = argv.index(flags[0]) + 1
            if not value and after < len(argv) and not argv[after].startswith("-"):
                value = argv[after]
            hint = f" (keys are given as key=value: {key}={value or '...'})"
        print(
            f"laconic {ns.stage}: unrecognized {' '.join(unknown)}{hint}; `laconic {ns.stage} --help` lists the keys",
            file=sys.stderr,
        )
        return 2
    configure_logging(ns.verbose)
    stage = STAGES[ns.stage]
    if not stage.built:
        print(f"laconic {ns.stage}: not built yet (arrives with {stage.issue})", file=sys.stderr)
        return 2
    if ns.print_config:
        from laconic_ray.config import to_yaml

        try:
            print(to_yaml(stage_config(ns.stage, ns.args)), end="")
        except ConfigError as e:
            print(f"laconic {ns.stage}: config error: {e}", file=sys.stderr)
            return 2
        return 0
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
        user = isinstance(e, user_errors())
        if ns.verbose:
            log.exception("laconic %s failed", ns.stage)
        message = " ".join(str(e).split())
        if user:
            print(f"laconic {ns.stage}: {message}", file=sys.stderr)
        else:
            more = "" if ns.verbose else " (-v shows the traceback)"
            print(f"laconic {ns.stage}: failed: {type(e).__name__}: {message}{more}", file=sys.stderr)
        return 2 if user else 1
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
