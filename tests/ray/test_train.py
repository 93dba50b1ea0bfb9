"""The curriculum on Ray Train with 2 CPU workers: learning, phase chaining, S3, exact resumption."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import ray
import scipy.sparse as sp

from laconic_ray import storage
from laconic_ray.config import MineConfig, TrainConfig, load_config
from laconic_ray.data.mining import run_mine
from laconic_ray.distributed.train import FAULT_ENV, read_history, run_train
from laconic_ray.model import SparseEncoder
from laconic_ray.training.parallel import base_digest as _digest
from tests.events import tensorboard_scalars

SMALL = [
    "model.architecture.hidden_size=32",
    "model.architecture.intermediate_size=64",
    "model.architecture.num_attention_heads=2",
    "model.architecture.num_key_value_heads=1",
    "phase1.query_max_length=24",
    "phase1.passage_max_length=64",
    "phase1.micro_batch_queries=8",
    "phase1.queries_per_step=32",
    "phase2.query_max_length=24",
    "phase2.passage_max_length=48",
    "phase2.micro_batch_queries=2",
    "phase2.queries_per_step=4",
    "log_every=1",
]
PROBES = ["aspirin and heart attacks", "cells divide by mitosis"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("train-data")
    run_mine(
        load_config(
            MineConfig,
            "conf/mine.yaml",
            ["dataset=scifact", f"output={root}/weak", "phase=1", "max_pairs=1024"],
        )
    )
    run_mine(load_config(MineConfig, "conf/mine.yaml", ["dataset=scifact", f"output={root}/neg", "phase=2"]))
    return str(root / "weak"), str(root / "neg")


def train(output, data, *overrides):
    weak, neg = data
    config = load_config(
        TrainConfig,
        "conf/train/tiny.yaml",
        [f"output={output}", f"phase1.data={weak}", f"phase2.data={neg}", *SMALL, *overrides],
    )
    return run_train(config)


def test_curriculum_on_s3_learns_chains_phases_and_exports_exactly(ray_session, data, s3_bucket, tmp_path):
    base, options = s3_bucket
    out = storage.join(base, "run")
    summary = train(
        out,
        data,
        f"storage.endpoint_url={options.endpoint_url}",
        "logging.backend=tensorboard",
        f"logging.dir={tmp_path / 'tb'}",
        "phase1.steps=24",
        "phase2.steps=3",
        "checkpoint_every=10",
        "phase1.lora.enabled=true",
        "phase1.lora.r=4",
        "phase1.lora.alpha=8",
        "phase2.lora.enabled=true",
        "phase2.lora.r=4",
        "phase2.lora.alpha=8",
        "phase1.lr=3e-3",
        "probe_texts=[" + ",".join(f'"{t}"' for t in PROBES) + "]",
        # CSPLADE's adaptation phase first: causal LM + log-saturation, no LoRA
        "phase0.enabled=true",
        "phase0.steps=2",
        "phase0.queries_per_step=16",
        "phase0.micro_batch_queries=8",
        "phase0.passage_max_length=48",
        "phase0.lora.enabled=false",
    )
    phase0, phase1, phase2 = summary["phases"]
    assert {"lm_loss", "saturation_loss"} <= set(read_history(phase0["history"], options)[0])
    adapted = SparseEncoder.from_pretrained(phase0["export"], options=options)
    assert phase1["worker"]["initial_digest"] == pytest.approx(_digest(adapted), rel=1e-9)
    history = [h["loss"] for h in read_history(phase1["history"], options)]
    assert len(history) == 24
    assert np.mean(history[-4:]) < np.mean(history[:4])  # it learns
    # checkpoints and both exports live on S3
    fs, path = storage.filesystem(storage.join(out, "ray", "tiny-phase1"), options)
    assert any("checkpoint_" in p for p in fs.ls(path))
    first = SparseEncoder.from_pretrained(phase1["export"], options=options)
    second = SparseEncoder.from_pretrained(phase2["export"], options=options)
    # phase 2 started from phase 1's merged export
    assert phase2["worker"]["initial_digest"] == pytest.approx(_digest(first), rel=1e-9)
    assert _digest(second) != pytest.approx(_digest(first), rel=1e-9)
    # the export (LoRA merged) encodes like the trained model did
    probes = phase2["worker"]["probes"]
    trained = sp.csr_matrix(
        (probes["data"], probes["indices"], probes["indptr"]), shape=(2, second.vocab_size)
    )
    np.testing.assert_allclose(second.encode_documents(PROBES).toarray(), trained.toarray(), atol=1e-5)
    # every phase's reports reached TensorBoard (rank 0, log_every=1), and the export's card tells its history
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["phase1/loss"]] == list(range(1, 25))
    assert [v for _, v in scalars["phase1/loss"]] == pytest.approx(history)
    assert {"phase0/lm_loss", "phase2/nnz_query", "phase2/lr", "phase2/tokens_per_s"} <= set(scalars)
    assert [t["phase"] for t in second.training_history] == ["phase0", "phase1", "phase2"]


# FSDP2 on CPU (gloo): sharded parameters, sharded DCP checkpoints and a gathered export under Ray Train
RESUME = ["phase=1", "phase1.steps=10", "checkpoint_every=3", "parallelism=fsdp", "mixed_precision=none"]


@pytest.mark.timeout(120)  # the old code retried a worker group start every 60 s, for ever
def test_a_worker_group_the_cluster_can_never_hold_is_refused_at_once(ray_session, data, tmp_path):
    from laconic_ray.distributed.resources import ResourceError

    started = time.monotonic()
    # this session's cluster: one node, 4 CPUs, no GPU, no autoscaler
    with pytest.raises(
        ResourceError,
        match=r"2 training workers of 1 CPU, 1 GPU each: .* can place 0 \(PACK\).*scaling.use_gpu=false",
    ):
        train(str(tmp_path / "gpu"), data, "scaling.use_gpu=true")
    with pytest.raises(ResourceError, match=r"can place 4 \(PACK\).*lower scaling.num_workers"):
        train(str(tmp_path / "many"), data, "scaling.num_workers=2", "phase2.num_workers=5")
    assert time.monotonic() - started < 30
    assert not os.path.exists(tmp_path / "many" / "ray")  # refused before phase 1 started, not after it


def consumed(trace_dir):
    return {name: open(os.path.join(trace_dir, name)).read() for name in sorted(os.listdir(trace_dir))}


@pytest.fixture(scope="module")
def reference(ray_session, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    train(str(root / "run"), data, *RESUME, f"trace_dir={root / 'trace'}")
    return consumed(root / "trace")


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_failure_resumes_from_checkpoint_without_repeating_or_skipping(
    how, reference, data, tmp_path, monkeypatch
):
    assert len(reference) == 2 * 10 * 2  # 2 ranks x 10 steps x 2 micro-steps
    monkeypatch.setenv(FAULT_ENV, f"train:1:7:{tmp_path / 'marker'}:{how}")
    args = [*RESUME, f"trace_dir={tmp_path / 'trace'}"]
    if how == "raise":  # a worker raises once: Ray Train restarts all workers from the last checkpoint
        train(str(tmp_path / "run"), data, *args, "max_failures=2")
    else:  # the process dies and no retries are left: the run fails; rerunning the same name resumes
        with pytest.raises(ray.train.TrainingFailedError):
            train(str(tmp_path / "run"), data, *args, "max_failures=0")
        monkeypatch.delenv(FAULT_ENV)
        train(str(tmp_path / "run"), data, *args, "max_failures=0")
    assert (tmp_path / "marker").exists()
    assert consumed(tmp_path / "trace") == reference
    assert SparseEncoder.from_pretrained(str(tmp_path / "run" / "phase1" / "model")).vocab_size == 30522
