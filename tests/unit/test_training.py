"""Training components without Ray: schedule, batch layout, step arithmetic, memory plan, FSDP vs DDP."""

from __future__ import annotations

import importlib.util
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from laconic_ray.config import ConfigError, PhaseConfig, PlanConfig, TrainConfig, load_config, validate_tree
from laconic_ray.distributed.train import _steps
from laconic_ray.model.tokenization import TextFormat
from laconic_ray.training.batches import ExampleBatcher
from laconic_ray.training.plan import plan
from laconic_ray.training.schedule import warmup_cosine
from tests.events import tensorboard_scalars
from tests.models import tiny_encoder


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_example_batches_are_laid_out_in_groups():
    encoder = tiny_encoder()
    batcher = ExampleBatcher(encoder.tokenizer, TextFormat(), "bidirectional", group_size=3)
    batch = {
        "query_id": np.array(["q1", "q2"], dtype=object),
        "positive_id": np.array(["p1", "p2"], dtype=object),
        "query": np.array(["first query", "second query"], dtype=object),
        "positive": np.array(["positive one", "positive two"], dtype=object),
        "negatives": np.array([["n11", "n12", "n13"], ["n21", "n22"]], dtype=object),
    }
    out = batcher(batch)
    assert out.keys == ["q1/p1", "q2/p2"]
    assert out.queries.input_ids.shape[0] == 2 and out.passages.input_ids.shape[0] == 6
    expected = encoder.prepare(["positive one", "n11", "n12", "positive two", "n21", "n22"], "passage")
    torch.testing.assert_close(out.passages.input_ids, expected.input_ids)
    short = dict(batch, negatives=np.array([["n11"], ["n21", "n22"]], dtype=object))
    with pytest.raises(ValueError, match="has 1 negatives; group size 3 needs 2"):
        batcher(short)


def test_step_arithmetic():
    phase = PhaseConfig(queries_per_step=64, micro_batch_queries=8, epochs=2)
    assert _steps(phase, examples=1000, world=2) == ((2 * (500 // 8)) // 4, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        _steps(PhaseConfig(queries_per_step=60, micro_batch_queries=8), 1000, 2)
    with pytest.raises(ValueError, match="cannot fill one micro-batch"):
        _steps(PhaseConfig(queries_per_step=16, micro_batch_queries=8), 10, 2)
    assert _steps(PhaseConfig(queries_per_step=16, micro_batch_queries=8, steps=7), 1000, 2) == (7, 1)


def test_presets_load_and_validate():
    for size in ("1b", "3b", "8b"):
        config = load_config(PlanConfig, f"conf/train/llama3-{size}.yaml")
        assert config.model.name_or_path.startswith("meta-llama/Llama-3")  # nested _base_ merged
        assert config.phase2.group_size == 16 and config.phase2.queries_per_step == 128
        assert (
            config.phase1.queries_per_step
            == config.phase1.num_workers * config.phase1.micro_batch_queries * 4
        )
    eight = load_config(PlanConfig, "conf/train/llama3-8b.yaml")
    assert (eight.phase1.lora.r, eight.phase1.lora.alpha, eight.phase2.lr) == (16, 32, 1e-4)
    with pytest.raises(ConfigError, match=r"phase1\.data: give the examples folder"):
        load_config(TrainConfig, "conf/train/tiny.yaml", ["output=/tmp/x"])


def test_plan_8b_fits_an_80gb_gpu_and_a_tight_preset_is_flagged():
    result = plan(load_config(PlanConfig, "conf/train/llama3-8b.yaml"))
    assert result["parameters"] == 8_030_261_248
    assert result["fits"] and [p["world_size"] for p in result["phases"]] == [128, 32]
    tight = load_config(
        PlanConfig,
        "conf/train/llama3-1b.yaml",
        ["scaling.gpu_memory_gb=16", "phase1.micro_batch_queries=256", "phase1.queries_per_step=32768"],
    )
    phase1 = plan(tight)["phases"][0]
    assert not phase1["fits"] and any("micro_batch_queries" in a for a in phase1["advice"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(rank: int, world: int, port: int, strategy: str, out: str) -> None:
    from laconic_ray.training.objectives import DualEncoder
    from laconic_ray.training.parallel import wrap

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        encoder = tiny_encoder(seed=1)
        model = wrap(DualEncoder(encoder), strategy, torch.device("cpu"), "none")
        batch = encoder.prepare(["hello world", "another text here"][rank : rank + 1], "query")
        q, p = model(
            batch.input_ids,
            batch.attention_mask,
            batch.pool_mask,
            batch.input_ids,
            batch.attention_mask,
            batch.pool_mask,
        )
        (q * p).sum().backward()
        grads = {}
        for name, param in model.named_parameters():
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            grads[name.replace("module.", "")] = grad.clone()
        torch.save(grads, os.path.join(out, f"{strategy}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp2_on_cpu_gives_the_same_gradients_as_ddp(tmp_path):
    results = {}
    for strategy in ("ddp", "fsdp"):
        # results come back through files: an mp.Manager would fork this process, Ray's gRPC threads and all
        mp.spawn(_grads, args=(2, _free_port(), strategy, str(tmp_path)), nprocs=2, join=True)
        results[strategy] = torch.load(tmp_path / f"{strategy}-rank0.pt", weights_only=True)
    assert results["ddp"].keys() == results["fsdp"].keys()
    for name in results["ddp"]:
        torch.testing.assert_close(results["fsdp"][name], results["ddp"][name], rtol=1e-5, atol=1e-5)


def test_tensorboard_tracking_logs_each_report_under_its_phase(tmp_path):
    from laconic_ray.config import TrackingConfig
    from laconic_ray.training.tracking import open_tracker

    settings = {"backend": "tensorboard", "dir": str(tmp_path), "project": "p"}
    assert open_tracker(settings, "run", 1, rank=1) is None  # rank 0 only
    tracker = open_tracker(settings, "run", 1, rank=0)
    for step in (1, 2, 3):
        tracker.log(
            {"step": step, "phase": 1, "loss": 1.0 / step, "nnz_query": 40.0 + step, "note": "x"}, step
        )
    tracker.close()
    scalars = tensorboard_scalars(tmp_path / "run")
    assert set(scalars) == {"phase1/loss", "phase1/nnz_query"}
    assert scalars["phase1/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    with pytest.raises(ConfigError, match="backend: must be one of"):
        validate_tree(TrackingConfig(backend="comet"), "logging.")
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ConfigError, match="pip install mlflow"):
            validate_tree(TrackingConfig(backend="mlflow"), "logging.")
