"""The researchers' combination on 2 gloo processes (no Ray): FSDP2 + LoRA + bf16 mixed precision + gradient
checkpointing + the dense (GPU) pooling layout, with the model built on the meta device and rank 0's
weights broadcast. Gradients against DDP, an interrupted run resumed from its sharded checkpoint, and the
export against the trained model (tests/distributed_training.py does the work in each process)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from laconic_ray.model import SparseEncoder
from tests.distributed_training import PROBES, Run, spawn
from tests.models import tiny_encoder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fsdp-model") / "model"
    tiny_encoder(seed=3).save_pretrained(str(path))
    return str(path)


def test_fsdp2_lora_bf16_gradients_match_ddp(model_dir, tmp_path):
    for strategy in ("ddp", "fsdp"):  # no LoRA dropout: the two builds draw random numbers differently
        spawn(Run(model_dir, str(tmp_path), strategy, strategy=strategy, grads_only=True, lora=(8, 16, 0.0)))
    assert (tmp_path / "fsdp-tied.txt").read_text() == "True"  # one shard of the tied embeddings, not two
    ddp = torch.load(tmp_path / "ddp-grads.pt", weights_only=True)
    fsdp = torch.load(tmp_path / "fsdp-grads.pt", weights_only=True)
    assert ddp.keys() == fsdp.keys() and all("lora_" in k for k in ddp)  # only adapters train
    assert any(v.abs().sum() > 0 for v in fsdp.values())
    for name in ddp:  # bf16 compute (FSDP) against fp32 adapters (DDP): bf16's ~3 significant digits
        scale = float(ddp[name].abs().max()) or 1.0
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=5e-2, atol=5e-2 * scale, msg=name)


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_lora_run_killed_and_resumed_applies_the_same_batches(model_dir, tmp_path, strategy):
    spawn(Run(model_dir, str(tmp_path), "whole", strategy=strategy))
    spawn(Run(model_dir, str(tmp_path), "killed", strategy=strategy, stop_after=2))  # dies after step 2
    assert os.path.exists(tmp_path / "killed-ckpt" / "trainer_state.json")
    assert not os.path.exists(tmp_path / "killed-adapters.pt")
    spawn(
        Run(model_dir, str(tmp_path), "resumed", strategy=strategy, resume_from=str(tmp_path / "killed-ckpt"))
    )
    whole = torch.load(tmp_path / "whole-adapters.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed-adapters.pt", weights_only=True)
    assert whole.keys() == resumed.keys() and any("lora_" in k for k in whole)
    for name in whole:  # the same batches, the same dropout draws: the same adapters, bit for bit
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)
    assert any(float(v.abs().sum()) > 0 for k, v in whole.items() if "lora_B" in k)  # they did train


def test_fsdp2_lora_export_encodes_like_the_trained_model(model_dir, tmp_path):
    spawn(Run(model_dir, str(tmp_path), "exp", steps=2, export=True))
    probes = torch.load(tmp_path / "exp-probes.pt", weights_only=False)
    exported = SparseEncoder.from_pretrained(str(tmp_path / "exp-export"))
    assert not exported.has_lora  # merged
    trained = sp.csr_matrix(
        (probes["data"], probes["indices"], probes["indptr"]), shape=(3, exported.vocab_size)
    )
    again = exported.encode_documents(PROBES)
    # both bf16 computations of the same weights (the export merged the adapters into bf16 storage)
    np.testing.assert_allclose(again.toarray(), trained.toarray(), rtol=5e-2, atol=5e-2)
    assert again.nnz == pytest.approx(trained.nnz, rel=0.05)


def test_a_plain_lora_module_resumes_from_its_checkpoint(model_dir, tmp_path):
    """No process group at all (one worker): the frozen base weights are not in the checkpoint, by design."""
    from laconic_ray.training.loop import TrainState, load_checkpoint, save_checkpoint
    from laconic_ray.training.schedule import build_scheduler

    def trained(seed: int):
        torch.manual_seed(seed)
        encoder = SparseEncoder.from_pretrained(model_dir)
        encoder.add_lora(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
        optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
        return encoder, optimizer, build_scheduler(optimizer, 10, 0.0)

    encoder, optimizer, scheduler = trained(0)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    save_checkpoint(str(tmp_path / "ckpt"), encoder, optimizer, scheduler, TrainState(step=3), rank=0)
    fresh, optimizer, scheduler = trained(1)
    assert load_checkpoint(str(tmp_path / "ckpt"), fresh, optimizer, scheduler).step == 3
    for (name, a), (_, b) in zip(encoder.named_parameters(), fresh.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # adapters restored, base weights as built
