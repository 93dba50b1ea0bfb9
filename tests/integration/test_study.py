"""`laconic study` for real: the shipped ablation config on two cells of a shortened quickstart (a few steps
each), from a user's directory, then run again: the finished grid is not rerun."""

from __future__ import annotations

import csv

from tests.integration.test_quickstart import SHORT, laconic, user  # noqa: F401 (the fixture)


def test_a_two_cell_ablation_study_runs_reports_and_resumes(user):  # noqa: F811
    home, env = user
    args = [
        "study",
        "conf/studies/csplade-ablation.yaml",
        "output=runs/study",
        # two cells of the shipped grid, the quickstart shortened to a few steps per phase
        "grid={'quickstart.train.model.mode': [bidirectional], 'quickstart.train.phase0.enabled': [false, true]}",
        "overrides.quickstart=["
        + ",".join(
            f"'{o}'"
            for o in [
                "output={cell}",
                "http=false",
                "baselines=false",
                "train.log_every=1",
                *SHORT,
                "train.phase0.steps=2",
                "train.phase0.queries_per_step=8",
                "train.phase0.micro_batch_queries=8",
                "train.phase0.passage_max_length=48",
            ]
        )
        + "]",
        "stability_steps=4",
    ]
    summary = laconic(home, env, *args, timeout=1200)
    assert summary["done"] == 2 and not summary["failed"]
    rows = list(csv.DictReader((home / "runs" / "study" / "results.csv").open()))
    assert [r["quickstart.train.phase0.enabled"] for r in rows] == ["False", "True"]
    assert all(0 <= float(r["quickstart.ndcg10.phase2"]) <= 1 for r in rows)
    assert all(r["early_loss_spikes"] != "" for r in rows)  # phase 1 trained in both cells
    report = (home / "runs" / "study" / "report.md").read_text()
    assert "# Study: csplade-ablation" in report and (home / "runs" / "study" / "early_loss.png").is_file()
    again = laconic(home, env, *args, timeout=300)
    assert again["done"] == 2 and again["seconds"] < 60  # nothing rerun
