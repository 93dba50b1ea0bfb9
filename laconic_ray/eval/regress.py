"""``laconic regress``: a reproduction matrix in YAML, run condition by condition and judged OK / OKish / FAIL.

In the spirit of Pyserini's regressions: each condition is a command with its expected metrics; the
comparator tolerates small numeric drift (``ok``), flags moderate drift (``okish``) and fails the rest. The
command exits 1 when any condition fails, so CI can run a matrix.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from laconic_ray import storage
from laconic_ray.config import Condition, RegressConfig

log = logging.getLogger(__name__)
VERDICTS = ("OK", "OKish", "FAIL")


def classify(expected: float, actual: float | None, ok: float, okish: float, at_least: bool = False) -> str:
    """OK within ``ok`` of the expected value, OKish within ``okish``, FAIL otherwise (or when missing).
    With ``at_least``, any value at or above the expectation is OK."""
    if actual is None:
        return "FAIL"
    delta = expected - actual if at_least else abs(actual - expected)
    if delta <= ok + 1e-12:
        return "OK"
    if delta <= okish + 1e-12:
        return "OKish"
    return "FAIL"


def judge(condition: Condition, metrics: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {
            "condition": condition.name,
            "metric": name,
            "expected": expected,
            "actual": metrics.get(name),
            "verdict": classify(
                expected, metrics.get(name), condition.ok, condition.okish, condition.at_least
            ),
        }
        for name, expected in condition.expected.items()
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| condition | metric | expected | actual | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        actual = "missing" if r["actual"] is None else f"{r['actual']:.4f}"
        lines.append(
            f"| {r['condition']} | {r['metric']} | {r['expected']:.4f} | {actual} | {r['verdict']} |"
        )
    return "\n".join(lines)


def run_regress(config: RegressConfig) -> dict[str, Any]:
    from laconic_ray.cli import run_stage

    rows: list[dict[str, Any]] = []
    for condition in config.conditions:
        if config.only and condition.name not in config.only:
            continue
        started = time.perf_counter()
        try:
            summary = run_stage(condition.stage, [condition.config, *condition.overrides])
            metrics = summary.get("metrics", {})
        except Exception as e:  # a condition that crashes is a FAIL, not the end of the matrix
            log.exception("condition %s failed to run", condition.name)
            metrics = {}
            rows.append(
                {
                    "condition": condition.name,
                    "metric": "(run)",
                    "expected": 0.0,
                    "actual": None,
                    "verdict": "FAIL",
                    "error": f"{type(e).__name__}: {e}",
                }
            )
        rows += judge(condition, metrics)
        log.info("%s: %s in %.1f s", condition.name, metrics, time.perf_counter() - started)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    table = markdown(rows)
    log.info("regressions:\n%s", table)
    if config.output:
        storage.write_bytes(
            storage.join(config.output, "regressions.json"), json.dumps(rows, indent=1).encode()
        )
        storage.write_bytes(storage.join(config.output, "regressions.md"), (table + "\n").encode())
    return {"results": rows, **counts, "exit_code": 1 if counts["FAIL"] else 0}
