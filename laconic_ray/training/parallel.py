"""Data-parallel wrapping: FSDP2 on GPUs (one ``fully_shard`` unit per decoder layer, bf16 compute), DDP
otherwise (gloo on CPU), nothing for a single process.

Decoder layers are found through the model's own ``_no_split_modules`` declaration (the block classes Hugging
Face marks as indivisible, the same list accelerate's FSDP auto-wrap uses), not by looking at model names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

PRECISIONS = {"bf16": torch.bfloat16, "none": None}


def choose_strategy(parallelism: str, device: torch.device, world_size: int) -> str:
    """``none`` | ``ddp`` | ``fsdp`` for this run."""
    if world_size == 1:
        return "none"
    if parallelism == "auto":
        return "fsdp" if device.type == "cuda" else "ddp"
    return parallelism


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model (found by its ``_no_split_modules`` class names)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} declares no _no_split_modules; cannot shard it per layer")
    return layers


def wrap(module: nn.Module, strategy: str, device: torch.device, mixed_precision: str = "bf16") -> nn.Module:
    """Wrap ``module`` (whose parameters are already on ``device``) for data-parallel training."""
    if strategy == "none":
        return module
    if not dist.is_initialized():
        raise RuntimeError(f"{strategy} needs an initialised process group")
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dtype = PRECISIONS[mixed_precision]
        policy = (
            MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
            if dtype
            else MixedPrecisionPolicy()
        )
        for layer in decoder_layers(module):
            fully_shard(layer, mp_policy=policy)
        fully_shard(module, mp_policy=policy)
        return module
    raise ValueError(f"unknown parallel strategy {strategy!r}")


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module, active: bool):
    """Skip gradient synchronisation on accumulation micro-steps (DDP); FSDP2 via its own switch."""
    import contextlib

    if not active:
        return contextlib.nullcontext()
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # an FSDP2 module
        module.set_requires_gradient_sync(False)

        @contextlib.contextmanager
        def restore():
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)

        return restore()
    return contextlib.nullcontext()


def materialize_sharded(
    module: nn.Module, full_state: dict[str, torch.Tensor] | None, device: torch.device
) -> None:
    """Give an FSDP2-sharded module built on the meta device its memory and rank 0's weights.

    Collective. Every rank builds the model on the meta device (parameters without memory, buffers real) and
    shards it; only rank 0 holds the full state dict (``full_state``; None elsewhere), read once on its host,
    and ``set_model_state_dict`` broadcasts it tensor by tensor, each rank keeping its shard. Host memory is
    one copy of the model per node instead of one per GPU (8 x 16 GB for 8B on an 8-GPU node). Buffers are
    saved before ``to_empty`` (which leaves every tensor uninitialised) and copied back: rotary frequencies
    are non-persistent, in no state dict. Tied parameters must be one object before sharding (the meta
    builder re-ties them: see model/encoder._empty_model), else each owner gets a shard of its own.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    places: dict[
        int, list[tuple[nn.Module, str]]
    ] = {}  # a tied parameter (embeddings = LM head) is one object
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((owner, name))
    module.to_empty(device=device)
    for (
        shared
    ) in places.values():  # to_empty gave each owner its own copy: tie them again (one shard, not two)
        first = shared[0][0]._parameters[shared[0][1]]
        for owner, name in shared[1:]:
            owner._parameters[name] = first
    with torch.no_grad():
        for name, value in buffers.items():
            module.get_buffer(name).copy_(value)
    set_model_state_dict(
        module,
        full_state if full_state is not None else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )


def base_digest(encoder: nn.Module) -> float:
    """A fingerprint of the base (non-adapter) weights: phase N must start where phase N-1 ended."""
    with torch.no_grad():
        return sum(
            float(p.double().abs().sum()) for name, p in encoder.named_parameters() if "lora_" not in name
        )


def build_parallel_model(
    rebuild: Callable[..., Any],
    wrapper: Callable[[Any], nn.Module],
    strategy: str,
    device: torch.device,
    rank: int,
    *,
    lora: dict[str, Any] | None = None,
    mixed_precision: str = "bf16",
    gradient_checkpointing: bool = False,
) -> tuple[nn.Module, Any, float | None]:
    """The model a training worker steps: ``rebuild(device=None|"meta")`` gives the phase's initial
    SparseEncoder; fresh LoRA adapters (``lora``), gradient checkpointing, the objective's ``wrapper``, then
    the data-parallel ``strategy``. Returns ``(model, encoder, digest)``, the digest of the initial base
    weights on the rank that read them (rank 0 under FSDP, every rank otherwise; None elsewhere).

    Under FSDP only rank 0 reads the weights and every rank builds on the meta device
    (:func:`materialize_sharded`); rank 0 adds its adapters before taking the state, so that every rank
    starts from rank 0's adapter initialisation.
    """
    sharded_init = strategy == "fsdp"
    full_state, digest = None, None
    if sharded_init and rank == 0:
        full = rebuild()
        if lora:
            full.add_lora(**lora)
        digest = base_digest(full)
        full_state = wrapper(full).state_dict()
        del full
    encoder = rebuild(device="meta") if sharded_init else rebuild()
    if lora:
        encoder.add_lora(**lora)
    if not sharded_init:
        digest = base_digest(encoder)
    if gradient_checkpointing:
        encoder.enable_gradient_checkpointing()
    module = wrapper(encoder)
    model = wrap(module if sharded_init else module.to(device), strategy, device, mixed_precision)
    if sharded_init:
        materialize_sharded(model, full_state, device)
    return model, encoder, digest
