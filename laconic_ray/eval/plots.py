"""PNG plots where a picture reads faster than a table: per-query deltas against a baseline, the latency-
recall curve of the engine benchmark, and training curves. matplotlib with the non-interactive Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_deltas(deltas: Mapping[str, float], measure: str, path: str, title: str = "") -> str:
    """Sorted per-query differences (run - baseline): wins above zero, losses below."""
    plt = _pyplot()
    values = sorted(deltas.values(), reverse=True)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    colors = ["#2a9d8f" if v > 0 else "#e76f51" if v < 0 else "#adb5bd" for v in values]
    ax.bar(range(len(values)), values, color=colors, width=1.0)
    ax.axhline(0, color="black", linewidth=0.6)
    wins, losses = sum(v > 0 for v in values), sum(v < 0 for v in values)
    ax.set_title(title or f"per-query {measure} difference")
    ax.set_xlabel(f"queries, sorted ({wins} better, {losses} worse, {len(values) - wins - losses} equal)")
    ax.set_ylabel(f"delta {measure}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_recall(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> str:
    """Median single-thread latency against recall@10, one line per engine (from benchmarks/engines.py)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    engines: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        if "error" in row:
            continue
        engines.setdefault(row["engine"], []).append(
            (row["recall10_float"], row["latency_ms_median"], row["label"])
        )
    for engine, points in sorted(engines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact float scoring")
    ax.set_ylabel("median latency, one thread (ms, log)")
    ax.set_title(title or "latency vs recall")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_series(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
) -> str:
    """Lines of (x, y) points: loss curves, nnz over training."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(values: Mapping[str, float], path: str, ylabel: str, title: str = "") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color="#457b9d")
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(
            f"{values[name]:.3f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pareto(
    points: Mapping[str, tuple[float, float]], path: str, xlabel: str, ylabel: str, title: str = ""
) -> str:
    """One labelled point per configuration (x: a cost such as latency, y: a quality), the Pareto front
    (no other point both cheaper and better) joined by a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ordered = sorted(points.items(), key=lambda item: (item[1][0], -item[1][1]))
    front, best = [], float("-inf")
    for _, (x, y) in ordered:
        if y > best:
            front.append((x, y))
            best = y
    ax.plot([p[0] for p in front], [p[1] for p in front], color="#adb5bd", zorder=1)
    for label, (x, y) in ordered:
        ax.scatter([x], [y], zorder=2)
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
