"""load_config: merge order, interpolation, _base_ includes, and errors that name the key."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import pytest

from laconic_ray.config import ConfigError, StorageConfig, TrainConfig, check, load_config, to_yaml


@dataclasses.dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10

    def validate(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")


@dataclasses.dataclass
class Outer:
    name: str = "run"
    output: str = "runs/${name}"
    mode: Literal["bidirectional", "echo", "causal"] = "bidirectional"
    top_k: int | None = 512
    inner: Inner = dataclasses.field(default_factory=Inner)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "c.yaml", "# laconic test c.yaml\nname: first\ninner:\n  steps: 20\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "top_k=null"])
    assert cfg.name == "first" and cfg.inner.steps == 20 and cfg.inner.lr == 0.5 and cfg.top_k is None
    assert isinstance(cfg.inner, Inner) and isinstance(cfg.storage, StorageConfig)
    # interpolation sees the final value, whatever layer set it
    # (and outputs are made absolute on the driver, before any worker in another directory sees them)
    assert load_config(Outer, path, ["name=second"]).output == os.path.abspath("runs/second")


def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("LACONIC_TEST_OUT", "/data/out")
    path = write(tmp_path, "c.yaml", "output: ${oc.env:LACONIC_TEST_OUT}/x\n")
    assert load_config(Outer, path).output == "/data/out/x"


def test_base_includes_are_merged_in_order(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ninner:\n  lr: 0.1\n  steps: 5\n")
    (tmp_path / "sub").mkdir()
    path = write(tmp_path, "sub/child.yaml", "_base_: ../base.yaml\ninner:\n  steps: 7\n")
    cfg = load_config(Outer, path)
    assert (cfg.name, cfg.inner.lr, cfg.inner.steps) == ("base", 0.1, 7)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(Outer, str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["inner.setps=3"],
            r"override 'inner.setps=3': unknown key 'inner.setps' \(did you mean 'steps'\?\)",
        ),
        (["nmae=x"], r"unknown key 'nmae' \(did you mean 'name'\?\)"),
        (["inner.steps=many"], r"inner.steps: Value 'many'.*Integer"),
        (["mode=sideways"], r"mode: Invalid value 'sideways'"),
        (["inner.lr=-1"], r"inner.lr: must be > 0"),
        (["steps"], r"expected key=value"),
    ],
)
def test_override_errors_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Outer, None, overrides)


def test_file_errors_name_the_file(tmp_path):
    bad_key = write(tmp_path, "bad.yaml", "inner:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'inner.warmup'"):
        load_config(Outer, bad_key)
    bad_yaml = write(tmp_path, "broken.yaml", "name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML.*line"):
        load_config(Outer, bad_yaml)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, str(tmp_path / "missing.yaml"))
    scalar = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, scalar)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Outer, None, ["name=x", "inner.steps=3"])
    path = write(tmp_path, "saved.yaml", to_yaml(cfg))
    assert load_config(Outer, path) == cfg


def test_storage_options_take_endpoint_from_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert StorageConfig().options().s3_kwargs()["endpoint_url"] == "http://127.0.0.1:9"
    explicit = StorageConfig(endpoint_url="http://minio:9000").options().s3_kwargs()
    assert explicit["endpoint_url"] == "http://minio:9000"


def test_nested_base_is_merged_under_its_key(tmp_path):
    (tmp_path / "model").mkdir()
    write(tmp_path, "model/inner.yaml", "lr: 0.25\nsteps: 3\n")
    path = write(tmp_path, "outer.yaml", "name: nested\ninner:\n  _base_: model/inner.yaml\n  steps: 9\n")
    cfg = load_config(Outer, path)
    assert (cfg.name, cfg.inner.lr, cfg.inner.steps) == ("nested", 0.25, 9)


def test_precision_settings_that_would_train_wrongly_are_refused():
    base = ["output=/tmp/x", "phase1.data=/d1", "phase2.data=/d2"]
    with pytest.raises(ConfigError, match="mixed_precision: must be bf16 or none"):
        load_config(TrainConfig, "conf/train/tiny.yaml", [*base, "mixed_precision=fp16"])
    with pytest.raises(
        ConfigError, match=r"phase1\.lora\.enabled: false trains every weight.*model\.dtype=float32"
    ):
        load_config(TrainConfig, "conf/train/tiny.yaml", [*base, "model.dtype=bfloat16"])
    # LoRA over bf16 base weights (the GPU presets) is fine: adapters are float32
    load_config(
        TrainConfig,
        "conf/train/tiny.yaml",
        [*base, "model.dtype=bfloat16", "phase1.lora.enabled=true", "phase2.lora.enabled=true"],
    )


def test_a_regression_matrix_finds_its_stage_configs_from_any_directory(tmp_path, monkeypatch):
    from laconic_ray.config import RegressConfig

    matrix = os.path.abspath("conf/regressions/scifact.yaml")
    monkeypatch.chdir(tmp_path)  # not the checkout: `laconic regress` used to work only from its root
    config = load_config(RegressConfig, matrix)
    assert all(os.path.isfile(c.config) for c in config.conditions)


def test_every_shipped_stage_config_fits_its_stage_schema():
    """Each conf/*.yaml that names its command on line 1 (`# laconic <stage> conf/<file> ...`) merges into that
    stage's schema: no unknown key, no wrong type (required inputs come from the command line, so validation
    is left to the stage)."""
    import importlib
    from pathlib import Path

    from omegaconf import OmegaConf

    from laconic_ray.cli import STAGES
    from laconic_ray.config import _load_yaml

    conf = Path(__file__).resolve().parents[2] / "conf"
    checked = []
    for path in sorted(conf.rglob("*.yaml")):
        words = path.read_text().splitlines()[0].split()
        if words[:2] != ["#", "laconic"] or words[2] not in STAGES:
            continue
        module, _, name = STAGES[words[2]].schema.partition(":")
        schema = getattr(importlib.import_module(module), name)
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), _load_yaml(str(path))))
        checked.append(str(path.relative_to(conf)))
    assert {
        "adapt.yaml",
        "quickstart.yaml",
        "mine.yaml",
        "eval.yaml",
        "studies/csplade-ablation.yaml",
    } <= set(checked)


@pytest.mark.parametrize("preset", ["quickstart.yaml", "adapt.yaml"])
def test_the_quickstart_presets_validate_as_shipped(preset):
    """They run with no argument at all, so their own values must pass every stage's validation (a phase-2
    check on the shared mine section once failed the adapt preset before it started)."""
    from pathlib import Path

    from laconic_ray.config import QuickstartConfig

    load_config(QuickstartConfig, str(Path(__file__).resolve().parents[2] / "conf" / preset), [])


def test_serve_batching_knobs_are_checked():
    from laconic_ray.config import ServeConfig

    assert load_config(ServeConfig, "conf/serve.yaml", ["index=x"]).in_flight is None  # max(2, replicas)
    assert load_config(ServeConfig, "conf/serve.yaml", ["index=x", "in_flight=3"]).in_flight == 3
    for bad in ("in_flight=0", "in_flight=-2"):
        with pytest.raises(ConfigError, match="in_flight: must be >= 1 or null"):
            load_config(ServeConfig, "conf/serve.yaml", ["index=x", bad])
    with pytest.raises(ConfigError, match="in_flight"):
        load_config(ServeConfig, "conf/serve.yaml", ["index=x", "in_flight=many"])


def test_the_http_deadline_outlasts_the_searcher_unless_set():
    from laconic_ray.config import ServeConfig

    # null: past the longest the searcher takes (the direct attempt, then 1 + retries actor calls)
    assert load_config(ServeConfig, "conf/serve.yaml", ["index=x"]).http_deadline_s == 40.0
    derived = load_config(ServeConfig, "conf/serve.yaml", ["index=x", "timeout_s=2", "retries=0"])
    assert derived.http_deadline_s == 4.0
    assert (
        load_config(ServeConfig, "conf/serve.yaml", ["index=x", "request_timeout_s=1.5"]).http_deadline_s
        == 1.5
    )
    for bad in ("request_timeout_s=0", "request_timeout_s=-1"):
        with pytest.raises(ConfigError, match="request_timeout_s: must be > 0"):
            load_config(ServeConfig, "conf/serve.yaml", ["index=x", bad])
    with pytest.raises(ConfigError, match="request_timeout_s"):
        load_config(ServeConfig, "conf/serve.yaml", ["index=x", "request_timeout_s=soon"])


def test_http_gc_threshold_is_checked_and_applied():
    import gc

    from laconic_ray.config import ServeConfig
    from laconic_ray.distributed.http import tune_collector

    assert load_config(ServeConfig, "conf/serve.yaml", ["index=x"]).http_gc_threshold == 20000
    assert (
        load_config(ServeConfig, "conf/serve.yaml", ["index=x", "http_gc_threshold=null"]).http_gc_threshold
        is None
    )
    # 0 would turn the collector off; Python's own limit is a C int
    for bad in ("http_gc_threshold=0", "http_gc_threshold=-5", f"http_gc_threshold={2**31}"):
        with pytest.raises(ConfigError, match=r"http_gc_threshold: must be in \[1, 2\*\*31\) or null"):
            load_config(ServeConfig, "conf/serve.yaml", ["index=x", bad])
    before = gc.get_threshold()
    try:
        tune_collector(12345)
        assert gc.get_threshold() == (12345, *before[1:])
        tune_collector(None)  # null: left as it is
        assert gc.get_threshold()[0] == 12345
    finally:
        gc.set_threshold(*before)


def test_search_modes_are_the_index_modes():
    from laconic_ray.config import SEARCH_MODES, EvalConfig, ServeConfig
    from laconic_ray.index.inverted import MODES

    assert tuple(MODES) == SEARCH_MODES
    assert load_config(ServeConfig, "conf/serve.yaml", ["index=x", "mode=candidates"]).mode == "candidates"
    with pytest.raises(ConfigError, match=r"mode: must be one of \('exact', 'approximate', 'candidates'\)"):
        load_config(ServeConfig, "conf/serve.yaml", ["index=x", "mode=fast"])
    with pytest.raises(ConfigError, match="mode: must be one of"):
        load_config(EvalConfig, "conf/eval.yaml", ["index=x", "model=m", "dataset=d", "mode=fast"])


def test_encode_top_k_is_the_models_own_cap_unless_given():
    from laconic_ray.config import EncodeConfig

    base = ["model=m", "corpus=c", "output=o"]
    assert load_config(EncodeConfig, "conf/encode.yaml", base).top_k == "model"
    assert load_config(EncodeConfig, "conf/encode.yaml", [*base, "top_k=256"]).top_k == 256
    assert load_config(EncodeConfig, "conf/encode.yaml", [*base, "top_k=null"]).top_k is None
    for bad in ("top_k=0", "top_k=-5", "top_k=many"):
        with pytest.raises(ConfigError, match=r"top_k: must be > 0, null .* or model"):
            load_config(EncodeConfig, "conf/encode.yaml", [*base, bad])
    for bad in ("top_k=2.5", "top_k=true"):  # OmegaConf's own type check, naming the key
        with pytest.raises(ConfigError, match=f"override '{bad}': top_k: Value"):
            load_config(EncodeConfig, "conf/encode.yaml", [*base, bad])
