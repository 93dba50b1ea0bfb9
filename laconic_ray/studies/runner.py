"""``laconic study``: a grid of stage runs, one cell per combination of the grid's values.

Each cell runs the study's stages in order (``quickstart``, or ``train``/``encode``/``index``/``eval``...), each
as ``laconic <stage>`` would: the stage's default config, the study's overrides for it, then the cell's grid
values for it (``encode.quantization: [none, int8]`` gives ``quantization=int8`` to ``encode``; a key naming
several, ``encode.quantization,eval.quantization``, sets them together). ``{cell}`` in
an override is the cell's own folder, ``{<grid key>}`` the cell's value for that key (cells that share a
value can share an output: a finished ``encode`` output is not encoded again). A cell that finished wrote ``cells/<cell>/result.json`` and is skipped
when the study runs again, so a half-done grid resumes where it stopped; a failed cell is reported and the
others still run. Then ``results.json``, ``results.csv``, ``report.md`` and PNG figures (training-loss curves
with early-stability numbers when cells train, a quality/cost Pareto plot when ``pareto`` names two metrics).

Why a loop of our own stage calls and not Ray Tune: on a 2-core machine cells run one at a time anyway, each
stage already starts (or joins) its own Ray cluster and Ray Train run, and what a study needs beyond a loop
(skip finished cells, a report) is a few lines; Tune would wrap each cell in a trial actor around runs that
are themselves Ray jobs, and its search algorithms have nothing to search in a fixed grid.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from laconic_ray import storage
from laconic_ray.config import StudyConfig

log = logging.getLogger(__name__)

RESULT = "result.json"


def cells(config: StudyConfig) -> list[dict[str, Any]]:
    """The grid's combinations, in a stable order: ``{"stage.key": value, ...}`` each."""
    keys = list(config.grid)
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(config.grid[k] for k in keys))
    ]


def cell_name(params: dict[str, Any]) -> str:
    """``mode=echo,enabled=true``: each key's last part with its value (``stage-key`` where two keys share a
    last part: ``encode-quantization=int8,index-quantization=uint8``), safe as a folder name."""
    shorts = [key.split(",")[0].rsplit(".", 1)[-1] for key in params]
    names = [short if shorts.count(short) == 1 else key.split(",")[0].replace(".", "-")
             for short, key in zip(shorts, params, strict=True)]  # fmt: skip
    parts = [f"{name}={_value(value)}" for name, value in zip(names, params.values(), strict=True)]
    return re.sub(r"[^A-Za-z0-9=,._-]", "_", ",".join(parts)) or "default"


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def stage_args(config: StudyConfig, stage: str, params: dict[str, Any], folder: str) -> list[str]:
    overrides = []
    for override in config.overrides.get(stage, []):
        override = override.replace("{cell}", folder)
        for keys, value in params.items():  # "{encode.quantization}": the cell's value (shared outputs)
            override = override.replace("{" + keys + "}", str(value))
        overrides.append(override)
    for keys, value in params.items():
        for key in keys.split(","):  # "encode.quantization,eval.quantization": one value for both
            target, _, field = key.strip().partition(".")
            if target == stage:
                overrides.append(f"{field}={_value(value)}")
    return overrides


def run_study(config: StudyConfig, runners: dict[str, Callable[[Any], dict]] | None = None) -> dict[str, Any]:
    """Run every unfinished cell, then write the report. ``runners`` replaces stages' runners (tests)."""
    from laconic_ray.cli import run_stage

    root = Path(config.output)
    results, failed = [], []
    grid = cells(config)
    for number, params in enumerate(grid, start=1):
        name = cell_name(params)
        folder = root / "cells" / name
        done = folder / RESULT
        if done.is_file():
            log.info("study %s: cell %d/%d %s already done", config.name, number, len(grid), name)
            results.append(json.loads(done.read_text()))
            continue
        log.info("study %s: cell %d/%d %s", config.name, number, len(grid), name)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        summaries: dict[str, Any] = {}
        try:
            for stage in config.stages:
                runner = (runners or {}).get(stage)
                summaries[stage] = run_stage(stage, stage_args(config, stage, params, str(folder)), runner)
        except Exception as e:  # the cell is reported failed; the grid goes on
            log.error("study %s: cell %s failed in %s: %s", config.name, name, stage, e)
            failed.append({"cell": name, "stage": stage, "error": f"{type(e).__name__}: {e}"})
            alike = {
                (f["stage"], f["error"].replace(str(root / "cells" / f["cell"]), "{cell}")) for f in failed
            }
            if not results and len(failed) >= 2 and len(alike) == 1:  # not the cells: the setup
                raise RuntimeError(
                    f"study {config.name}: the first {len(failed)} cells failed alike in {stage} ({failed[-1]['error']}): "
                    "that is the study's setup, not its cells; fix it and run the study again"
                ) from e
            continue
        result = {"cell": name, "params": params, "stages": summaries,
                  "seconds": round(time.perf_counter() - started, 1), **stability(folder, config.stability_steps)}  # fmt: skip
        storage.write_bytes(str(done), json.dumps(result, indent=1, default=str).encode())
        results.append(result)
    report = write_report(config, results, failed)
    return {"study": config.name, "cells": len(grid), "done": len(results), "failed": failed, **report}


