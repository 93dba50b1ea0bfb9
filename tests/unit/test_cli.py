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


def laconic(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "laconic_ray", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_stage_help_lists_keys_with_defaults_and_docs():
    out = laconic("encode", "--help").stdout
    assert "num_actors" in out and "encoder actors (each loads the model once)" in out
    assert "storage.endpoint_url" in out  # nested keys, dotted
    assert laconic("--version").stdout.startswith("laconic_ray ")


def test_print_config_shows_the_merged_config(tmp_path):
    result = laconic("index", "input=vecs", "output=out", "num_shards=3", "--print-config", cwd=tmp_path)
    assert result.returncode == 0 and "num_shards: 3" in result.stdout
    assert f"output: {tmp_path / 'out'}" in result.stdout  # outputs resolved against the working directory
    assert "input: vecs" in result.stdout  # an input that does not exist here stays as given (a name, a URI)


def test_user_mistakes_are_one_line_and_exit_2_before_any_cluster(tmp_path):
    result = laconic("eval", "--dataset", "scifact")  # argparse habits
    assert result.returncode == 2 and "keys are given as key=value: dataset=scifact" in result.stderr
    result = laconic(
        "eval", "dataset=no_such_collection", "retriever=bm25", env={"LACONIC_DATA": str(tmp_path)}
    )
    assert result.returncode == 2 and "dataset:" in result.stderr and "not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = laconic("index", f"input={tmp_path / 'missing'}", f"output={tmp_path / 'out'}")
    assert result.returncode == 2 and "does not exist" in result.stderr
    (tmp_path / "half").mkdir()
    result = laconic("index", f"input={tmp_path / 'half'}", f"output={tmp_path / 'out'}")
    assert result.returncode == 2 and "has not finished" in result.stderr
    # a model that cannot be had: said at once, on the driver, before Ray starts (was 88 s and 482 lines)
    result = laconic(
        "encode", "model=no-such-org/no-such-model", "corpus=scifact", f"output={tmp_path / 'v'}",
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2 and "model: no-such-org/no-such-model" in result.stderr
    assert "starting a local Ray cluster" not in result.stderr
    result = laconic("search", f"index={tmp_path}", "query=hello", f"port={_closed_port()}")
    assert result.returncode == 2 and "laconic search needs model=" in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_verbose_keeps_third_party_debug_out():
    import logging

    cli.configure_logging(verbose=True)
    assert logging.getLogger("jnius").getEffectiveLevel() >= logging.WARNING


def test_an_encoder_without_its_mlm_head_is_refused_before_ray_starts(tmp_path):
    """A bare BertModel would load as a masked LM with a random head and encode noise; it is refused, on the
    driver, in one line."""
    from transformers import BertConfig, BertModel

    from laconic_ray.model.encoder import SparseEncoder, UnsupportedModel, check_model_source

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(str(tmp_path / "splade"))
    with pytest.raises(UnsupportedModel, match="BertModel checkpoint without a masked-LM head"):
        SparseEncoder.from_pretrained(str(tmp_path / "splade"), tokenizer="laconic:bert-base-uncased")
    with pytest.raises(UnsupportedModel, match=r"model: .*BertModel"):
        check_model_source(str(tmp_path / "splade"))
    result = laconic("encode", f"model={tmp_path / 'splade'}", "corpus=scifact", f"output={tmp_path / 'v'}")
    assert result.returncode == 2 and "BertModel" in result.stderr
    assert (
        len(result.stderr.strip().splitlines()) == 1 and "starting a local Ray cluster" not in result.stderr
    )
