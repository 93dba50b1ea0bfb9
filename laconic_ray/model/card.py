"""The README model card a saved encoder carries: what it is, how it encodes, how it was made, how it scored.

Rendered from ``laconic.json`` (its settings, its ``training`` phases and ``evaluations``), so the card never
says something the checkpoint does not: rewriting it is always safe, and the hub shows it as the repo's page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def render(laconic: dict[str, Any]) -> str:
    """The card for a ``laconic.json`` (as a dict; its ``base_model``: the hub id it descends from, if any)."""
    base_model = laconic.get("base_model")
    masked = laconic.get("backbone") == "masked"
    tags = ["learned-sparse-retrieval", "sparse-encoder", "splade" if masked else "laconic", "laconic_ray"]
    front = ["---", "library_name: laconic_ray", "pipeline_tag: feature-extraction", "tags:"]
    front += [f"- {t}" for t in tags]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    kind = (
        "a masked-LM SPLADE model"
        if masked
        else "a causal LM made a learned sparse encoder (LACONIC / CSPLADE)"
    )
    lines = [
        *front,
        "",
        "# Learned sparse encoder",
        "",
        f"{kind.capitalize()}: each text becomes one weight per vocabulary id, max-pooled over its tokens "
        f"({laconic.get('activation', 'log1p_relu')}), {laconic.get('vocab_size', '?')} ids "
        f"({laconic.get('model_type', '?')}). Saved by laconic_ray; `model_id` {laconic.get('model_id', '?')}.",
        "",
        "```python",
        "from laconic_ray.model import SparseEncoder",
        "",
        'model = SparseEncoder.from_pretrained("<this folder or repo>")',
        'queries = model.encode_query(["what causes rainbows"])',
        "```",
        "",
        "## Encoder settings (laconic.json)",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("mode", "query_prefix", "passage_prefix", "special_tokens", "query_max_length",
                "passage_max_length", "top_k", "pooling", "activation", "logit_bias", "term_weights"):  # fmt: skip
        if key in laconic:
            lines.append(f"| {key} | `{json.dumps(laconic[key])}` |")
    training = laconic.get("training") or []
    if training:
        lines += ["", "## Training", "", "| phase | from | data | steps | LoRA |", "|---|---|---|---|---|"]
        for phase in training:
            lines.append(
                f"| {phase.get('phase', '?')} | {phase.get('init', '?')} | {phase.get('data', '?')} | "
                f"{phase.get('steps', '?')} | {phase.get('lora') or 'none'} |"
            )
    evaluations = laconic.get("evaluations") or []
    if evaluations:
        lines += ["", "## Evaluation", "", "| collection | split | metric | value |", "|---|---|---|---|"]
        for ev in evaluations:
            for metric, value in ev.get("metrics", {}).items():
                lines.append(f"| {ev.get('dataset', '?')} | {ev.get('split', '?')} | {metric} | {value} |")
    return "\n".join(lines) + "\n"


def write(folder: str | Path) -> None:
    """(Re)write ``folder``'s card from its ``laconic.json``."""
    folder = Path(folder)
    (folder / CARD_FILE).write_text(render(json.loads((folder / "laconic.json").read_text())))


def record_evaluation(folder: str | Path, dataset: str, split: str, metrics: dict[str, float]) -> None:
    """Add (or replace) an evaluation in a local checkpoint's ``laconic.json`` and its card."""
    folder = Path(folder)
    path = folder / "laconic.json"
    laconic = json.loads(path.read_text())
    kept = [
        e for e in laconic.get("evaluations", []) if (e.get("dataset"), e.get("split")) != (dataset, split)
    ]
    laconic["evaluations"] = [*kept, {"dataset": dataset, "split": split, "metrics": metrics}]
    path.write_text(json.dumps(laconic, indent=1))
    write(folder)
