"""Losses against hand computations; the world-size scaling against a real 2-process gloo group."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from laconic_ray.model.losses import (
    FlopsSchedule,
    causal_lm_loss,
    contrastive_loss,
    flops,
    info_nce,
    kl_distillation,
    margin_mse,
    saturation_loss,
)


def test_flops_by_hand():
    w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    # column means of |w|: 2, 0, 1  ->  4 + 0 + 1
    assert flops(w).item() == pytest.approx(5.0)
    assert flops(-w).item() == pytest.approx(5.0)


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    # scores q0: [1, 0, 2, 0] positive col 0;  q1: [2, 2, 0, 0] positive col 2
    l0 = -1 + math.log(math.e + 1 + math.e**2 + 1)
    l1 = -0 + math.log(math.e**2 * 2 + 1 + 1)
    got = info_nce(q, p, torch.tensor([0, 2]))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # temperature divides the scores
    assert info_nce(q, p, torch.tensor([0, 2]), temperature=2.0).item() == pytest.approx(
        info_nce(q / 2, p, torch.tensor([0, 2])).item(), rel=1e-6
    )


def test_contrastive_loss_groups_and_flops_terms():
    torch.manual_seed(0)
    q, p = torch.rand(3, 10), torch.rand(6, 10)
    terms = contrastive_loss(q, p, group_size=2, lambda_query=0.1, lambda_passage=0.2)
    expected_rank = info_nce(q, p, torch.tensor([0, 2, 4]))
    assert terms.ranking.item() == pytest.approx(expected_rank.item())
    assert terms.loss.item() == pytest.approx(
        expected_rank.item() + 0.1 * flops(q).item() + 0.2 * flops(p).item()
    )
    with pytest.raises(ValueError, match="group size"):
        contrastive_loss(q, p[:5], group_size=2)


def test_flops_ramp_is_quadratic_in_micro_steps():
    ramp = FlopsSchedule(weight=1e-3, ramp_steps=100)
    assert ramp(0) == 0.0
    assert ramp(50) == pytest.approx(1e-3 / 4)
    assert ramp(100) == pytest.approx(1e-3)
    assert ramp(200) == pytest.approx(1e-3)
    assert FlopsSchedule(5e-4, 0)(0) == 5e-4


def test_distillation_losses_by_hand():
    student = torch.tensor([[3.0, 1.0, 0.0]])
    teacher = torch.tensor([[5.0, 4.0, 1.0]])
    # margins: student [2, 3], teacher [1, 4]  ->  ((1)^2 + (1)^2) / 2
    assert margin_mse(student, teacher).item() == pytest.approx(1.0)
    assert kl_distillation(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    p_t = torch.softmax(teacher, 1)
    expected = (p_t * (p_t.log() - torch.log_softmax(student, 1))).sum()
    assert kl_distillation(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)


def test_causal_lm_loss_matches_unchunked_cross_entropy():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 7, 8), torch.randn(50, 8)
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    logits = (hidden @ weight.T)[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100
    )
    got = causal_lm_loss(hidden, weight, None, ids, mask, token_chunk=3)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_saturation_loss_pushes_own_token_logits_up_even_when_dead():
    pooled = torch.full((1, 10), -5.0, requires_grad=True)  # every logit dead under ReLU
    ids, mask = torch.tensor([[2, 7, 0]]), torch.tensor([[1, 1, 0]])
    loss = saturation_loss(pooled, ids, mask)
    assert loss.item() == pytest.approx(math.log1p(math.exp(5.0)))
    loss.backward()
    assert pooled.grad[0, 2] < 0 and pooled.grad[0, 7] < 0  # descent raises them
    assert pooled.grad[0, [1, 3, 4, 5, 6, 8, 9]].abs().sum() == 0  # other ids, and padding, untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, q_all, p_all, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b, g = q_all.shape[0] // world, p_all.shape[0] // q_all.shape[0]
        q = q_all[rank * b : (rank + 1) * b].clone().requires_grad_()
        p = p_all[rank * b * g : (rank + 1) * b * g].clone().requires_grad_()
        terms = contrastive_loss(q, p, g, lambda_query=0.1, lambda_passage=0.05)
        terms.loss.backward()
        torch.save((terms.loss.detach(), q.grad, p.grad), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_scales_by_world_size_and_keeps_local_gradients(tmp_path):
    torch.manual_seed(0)
    world, b, g = 2, 2, 3
    q_all, p_all = torch.rand(world * b, 12), torch.rand(world * b * g, 12)
    # results come back through files: an mp.Manager would fork this process, Ray's gRPC threads and all
    mp.spawn(_rank_main, args=(world, _free_port(), q_all, p_all, str(tmp_path)), nprocs=world, join=True)
    out = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(world)]
    # single process over the global batch: the same loss, divided by the world size
    q_ref, p_ref = q_all.clone().requires_grad_(), p_all.clone().requires_grad_()
    ref = contrastive_loss(q_ref, p_ref, g, lambda_query=0.1, lambda_passage=0.05, gather=False)
    for rank in range(world):
        loss, q_grad, _p_grad = out[rank]
        assert loss.item() == pytest.approx(world * ref.loss.item(), rel=1e-5)
    # a rank's gradient reaches only its own slice; the local query gradients equal world x the global ones
    ref.loss.backward()
    for rank in range(world):
        _, q_grad, _ = out[rank]
        torch.testing.assert_close(
            q_grad, world * q_ref.grad[rank * b : (rank + 1) * b], rtol=1e-4, atol=1e-6
        )
