"""End of a phase: gather the trained weights, fold LoRA into them, save a loadable SparseEncoder.

All ranks take part in gathering the full state dict (FSDP shards it); rank 0 rebuilds the phase's initial
model on the CPU, adds the same adapters, loads the gathered weights, merges and writes
``save_pretrained`` (HF safetensors + tokenizer + laconic.json) to local disk or object storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from laconic_ray.model.encoder import SparseEncoder
from laconic_ray.storage import StorageOptions


def export_encoder(
    model: nn.Module,
    rebuild: Callable[[], SparseEncoder],
    lora: dict[str, Any] | None,
    uri: str,
    rank: int,
    options: StorageOptions | None = None,
    wrapper: Callable[[SparseEncoder], nn.Module] | None = None,
    training: dict[str, Any] | None = None,
) -> str | None:
    """Collective: every rank must call it. Returns the URI on rank 0, None elsewhere. ``training``: this
    phase's record for the checkpoint's history and model card."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    encoder = rebuild()
    if lora:
        encoder.add_lora(**lora)
    target = wrapper(encoder) if wrapper else encoder
    target.load_state_dict(full)
    encoder.merge_lora()
    encoder.save_pretrained(uri, options, training=training)
    return uri