def metric(result: dict[str, Any], path: str) -> Any:
    """``eval.metrics.nDCG@10`` -> the value in the cell's stage summaries (None when absent)."""
    value: Any = result.get("stages", {})
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return result.get(path)  # top-level numbers (stability) by their own name
        value = value[part]
    return value


def stability(folder: Path, steps: int) -> dict[str, Any]:
    """Early-training stability of the cell's first trained phase (phase 1's history, else phase 0's): over
    the first ``steps`` logged steps, how many rose more than 10% above the running minimum of the loss, and
    the loss's coefficient of variation. None when the cell did not train."""
    for phase in ("phase1", "phase0"):
        histories = sorted(folder.rglob(f"{phase}/history.jsonl"))
        if histories:
            losses = [
                json.loads(line)["loss"] for line in histories[0].read_text().splitlines() if '"loss"' in line
            ]
            early = losses[:steps]
            if len(early) < 2:
                break
            running, spikes = early[0], 0
            for loss in early[1:]:
                spikes += loss > 1.1 * running
                running = min(running, loss)
            return {"loss_curve": losses, "early_loss_spikes": spikes,
                    "early_loss_cv": round(statistics.pstdev(early) / max(statistics.fmean(early), 1e-12), 4)}  # fmt: skip
    return {"loss_curve": None, "early_loss_spikes": None, "early_loss_cv": None}


def write_report(config: StudyConfig, results: list[dict], failed: list[dict]) -> dict[str, Any]:
    from laconic_ray.eval.plots import plot_pareto, plot_series

    root = Path(config.output)
    root.mkdir(parents=True, exist_ok=True)
    columns = [*config.grid, *([config.select] if config.select else []), *config.report,
               "early_loss_spikes", "early_loss_cv", "seconds"]  # fmt: skip
    rows = [{c: (r["params"].get(c) if c in config.grid else metric(r, c)) for c in columns} for r in results]
    empty = {c for c in ("early_loss_spikes", "early_loss_cv") if all(row[c] is None for row in rows)}
    columns = [c for c in columns if c not in empty]  # no training in the cells: no stability columns
    rows = [{c: row[c] for c in columns} for row in rows]
    (root / "results.json").write_text(json.dumps({"study": config.name, "cells": results, "failed": failed},
                                                  indent=1, default=str))  # fmt: skip
    buffer = io.StringIO()  # the data file keeps the held-out metrics too (the report shows them apart)
    writer = csv.DictWriter(buffer, fieldnames=[*columns, *config.final])
    writer.writeheader()
    writer.writerows(
        {**row, **{c: metric(r, c) for c in config.final}} for row, r in zip(rows, results, strict=True)
    )
    (root / "results.csv").write_text(buffer.getvalue())
    figures = []
    curves = {r["cell"]: list(enumerate(r["loss_curve"], start=1)) for r in results if r.get("loss_curve")}
    if curves:
        limit = max(config.stability_steps, 1)
        early = {name: points[:limit] for name, points in curves.items()}
        figures.append(plot_series(early, str(root / "early_loss.png"), "logged step", "loss",
                                   f"{config.name}: loss over the first {limit} logged steps"))  # fmt: skip
    if len(config.pareto) == 2:
        x_key, y_key = config.pareto
        points = {"/".join(_value(v) for v in r["params"].values()): (metric(r, x_key), metric(r, y_key))
                  for r in results}  # fmt: skip
        points = {k: v for k, v in points.items() if None not in v}
        if points:
            figures.append(plot_pareto(points, str(root / "pareto.png"), x_key, y_key, config.name))
    lines = [f"# Study: {config.name}", "", config.description.strip(), "",
             f"`laconic study conf/studies/{config.name}.yaml`: {len(results)} cells done, {len(failed)} failed.", ""]  # fmt: skip
    lines += _table(columns, rows)
    chosen = select(config, results)
    if chosen is not None:
        lines += [
            "",
            f"Chosen on `{config.select}`: **{chosen['cell']}** ({_cell(metric(chosen, config.select))}).",
        ]
    if config.final:
        # reported once, after the choice, and never used for it
        lines += ["", "## Held out (reported once)", ""]
        final_columns = ["cell", *config.final]
        final_rows = [{"cell": r["cell"] + (" (chosen)" if r is chosen else ""),
                       **{c: metric(r, c) for c in config.final}} for r in results]  # fmt: skip
        lines += _table(final_columns, final_rows)
    for f in failed:
        lines.append(f"\nFailed: `{f['cell']}` in {f['stage']}: {f['error']}")
    lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return {"report": str(root / "report.md"), "figures": figures}


def select(config: StudyConfig, results: list[dict]) -> dict | None:
    """The cell with the highest ``select`` metric (first in grid order on ties), None without one."""
    scored = (
        [r for r in results if isinstance(metric(r, config.select), int | float)] if config.select else []
    )
    return max(scored, key=lambda r: metric(r, config.select)) if scored else None


def _table(columns: list[str], rows: list[dict]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]]  # fmt: skip


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
