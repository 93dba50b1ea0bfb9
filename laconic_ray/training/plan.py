"""``laconic plan``: per-GPU memory of a training phase under FSDP2, from a meta-device instance of the model.

The model is instantiated on the meta device (shapes, no memory), so an 8B plan costs nothing. Each term is
a count of the tensors the code keeps, per worker of ``W`` (``c`` = 2 bytes of bf16 compute, ``V`` the
vocabulary, ``H`` the hidden size, texts = the worker's queries or passages of one micro-step):

* ``parameters_sharded``: every parameter over W in its storage dtype (LoRA adapters in fp32);
* ``root_unsharded``: FSDP's root unit (embeddings, final norm, an untied LM head) is gathered in the
  forward and stays unsharded through the backward, in compute dtype (2.1 GB for 8B);
* ``layers_gathered``: two decoder layers unsharded at a time (one computing, one prefetched);
* ``gradients``, ``optimizer``: the trainable parameters' fp32 gradients and AdamW's two moments, over W;
* ``activations``: with gradient checkpointing, every layer's input for every token plus one layer's
  intermediates while it is recomputed (LoRA dropout copies included); on CPU (the validation runs), SDPA's
  ``[texts, heads, T, T]`` attention matrices as well;
* ``sparse_head``: per text, the pooled tokens' hidden states, one ``vocab_chunk`` of logits at a time (dense
  layout: ``[texts, T, chunk]``), the int32 argmax, the ReLU/log1p outputs (fp32, kept for backward);
* ``gathered``: the representations gathered from every worker (queries and passages, fp32 ``[W x texts, V]``,
  twice while they are concatenated) and their gradients;
* ``sparse_backward``: PooledProjection's backward per (text, active id): the non-zero gradient entries'
  indices and source rows (~43 bytes per entry, ``active_share`` of ``texts x V``; 1.0 at random init, a few
  percent for a trained model) and two ``vocab_chunk x H`` slices.

The total is the persistent terms (parameters, root, gathered layers, gradients, optimizer) plus the
largest of four moments of the step, each counting what is alive then: the forward's start (the root
unit's all-gather buffer beside its unsharded copy), the end of the forward (layer inputs, the head's kept
tensors, the gathered representations, a logits chunk or a concatenation), the head's backward (the sparse
backward's entries) and a layer's backward (its recomputed intermediates). ``gb["peak_at"]`` names it. tests and
``benchmarks/plan_accuracy.py`` compare it with torch's memory profiler on CPU at real widths.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from laconic_ray.config import PhaseConfig, TrainConfig
from laconic_ray.model.build import meta_model
from laconic_ray.training.parallel import decoder_layers

log = logging.getLogger(__name__)

GB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEADROOM = 0.9  # of the GPU's memory: allocator fragmentation, CUDA context, NCCL buffers
SPARSE_ENTRY_BYTES = (
    43  # per active (text, id): int64 text, col, row, kept copies of two, bool keep, c-byte grad
)


def lora_parameters(model: nn.Module, targets: list[str], r: int) -> int:
    """Parameters LoRA adds: ``r * (in + out)`` for every Linear whose name ends in a target."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            total += r * (module.in_features + module.out_features)
    return total


@dataclasses.dataclass
class PhasePlan:
    phase: int
    world_size: int
    gb: dict[str, float]
    total_gb: float
    gpu_gb: float
    fits: bool
    advice: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _root_parameters(model: nn.Module) -> int:
    """Parameters outside the decoder layers (FSDP's root unit), a tied LM head counted once."""
    inside = {id(p) for layer in decoder_layers(model) for p in layer.parameters()}
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in inside)


