"""Progress lines (laconic_ray/progress.py): rate and ETA in a log when stderr is no terminal."""

from __future__ import annotations

import logging

from laconic_ray.progress import Progress


def test_progress_logs_rate_and_eta_without_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="laconic_ray.progress")
    with Progress(total=4, what="shards", desc="encode", every_s=0.0, bar=False) as progress:
        progress.update(1, docs=10)
        progress.update(3, docs=30)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("encode: 1/4 shards (25%)") and "ETA" in lines[0] and "10 docs" in lines[0]
    assert lines[-1].startswith("encode: 4/4 shards (100%)") and "ETA 0:00:00" in lines[-1]


def test_an_unknown_total_has_no_eta():
    progress = Progress(total=None, what="queries", desc="bm25", bar=False)
    progress.update(5)
    assert "5 queries" in progress.line() and "ETA" not in progress.line()
