"""``laconic plan``: per-GPU memory of a training phase under FSDP, from a meta-device instance of the model.

The model is instantiated on the meta device (shapes, no memory), so an 8B plan costs nothing. Per GPU, with
``W`` workers:

* parameters: every parameter sharded over W, in the model's storage dtype, plus the largest decoder layer
  gathered unsharded twice (the one computing and the one prefetched);
* gradients and AdamW state (two fp32 moments + an fp32 master copy when training in 16-bit) for the
  trainable parameters only (LoRA adapters, or everything without LoRA), sharded over W;
* activations with gradient checkpointing: one hidden state per layer boundary for every token of the
  micro-batch, plus one layer's full intermediates recomputed in backward (attention through flash/SDPA
  kernels needs no sequence x sequence matrix);
* the sparse head: one vocabulary chunk of logits over the pooled tokens, the [batch, vocab] fp32
  representations of the worker's queries and passages (values, gradients and the int32 argmax that
  PooledProjection keeps for backward), and the passages gathered from every worker.

The estimate is deliberately simple and conservative (10% headroom for allocator fragmentation and CUDA
context); it is meant to say whether a preset fits an 80 GB GPU and, if not, what to change.
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
HEADROOM = 0.9


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


def plan_phase(config: TrainConfig, index: int, gpu_gb: float, model: nn.Module | None = None) -> PhasePlan:
    phase: PhaseConfig = getattr(config, f"phase{index}")
    model = model if model is not None else meta_model(config.model)
    world = phase.num_workers or config.scaling.num_workers
    storage_bytes = DTYPE_BYTES[config.model.dtype]
    compute_bytes = 2 if config.mixed_precision != "none" else storage_bytes
    hf_config = model.config
    hidden = hf_config.hidden_size
    intermediate = getattr(hf_config, "intermediate_size", 4 * hidden)
    vocab = hf_config.vocab_size
    layers = decoder_layers(model)
    total_params = sum(p.numel() for p in model.parameters())
    layer_params = max(sum(p.numel() for p in layer.parameters()) for layer in layers)

    trainable = (
        lora_parameters(model, phase.lora.target_modules, phase.lora.r)
        if phase.lora.enabled
        else total_params
    )
    master = 4 if storage_bytes < 4 else 0  # fp32 master weights of 16-bit trainables
    tokens_q = phase.micro_batch_queries * phase.query_max_length
    passages = phase.micro_batch_queries * phase.group_size
    tokens_p = passages * phase.passage_max_length
    tokens = tokens_q + tokens_p if index > 0 else passages * phase.passage_max_length

    gb = {
        "parameters_sharded": total_params * storage_bytes / world / GB,
        "parameters_gathered_layers": 2 * layer_params * compute_bytes / GB,
        "gradients": trainable * 4 / world / GB,
        "optimizer": trainable * (8 + master) / world / GB,
    }
    if config.gradient_checkpointing:
        boundary = tokens * hidden * compute_bytes * len(layers)
        one_layer = tokens * (10 * hidden + 3 * intermediate) * compute_bytes
        gb["activations"] = (boundary + one_layer) / GB
    else:
        gb["activations"] = tokens * (10 * hidden + 3 * intermediate) * compute_bytes * len(layers) / GB
    pooled_tokens = max(tokens_q, tokens_p)
    representations = (phase.micro_batch_queries + passages) * vocab * 4 * 3  # values, grads, argmax
    gathered = (world * passages * vocab * 4) if phase.gather_negatives and index > 0 else 0
    gb["sparse_head"] = (pooled_tokens * config.model.vocab_chunk * 4 * 2 + representations + gathered) / GB
    total = sum(gb.values())
    fits = total <= gpu_gb * HEADROOM
    advice = []
    if not fits:
        if gb["activations"] > 0.3 * total:
            if not config.gradient_checkpointing:
                advice.append("enable gradient_checkpointing")
            advice.append(
                f"lower phase{index}.micro_batch_queries (now {phase.micro_batch_queries}) and raise "
                "accumulation (queries_per_step stays)"
            )
        if gb["parameters_sharded"] + gb["optimizer"] > 0.3 * total:
            advice.append(f"more workers (now {world}) to shard parameters and optimizer state further")
            if not phase.lora.enabled:
                advice.append("train LoRA adapters instead of all weights")
        if gb["sparse_head"] > 0.2 * total:
            advice.append(
                f"lower model.vocab_chunk (now {config.model.vocab_chunk}) or gather fewer negatives"
            )
    return PhasePlan(
        index, world, {k: round(v, 2) for k, v in gb.items()}, round(total, 2), gpu_gb, fits, advice
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
