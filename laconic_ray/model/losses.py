"""Training objectives: InfoNCE with hard and cross-rank negatives, the FLOPS regulariser, distillation, and the
CSPLADE adaptation objective. Pure PyTorch; ``torch.distributed`` is used only when a process group exists.

Why the FLOPS penalty: nothing in a ranking loss asks for sparsity. SPLADE's FLOPS term
``sum_j (mean_i |w_ij|)^2`` is a smooth proxy for the number of floating-point operations an inverted index
spends per query: it penalises vocabulary ids that are *often* active across a batch, which is what makes
posting lists long. It is ramped in quadratically, ``lambda * min(1, t / T)^2``, because a full-strength penalty
at step 0 zeroes the representations before the ranking loss has shaped them.

Unit of ``t``: **micro-steps** (one per forward/backward, i.e. per ``FlopsSchedule`` call from the training
loop), exactly as LACONIC's public training code counts it; with gradient accumulation ``a``, a ramp of ``T``
micro-steps lasts ``T / a`` optimizer steps (LACONIC's phase-2 preset: 100 micro-steps = 25 optimizer steps).

Why scale by world size: with ``gather=True`` every rank scores its queries against the passages of *all*
ranks, but the gathered copies carry no gradient (only the local slice does), and DDP/FSDP *average* gradients
over ranks. Multiplying the loss (ranking and FLOPS terms alike, as LACONIC's code does) by the world size
undoes that averaging, so the learning rate means the same at any scale. The FLOPS terms are computed on the
gathered (global-batch) representations.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F


def info_nce(
    query: torch.Tensor, passages: torch.Tensor, positives: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean cross-entropy of ``query @ passages.T / temperature`` against the positive column of each query.

    No normalisation (sparse vectors are scored by plain dot product, as they will be in the index).
    ``positives[i]`` is the column of query ``i``'s positive; every other column is a negative.
    """
    scores = query @ passages.T / temperature
    return F.cross_entropy(scores, positives)


def flops(weights: torch.Tensor) -> torch.Tensor:
    """SPLADE's FLOPS regulariser ``sum_j (mean_i |w_ij|)^2`` over a [batch, vocab] matrix."""
    return weights.abs().mean(dim=0).pow(2).sum()


@dataclasses.dataclass(frozen=True)
class FlopsSchedule:
    """``weight * min(1, t / ramp_steps)^2``; ``t`` counts micro-steps (see the module docstring)."""

    weight: float
    ramp_steps: int

    def __call__(self, t: int) -> float:
        if self.ramp_steps <= 0:
            return self.weight
        return self.weight * min(1.0, t / self.ramp_steps) ** 2


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 from every rank; the local slice is ``x`` itself, so it keeps its gradient.

    Every rank must pass the same shape (the loader guarantees equal per-rank batches).
    """
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


@dataclasses.dataclass
class LossTerms:
    """What a training step reports; ``loss`` is what to backpropagate."""

    loss: torch.Tensor
    ranking: torch.Tensor
    flops_query: torch.Tensor
    flops_passage: torch.Tensor
    lambda_query: float
    lambda_passage: float

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "ranking_loss": float(self.ranking.detach()),
            "flops_query": float(self.flops_query.detach()),
            "flops_passage": float(self.flops_passage.detach()),
            "lambda_query": self.lambda_query,
            "lambda_passage": self.lambda_passage,
        }


def contrastive_loss(
    query: torch.Tensor,
    passages: torch.Tensor,
    group_size: int,
    *,
    lambda_query: float = 0.0,
    lambda_passage: float = 0.0,
    temperature: float = 1.0,
    gather: bool = True,
) -> LossTerms:
    """InfoNCE + FLOPS for a batch laid out as query ``i`` -> passages ``[i*G, (i+1)*G)``, positive first.

    ``group_size=1`` is phase 1 (in-batch negatives only); ``group_size=16`` is phase 2 (1 positive + 15 hard
    negatives per query, plus every other query's passages as in-batch negatives). With ``gather`` and a
    process group, negatives come from every rank and the loss is scaled by the world size.
    """
    if passages.shape[0] != query.shape[0] * group_size:
        raise ValueError(
            f"{passages.shape[0]} passages for {query.shape[0]} queries x group size {group_size}"
        )
    _, size = world()
    scale = 1.0
    if gather and size > 1:
        query, passages = gather_with_grad(query), gather_with_grad(passages)
        scale = float(size)
    positives = torch.arange(query.shape[0], device=query.device) * group_size
    ranking = info_nce(query, passages, positives, temperature)
    flops_q, flops_p = flops(query), flops(passages)
    total = ranking + lambda_query * flops_q + lambda_passage * flops_p
    return LossTerms(total * scale, ranking, flops_q, flops_p, lambda_query, lambda_passage)


def group_scores(query: torch.Tensor, passages: torch.Tensor, group_size: int) -> torch.Tensor:
    """[batch, group] scores of each query against its own group of passages."""
    grouped = passages.view(query.shape[0], group_size, -1)
    return torch.einsum("bv,bgv->bg", query, grouped)


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MarginMSE distillation over [batch, group] scores: the margins positive - each negative must match."""
    return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softmax over each query's group ([batch, group] scores)."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )


# ------------------------------------------------------------------------------------- CSPLADE phase 0


def causal_lm_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_chunk: int = 256,
) -> torch.Tensor:
    """Next-token cross-entropy, chunked over positions so that [batch, chunk, vocab] is the peak.

    ``hidden`` must come from *causal* attention (a bidirectional model sees the token it should predict).
    """
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    hidden = hidden[:, :-1]
    total = hidden.new_zeros((), dtype=torch.float32)
    count = (targets != -100).sum().clamp(min=1)
    for start in range(0, hidden.shape[1], token_chunk):
        logits = F.linear(hidden[:, start : start + token_chunk], head_weight, head_bias).float()
        total = total + F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets[:, start : start + token_chunk].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
    return total / count


def saturation_loss(
    pooled_logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Keeps the log-saturated representation alive: ``mean softplus(-max-pooled logit)`` over the ids of the
    text's own tokens.

    Under ``log(1 + ReLU(.))`` a logit that goes negative gets no gradient again (dying ReLU), and CSPLADE
    reports contrastive training of causal LMs collapsing that way. The paper names the term (a log-saturation
    loss added to the causal-LM loss) without a formula in what we could read; softplus is our choice because
    it still has gradient where ReLU has none, and it pushes exactly the ids a lexical match needs (those of
    the text itself) above zero.
    """
    batch = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(input_ids)
    own = pooled_logits[batch, input_ids]  # [B, T]: the pooled logit of each input token's id
    mask = attention_mask.bool()
    return F.softplus(-own[mask]).mean()
