"""The laconic command: stage listing, exit codes, the last-line JSON convention."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from laconic_ray import cli

ALL = ["quickstart", "train", "mine", "encode", "index", "serve", "search", "eval", "plan", "export"]


def test_help_lists_every_stage():
    out = subprocess.run(
        [sys.executable, "-m", "laconic_ray", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ALL:
        assert name in out


@dataclasses.dataclass
class EchoConfig:
    value: int = 1
    output: str = ""


def echo_runner(config: EchoConfig) -> dict:
    if config.value < 0:
        raise RuntimeError("negative value")
    return {"value": config.value}


@pytest.fixture
def echo_stage(monkeypatch):
    stage = cli.Stage("echo", schema=f"{__name__}:EchoConfig", runner=f"{__name__}:echo_runner")
    monkeypatch.setitem(cli.STAGES, "export", stage)


def test_stage_prints_json_last(echo_stage, capsys):
    assert cli.main(["export", "value=7"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["value"] == 7 and "seconds" in summary


def test_exit_codes(echo_stage, capsys, tmp_path):
    assert cli.main(["export", "valeu=7"]) == 2
    assert "unknown key 'valeu' (did you mean 'value'?)" in capsys.readouterr().err
    assert cli.main(["export", "value=-1"]) == 1
    assert "negative value" in capsys.readouterr().err
    conf = tmp_path / "c.yaml"
    conf.write_text("value: 3\n")
    assert cli.main(["export", str(conf), "output=x"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["value"] == 3


def test_unbuilt_stage_says_so(monkeypatch, capsys):
    monkeypatch.setitem(cli.STAGES, "plan", cli.Stage("plan", issue="the curriculum issue"))
    assert cli.main(["plan"]) == 2
    assert "not built yet" in capsys.readouterr().err
