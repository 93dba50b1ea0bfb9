"""Attention modes: how a causal LM is made to see the whole text before its logits are max-pooled.

* ``bidirectional`` (LACONIC): the causal mask is replaced by a padding-only mask. In transformers 5.x the mask
  builders (``create_causal_mask`` and the sliding-window variant) fall back to a bidirectional mask when
  ``config.is_causal`` is False, for every attention backend (eager, sdpa, flex, flash); attention modules carry
  their own ``is_causal`` flag, which sdpa and flash use when no mask tensor is passed (a batch without
  padding), so that flag is cleared on every module that has one. No model names are inspected: any HF causal
  LM built on the shared mask utilities (Llama, Qwen2, Mistral, ...) works, and the tests check it per family.
  Applied before LoRA, so the adapters learn on top of bidirectional attention.
* ``echo`` (CSPLADE-ECHO): causal attention kept; the input is repeated (``x x``) and only the second copy is
  pooled, so every pooled position has already seen the whole text once.
* ``causal``: the plain causal LM (a baseline; the last tokens see everything, the first see only themselves).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def set_causal(model: nn.Module, causal: bool) -> None:
    """Set causality on the config(s) and on every module that carries an ``is_causal`` flag."""
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen:
            seen.add(id(config))
            config.is_causal = causal
            text_config = getattr(config, "text_config", None)
            if text_config is not None:
                text_config.is_causal = causal
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = causal


class AttentionMode:
    """A way of running a causal LM for sparse encoding: how to set the model up and lay out its input."""

    name: str = ""
    causal: bool = True

    def apply(self, model: nn.Module) -> None:
        set_causal(model, self.causal)

    def layout(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """The sequence to feed for one text's token ids, and the position where pooling starts."""
        return list(ids), 0


class Bidirectional(AttentionMode):
    name = "bidirectional"
    causal = False


class Causal(AttentionMode):
    name = "causal"


class Echo(AttentionMode):
    name = "echo"

    def layout(self, ids: Sequence[int]) -> tuple[list[int], int]:
        return list(ids) + list(ids), len(ids)


MODES: dict[str, AttentionMode] = {m.name: m for m in (Bidirectional(), Echo(), Causal())}


def get_mode(name: str) -> AttentionMode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown attention mode {name!r}; choose one of {sorted(MODES)}") from None
