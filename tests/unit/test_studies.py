"""The study runner: a grid of stage runs that resumes, reports failures without losing finished cells, and
writes its tables and figures (stages replaced by recording stand-ins: the real ones run in
tests/integration/test_study.py)."""

from __future__ import annotations

import csv
import json

import pytest

from laconic_ray.config import ConfigError, StudyConfig, load_config
from laconic_ray.studies import run_study
from laconic_ray.studies.runner import cell_name, cells, stage_args


def study_args(tmp_path):
    return [
        "name=demo",
        f"output={tmp_path / 'study'}",
        "stages=[encode,index,eval]",
        "overrides.encode=['model=m','corpus=c','output={cell}/vectors']",
        "overrides.index=['input={cell}/vectors','output={cell}/index']",
        "overrides.eval=['index={cell}/index','model=m','dataset=scifact']",
        "grid={'encode.quantization,eval.quantization': [none, int8], 'index.quantization': [uint8, float32]}",
        "report=[eval.metrics.nDCG@10,eval.ms_per_query]",
        "pareto=[eval.ms_per_query,eval.metrics.nDCG@10]",
    ]


def study(tmp_path, **fields):
    return load_config(StudyConfig, None, [*study_args(tmp_path), *[f"{k}={v}" for k, v in fields.items()]])


class Recorder:
    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def runners(self):
        def encode(config):
            self.calls.append(("encode", config.quantization, config.output))
            return {"docs_per_s": 10.0}

        def index(config):
            self.calls.append(("index", config.quantization))
            return {"bytes_per_doc": {"uint8": 100, "float32": 400}[config.quantization]}

        def evaluate(config):
            self.calls.append(("eval", config.quantization, config.index))
            if self.fail_on and self.fail_on in config.index:
                raise RuntimeError("shard went away")
            quality = (
                0.6
                + (0.01 if "float32" in config.index else 0)
                - (0.002 if config.quantization == "int8" else 0)
            )
            return {
                "metrics": {"nDCG@10": quality},
                "ms_per_query": 5.0 if config.quantization == "int8" else 20.0,
            }

        return {"encode": encode, "index": index, "eval": evaluate}


def test_a_grid_runs_every_cell_once_and_resumes(tmp_path):
    config = study(tmp_path)
    assert [cell_name(p) for p in cells(config)] == [
        "encode-quantization=none,index-quantization=uint8", "encode-quantization=none,index-quantization=float32",
        "encode-quantization=int8,index-quantization=uint8", "encode-quantization=int8,index-quantization=float32",
    ]  # fmt: skip
    shared = stage_args(
        load_config(StudyConfig, None, [*study_args(tmp_path), "overrides.encode=['output=v/{index.quantization}']"]),
        "encode", cells(config)[1], "F",
    )  # fmt: skip
    assert shared == ["output=v/float32", "quantization=none"]
    recorder = Recorder()
    summary = run_study(config, recorder.runners())
    assert summary["done"] == 4 and not summary["failed"] and len(recorder.calls) == 12
    # the linked key set encode and eval alike; {cell} became the cell's folder
    encodes = [c for c in recorder.calls if c[0] == "encode"]
    assert [c[1] for c in encodes] == ["none", "none", "int8", "int8"]
    assert encodes[2][2] == str(
        tmp_path / "study" / "cells" / "encode-quantization=int8,index-quantization=uint8" / "vectors"
    )
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    assert len(rows) == 4 and rows[3]["eval.metrics.nDCG@10"] == str(0.6 + 0.01 - 0.002)
    report = (tmp_path / "study" / "report.md").read_text()
    assert "| encode.quantization,eval.quantization | index.quantization |" in report
    assert "![pareto](pareto.png)" in report and (tmp_path / "study" / "pareto.png").stat().st_size > 1000
    # again: nothing to do; one cell lost: only it runs
    again = Recorder()
    run_study(config, again.runners())
    assert again.calls == []
    (
        tmp_path / "study" / "cells" / "encode-quantization=none,index-quantization=float32" / "result.json"
    ).unlink()
    run_study(config, again.runners())
    assert [c[0] for c in again.calls] == ["encode", "index", "eval"]


def test_a_failed_cell_is_reported_and_the_others_still_run(tmp_path):
    config = study(tmp_path)
    first = run_study(config, Recorder(fail_on="int8,index-quantization=float32").runners())
    assert (
        first["done"] == 3
        and first["failed"][0]["cell"] == "encode-quantization=int8,index-quantization=float32"
    )
    assert (
        "Failed: `encode-quantization=int8,index-quantization=float32` in eval: RuntimeError: shard went away"
        in (tmp_path / "study" / "report.md").read_text()
    )
    fixed = Recorder()
    assert run_study(config, fixed.runners())["done"] == 4 and len(fixed.calls) == 3


