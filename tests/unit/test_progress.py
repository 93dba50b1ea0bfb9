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


def test_an_encoder_reports_inside_a_long_shard(tmp_path, capsys, monkeypatch):
    """The driver's progress moves per finished shard; a one-shard corpus (SciFact at the default shard size)
    was silent until the end. The encoder now writes a line every SHARD_PROGRESS_S within its shard, on stderr
    (which Ray forwards to the driver and the job's log), and leaves the completion line to the driver."""
    from laconic_ray import encoding
    from tests.models import tiny_encoder

    tiny_encoder().save_pretrained(str(tmp_path / "model"))
    monkeypatch.setattr(encoding, "SHARD_PROGRESS_S", 0.0)
    worker = encoding.ShardEncoder(
        encoding.EncodeSettings(model=str(tmp_path / "model"), output=str(tmp_path / "out"), batch_size=8)
    )
    texts = [f"document number {i} about sodium channels" for i in range(20)]
    record = worker.encode_shard(3, [f"d{i}" for i in range(20)], texts, 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("encode shard 3:")]
    assert record["entry"]["rows"] == 20
    assert [line.split(",")[0] for line in lines] == [
        "encode shard 3: 8/20 docs (40%)",
        "encode shard 3: 16/20 docs (80%)",
    ]
    assert all("ETA" in line for line in lines)
