"""``laconic quickstart``: run every built stage end to end on an embedded default.

Until every stage has landed this runs what exists (reading and checking the collection) and names what is
still missing, so that the README's main command always works and always tells the truth.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from laconic_ray import storage
from laconic_ray.config import QuickstartConfig
from laconic_ray.data.beir import BeirDataset

log = logging.getLogger(__name__)

PIPELINE = ("train", "mine", "encode", "index", "serve", "eval")


def run_quickstart(config: QuickstartConfig) -> dict[str, Any]:
    from laconic_ray.cli import STAGES  # the CLI's registry says which stages exist

    options = config.storage.options()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    dataset = BeirDataset(config.dataset, options=options, data_root_dir=config.data_root)
    counts = {
        "documents": sum(1 for _ in dataset.corpus()),
        "queries": sum(1 for _ in dataset.queries()),
        **{
            f"qrels_{split}": sum(len(v) for v in dataset.qrels(split).values()) for split in dataset.splits()
        },
    }
    timings["read_dataset"] = round(time.perf_counter() - started, 3)
    log.info("dataset %s: %s", dataset.root, counts)
    storage.makedirs(config.output, options)
    storage.write_bytes(
        storage.join(config.output, "dataset.json"),
        json.dumps({"root": dataset.root, **counts}, indent=1).encode(),
        options,
    )
    missing = [name for name in PIPELINE if not STAGES[name].built]
    if missing:
        log.warning("stages not built yet, skipped: %s", ", ".join(missing))
    return {
        "dataset": dataset.root,
        "counts": counts,
        "missing_stages": missing,
        "timings": timings,
        "output": config.output,
    }
