"""What one micro-step computes, per phase, as modules that DDP/FSDP can wrap.

DDP and FSDP expect one forward per backward, so queries and passages are encoded inside a single forward
(:class:`DualEncoder`), not by two calls on the wrapped model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from laconic_ray.model.encoder import POOLING_LAYOUTS, SparseEncoder, max_pool_logits
from laconic_ray.model.losses import (
    FlopsSchedule,
    LossTerms,
    causal_lm_loss,
    contrastive_loss,
    saturation_loss,
)
from laconic_ray.training.batches import TrainBatch


class DualEncoder(nn.Module):
    """Encodes a batch's queries and passages in one forward."""

    def __init__(self, encoder: SparseEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, q_ids, q_mask, q_pool, p_ids, p_mask, p_pool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(q_ids, q_mask, q_pool), self.encoder(p_ids, p_mask, p_pool)


class AdaptationModel(nn.Module):
    """CSPLADE phase 0: next-token loss (causal attention) plus the log-saturation term on the pooled logits."""

    def __init__(self, encoder: SparseEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids, mask, pool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder.hidden_states(ids, mask)
        head = self.encoder.lm_head
        bias = getattr(head, "bias", None)
        lm = causal_lm_loss(hidden, head.weight, bias, ids, mask)
        pooled = max_pool_logits(
            hidden,
            head.weight,
            bias,
            pool,
            self.encoder.vocab_chunk,
            POOLING_LAYOUTS[self.encoder.pooling_layout],
        )
        return lm, saturation_loss(pooled, ids, mask), self.encoder.activate(pooled)


@dataclasses.dataclass(frozen=True)
class ContrastiveObjective:
    """Phases 1 and 2: InfoNCE over in-batch (+ hard, + cross-worker) negatives plus ramped FLOPS terms."""

    group_size: int
    flops_query: FlopsSchedule
    flops_passage: FlopsSchedule
    temperature: float = 1.0
    gather: bool = True

    def __call__(
        self, model: nn.Module, batch: TrainBatch, micro_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        q, p = batch.queries, batch.passages
        q_reps, p_reps = model(
            q.input_ids, q.attention_mask, q.pool_mask, p.input_ids, p.attention_mask, p.pool_mask
        )
        terms: LossTerms = contrastive_loss(
            q_reps,
            p_reps,
            self.group_size,
            lambda_query=self.flops_query(micro_step),
            lambda_passage=self.flops_passage(micro_step),
            temperature=self.temperature,
            gather=self.gather,
        )
        metrics = terms.as_floats()
        metrics["nnz_query"] = float((q_reps.detach() > 0).sum(dim=1).float().mean())
        metrics["nnz_passage"] = float((p_reps.detach() > 0).sum(dim=1).float().mean())
        return terms.loss, metrics


@dataclasses.dataclass(frozen=True)
class AdaptationObjective:
    saturation_weight: float = 1.0

    def __call__(
        self, model: nn.Module, batch: TrainBatch, micro_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        p = batch.passages
        lm, saturation, weights = model(p.input_ids, p.attention_mask, p.pool_mask)
        loss = lm + self.saturation_weight * saturation
        return loss, {
            "loss": float(loss.detach()),
            "lm_loss": float(lm.detach()),
            "saturation_loss": float(saturation.detach()),
            "nnz_passage": float((weights.detach() > 0).sum(dim=1).float().mean()),
        }