def plan_phase(
    config: TrainConfig,
    index: int,
    gpu_gb: float,
    model: nn.Module | None = None,
    *,
    active_share: float = 0.25,
    device: str = "cuda",
) -> PhasePlan:
    """Per-worker memory of phase ``index``; ``active_share``: the share of vocabulary ids with a non-zero
    weight per text during training (random init ~1, a pretrained LM head early on ~0.1-0.3, trained a few
    percent); ``device="cpu"`` adds SDPA's attention matrices (the math kernel materialises them)."""
    phase: PhaseConfig = getattr(config, f"phase{index}")
    model = model if model is not None else meta_model(config.model)
    world = phase.num_workers or config.scaling.num_workers
    sharded = world if config.parallelism != "ddp" else 1
    storage = DTYPE_BYTES[config.model.dtype]
    c = 2 if config.mixed_precision != "none" else storage
    hf = model.config
    hidden, vocab = hf.hidden_size, hf.vocab_size
    intermediate = getattr(hf, "intermediate_size", 4 * hidden)
    heads = hf.num_attention_heads
    kv = getattr(hf, "num_key_value_heads", heads) * getattr(hf, "head_dim", hidden // heads)
    layers = decoder_layers(model)
    total_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    layer_params = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    lora = lora_parameters(model, phase.lora.target_modules, phase.lora.r) if phase.lora.enabled else 0
    trainable = lora if phase.lora.enabled else total_params

    q_texts = phase.micro_batch_queries if index > 0 else 0
    p_texts = phase.micro_batch_queries * (phase.group_size if index > 0 else 1)
    q_len, p_len = phase.query_max_length, phase.passage_max_length
    tokens = q_texts * q_len + p_texts * p_len
    chunk = min(config.model.vocab_chunk, vocab)

    gb: dict[str, float] = {
        "parameters_sharded": (total_params * storage + lora * 4) / sharded,
        "root_unsharded": _root_parameters(model) * c if sharded > 1 else 0,
        "layers_gathered": 2 * layer_params * c if sharded > 1 else 0,
        "gradients": trainable * 4 / sharded,
        "optimizer": trainable * 8 / sharded,
    }
    lora_dropout = (6 * hidden + intermediate) if phase.lora.enabled and phase.lora.dropout > 0 else 0
    per_token_layer = 8 * hidden + 2 * kv + 4 * intermediate + lora_dropout
    attention = 0
    if device == "cpu" and config.model.attn_implementation in ("sdpa", "eager"):
        attention = heads * (q_texts * q_len**2 + p_texts * p_len**2) * c
    if config.gradient_checkpointing:  # each layer's input; one layer's intermediates while recomputed
        boundaries = tokens * hidden * c * (len(layers) + 1)
        recompute = tokens * per_token_layer * c + attention
    else:  # every layer's intermediates from the forward to its backward
        boundaries = tokens * (hidden + per_token_layer) * c * len(layers) + attention * len(layers)
        recompute = 0
    # per text kept to the backward: pooled hidden states (dense: every position), argmax, ReLU and log1p out
    head = tokens * hidden * c + (q_texts + p_texts) * vocab * (4 + 4 + 4)
    gathered_q = world * q_texts * vocab * 4 if phase.gather_negatives and world > 1 and index > 0 else 0
    gathered_p = world * p_texts * vocab * 4 if phase.gather_negatives and world > 1 and index > 0 else 0
    gathered = 2 * (gathered_q + gathered_p)  # the concatenations and their gradients
    pooling = max(q_texts * q_len, p_texts * p_len) * chunk * c + max(q_texts, p_texts) * vocab * (
        2 * c + 2 * 4 + 4
    )
    sparse_backward = (
        max(q_texts, p_texts) * vocab * (4 + active_share * SPARSE_ENTRY_BYTES) + 2 * chunk * hidden * c
    )
    layer_gather = layer_params * c if sharded > 1 else 0  # a layer's all-gather buffer beside its copy-out
    # the step's moments (what is alive at each); the peak is the largest, on top of the persistent terms
    moments = {
        # forward start: the root unit's all-gather buffer beside the unsharded parameters copied out of it
        "root_all_gather": gb["root_unsharded"],
        # end of the forward: the representations' logits chunk and concatenations, the gathers
        "forward": boundaries + head + gathered + max(pooling, max(gathered_q, gathered_p), layer_gather),
        # the head's backward: PooledProjection's entries per active (text, id)
        "head_backward": boundaries + head + gathered + sparse_backward,
        # a layer's backward: its intermediates recomputed (gradient checkpointing), its gather buffer
        "layer_backward": boundaries + recompute + tokens * hidden * 4 + layer_gather,
    }
    gb.update(
        activations=boundaries + recompute,
        sparse_head=head,
        gathered=gathered,
        transient=max(pooling, sparse_backward, max(gathered_q, gathered_p), layer_gather),
    )
    persistent = sum(
        gb[k] for k in ("parameters_sharded", "root_unsharded", "layers_gathered", "gradients", "optimizer")
    )
    peak_moment = max(moments, key=moments.get)
    total = (persistent + moments[peak_moment]) / GB
    gb = {k: v / GB for k, v in gb.items()}
    gb["peak_at"] = peak_moment  # type: ignore[assignment]
    fits = total <= gpu_gb * HEADROOM
    advice = []
    if not fits:
        sizes = {k: v for k, v in gb.items() if isinstance(v, float)}
        dominant = sorted(sizes, key=sizes.get, reverse=True)[:2]
        levers = {
            "activations": f"lower phase{index}.micro_batch_queries (now {phase.micro_batch_queries}) and raise "
            "accumulation (queries_per_step stays)"
            + ("" if config.gradient_checkpointing else "; enable gradient_checkpointing"),
            "sparse_head": f"lower phase{index}.micro_batch_queries (every text keeps ~12 bytes per vocabulary id)",
            "gathered": f"gather_negatives=false or fewer workers per phase (each gathers {world} workers' texts)",
            "transient": f"lower model.vocab_chunk (now {config.model.vocab_chunk}) or micro_batch_queries",
            "root_unsharded": "nothing shards the root unit (embeddings, LM head): a larger GPU, or a smaller vocabulary",
            "parameters_sharded": f"more workers (now {world})"
            + ("" if phase.lora.enabled else " or LoRA instead of all weights"),
            "optimizer": f"more workers (now {world})" + ("" if phase.lora.enabled else " or LoRA"),
            "gradients": f"more workers (now {world})",
            "layers_gathered": "more, smaller layers per FSDP unit are not an option here: a larger GPU",
        }
        advice = [f"{term} ({gb[term]:.1f} GB): {levers[term]}" for term in dominant]
    return PhasePlan(
        index,
        world,
        {k: round(v, 3) if isinstance(v, float) else v for k, v in gb.items()},
        round(total, 3),
        gpu_gb,
        fits,
        advice,
    )


def plan(config: TrainConfig, gpu_gb: float | None = None) -> dict[str, Any]:
    """Plan every phase of ``config``; ``gpu_gb`` defaults to ``config.scaling.gpu_memory_gb``."""
    gpu_gb = config.scaling.gpu_memory_gb if gpu_gb is None else gpu_gb
    model = meta_model(config.model)
    params = sum(p.numel() for p in model.parameters())
    phases = [plan_phase(config, i, gpu_gb, model).as_dict() for i in config.phases()]
    return {
        "model": config.model.name_or_path or config.model.architecture.get("model_type"),
        "parameters": params,
        "parameters_billion": round(params / 1e9, 3),
        "gpu_gb": gpu_gb,
        "phases": phases,
        "fits": all(p["fits"] for p in phases),
    }


def run_plan(config: TrainConfig) -> dict[str, Any]:
    """CLI runner: the plan of every phase of ``config`` for its GPUs (``scaling.gpu_memory_gb``)."""
    result = plan(config)
    for phase in result["phases"]:
        verdict = "fits" if phase["fits"] else "DOES NOT FIT"
        log.info(
            "phase %d on %d GPUs: %.1f GB of %.0f GB per GPU, %s %s",
            phase["phase"],
            phase["world_size"],
            phase["total_gb"],
            phase["gpu_gb"],
            verdict,
            "; ".join(phase["advice"]),
        )
    return result