def test_a_setup_error_stops_the_study_after_two_cells_fail_alike(tmp_path):
    recorder = Recorder(fail_on="cells")  # every cell's index path: an error the cells share
    with pytest.raises(
        RuntimeError, match=r"the first 2 cells failed alike in eval .*shard went away.*setup"
    ):
        run_study(study(tmp_path), recorder.runners())
    assert [c[0] for c in recorder.calls].count("eval") == 2


def test_training_cells_get_early_stability_numbers_and_a_figure(tmp_path):
    config = study(tmp_path, stability_steps=5)
    recorder = Recorder()
    runners = recorder.runners()
    plain_encode = runners["encode"]

    def encode_after_training(c):
        history = (
            tmp_path / "study" / "cells" / c.output.split("/cells/")[1].split("/")[0] / "train" / "phase1"
        )
        history.mkdir(parents=True, exist_ok=True)
        losses = [5.0, 4.0, 4.6, 3.0, 3.5, 2.0] if "int8" in c.output else [5.0, 4.0, 3.0, 2.5, 2.0, 1.0]
        (history / "history.jsonl").write_text(
            "".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses))
        )
        return plain_encode(c)

    runners["encode"] = encode_after_training
    run_study(config, runners)
    rows = {
        r["encode.quantization,eval.quantization"]: r
        for r in csv.DictReader((tmp_path / "study" / "results.csv").open())
    }
    # int8 cells: 4.6 > 1.1 x 4.0 and 3.5 > 1.1 x 3.0 within the first 5 logged steps
    assert rows["int8"]["early_loss_spikes"] == "2" and rows["none"]["early_loss_spikes"] == "0"
    assert (tmp_path / "study" / "early_loss.png").stat().st_size > 1000


def test_the_choice_is_made_on_the_select_metric_and_held_out_metrics_are_shown_once_apart(tmp_path):
    recorder = Recorder()
    runners = recorder.runners()
    plain_eval = runners["eval"]

    def evaluate_dev_and_test(c):  # dev prefers float32 impacts; test (held out) would prefer uint8
        out = plain_eval(c)
        float32 = "float32" in c.index
        return {**out, "dev": {"nDCG@10": 0.5 + 0.1 * float32}, "test": {"nDCG@10": 0.7 - 0.1 * float32}}

    runners["eval"] = evaluate_dev_and_test
    config = study(
        tmp_path, select="eval.dev.nDCG@10", final="[eval.test.nDCG@10]", report="[eval.ms_per_query]"
    )
    run_study(config, runners)
    report = (tmp_path / "study" / "report.md").read_text()
    main, held_out = report.split("## Held out (reported once)")
    assert "eval.test.nDCG@10" not in main and "| eval.dev.nDCG@10 |" in main
    assert (
        "Chosen on `eval.dev.nDCG@10`: **encode-quantization=none,index-quantization=float32** (0.6)" in main
    )
    assert "| encode-quantization=none,index-quantization=float32 (chosen) | 0.6 |" in held_out
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    assert [r["eval.test.nDCG@10"] for r in rows] == ["0.7", "0.6", "0.7", "0.6"]
    with pytest.raises(ConfigError, match="final: a held-out metric is not also reported or selected on"):
        study(tmp_path, select="eval.test.nDCG@10", final="[eval.test.nDCG@10]")


def test_a_study_config_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"grid: train\.steps: names a stage not in stages"):
        study(tmp_path, **{"grid": "{'train.steps': [1, 2]}"})
    with pytest.raises(ConfigError, match=r"stages: .*not stages a study can run"):
        study(tmp_path, stages="[encode,serve]")
    with pytest.raises(ConfigError, match="output: a study's folder is local"):
        study(tmp_path, output="s3://bucket/study")


def test_the_shipped_studies_are_valid_configs():
    from pathlib import Path

    import laconic_ray

    shipped = sorted((Path(laconic_ray.__file__).parent / "conf" / "studies").glob("*.yaml"))
    assert [p.stem for p in shipped] == ["csplade-ablation", "quantization"]
    for path in shipped:
        config = load_config(StudyConfig, str(path))
        assert config.name == path.stem and len(cells(config)) in (6, 9)
