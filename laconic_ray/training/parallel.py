"""Data-parallel wrapping: FSDP2 on GPUs (one ``fully_shard`` unit per decoder layer, bf16 compute), DDP
otherwise (gloo on CPU), nothing for a single process.

Decoder layers are found through the model's own ``_no_split_modules`` declaration (the block classes Hugging
Face marks as indivisible, the same list accelerate's FSDP auto-wrap uses), not by looking at model names.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


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
