"""`laconic study` for real, from a user's directory: CSPLADE's ablation grid cut to two cells that train 5
steps each (phase 1 of the tiny preset, echo vs bidirectional), reported with early-stability numbers, then
run again: the finished grid is not rerun. (The shipped configs are checked in tests/unit/test_studies.py;
a full ablation cell is a whole quickstart.)"""

from __future__ import annotations

import csv

from tests.integration.test_quickstart import laconic, user  # noqa: F401 (the fixture)


def test_a_two_cell_ablation_study_trains_reports_and_resumes(user):  # noqa: F811
    home, env = user
    laconic(
        home, env, "mine", "conf/mine.yaml", "dataset=scifact", "output=data/weak", "phase=1", "max_pairs=256"
    )
    train = ["conf/train/tiny.yaml", "output={cell}", "phase=1", "phase1.data=data/weak", "phase1.steps=5",
             "phase1.micro_batch_queries=8", "phase1.queries_per_step=16", "phase1.passage_max_length=48",
             "log_every=1", "checkpoint_every=5"]  # fmt: skip
    args = [
        "study",
        "name=csplade-ablation-smoke",
        "output=runs/study",
        "stages=[train]",
        "overrides.train=[" + ",".join(f"'{a}'" for a in train) + "]",
        "grid={'train.model.mode': [echo, bidirectional]}",
        "report=[]",
        "stability_steps=5",
    ]
    summary = laconic(home, env, *args, timeout=900)
    assert summary["done"] == 2 and not summary["failed"]
    rows = list(csv.DictReader((home / "runs" / "study" / "results.csv").open()))
    assert [r["train.model.mode"] for r in rows] == ["echo", "bidirectional"]
    assert all(r["early_loss_spikes"] != "" and float(r["early_loss_cv"]) >= 0 for r in rows)  # 5 steps each
    report = (home / "runs" / "study" / "report.md").read_text()
    assert (
        "# Study: csplade-ablation-smoke" in report and (home / "runs" / "study" / "early_loss.png").is_file()
    )
    again = laconic(home, env, *args, timeout=300)
    assert again["done"] == 2 and again["seconds"] < 30  # nothing rerun
