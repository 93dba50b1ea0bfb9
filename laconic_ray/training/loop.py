"""The training loop of one phase, independent of Ray: micro-steps with gradient accumulation, AdamW with a
warm-up + cosine schedule, gradient clipping, metrics, and sharded checkpoints that carry the data position.

Exact resumption: the data order is a pure function of (seed, epoch) and the loop records how many
micro-batches of the current epoch it has consumed. A checkpoint holds the trainable weights, the optimizer,
the schedule and that position; a resumed run skips exactly the consumed micro-batches and continues, so the
sequence of batches applied to the weights equals an uninterrupted run's (tests/ray/test_train.py checks it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from laconic_ray.training.batches import TrainBatch
from laconic_ray.training.parallel import no_sync

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-steps done (the FLOPS ramp's clock)
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    tokens: int = 0
    done: bool = False


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    accumulation: int  # micro-steps per optimizer step
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    phase: int = 1


class Callbacks(Protocol):
    """What the loop needs from its runner (Ray Train, or a plain process)."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def checkpoint_dir(self) -> str: ...

    @property
    def rank(self) -> int: ...


Objective = Callable[[nn.Module, TrainBatch, int], tuple[torch.Tensor, dict[str, float]]]


def _state_options(strict: bool = True) -> StateDictOptions:
    # LoRA: only adapters are trainable; frozen base weights are rebuilt from the phase's initial model
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def save_checkpoint(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    rank: int,
) -> None:
    """Sharded (torch.distributed.checkpoint): every rank writes its shard of the same directory."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_options())
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=directory)
    # this rank's random state (dropout, LoRA's included): a resumed run draws what the uninterrupted one would
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, os.path.join(directory, f"rng-rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump({"state": dataclasses.asdict(state), "scheduler": scheduler.state_dict()}, f)


def load_checkpoint(
    directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> TrainState:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_options())
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=directory)  # raises if the checkpoint lacks any trainable key
    # not strict: the frozen base weights (LoRA's base_layer) are not in the checkpoint, by design, and a
    # strict load refused every LoRA resume ("Missing key(s) ... base_layer.weight"); the trainable ones are
    # all there (dcp.load above), and anything the checkpoint holds that the model lacks is still an error
    incompatible = set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_state_options(strict=False),
    )
    if incompatible is not None and incompatible.unexpected_keys:
        raise RuntimeError(
            f"{directory}: checkpoint keys the model does not have: {incompatible.unexpected_keys[:5]}"
        )
    with open(os.path.join(directory, STATE_FILE)) as f:
        saved = json.load(f)
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = os.path.join(directory, f"rng-rank{rank}.pt")
    if os.path.exists(rng_file):  # a checkpoint from another world size has none for new ranks
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**saved["state"])


def train_phase(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Callable[[int], Iterator[TrainBatch]],
    state: TrainState,
    settings: LoopSettings,
    callbacks: Callbacks,
    device: torch.device,
    on_batch: Callable[[TrainState, TrainBatch], None] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> TrainState:
    """Run (or resume) a phase until ``settings.total_steps`` optimizer steps are done.

    ``batches(epoch)`` yields the micro-batches of one epoch in a deterministic order. ``on_batch`` sees every
    micro-batch that is applied (tests trace consumption with it); ``history`` collects every logged report.
    """
    model.train()
    run_started, first_step = time.perf_counter(), state.step  # for the ETA (a resumed run counts from here)
    window: dict[str, float] = {}
    window_micro = 0
    window_tokens = 0
    window_steps = 0
    window_started = time.perf_counter()
    while state.step < settings.total_steps:
        skip = state.batch_in_epoch
        consumed_any = False
        for index, batch in enumerate(batches(state.epoch)):
            if index < skip:
                continue  # consumed before the checkpoint this run resumed from
            consumed_any = True
            batch = batch.to(device)
            last = (state.micro_step + 1) % settings.accumulation == 0
            with no_sync(model, active=not last):
                loss, metrics = objective(model, batch, state.micro_step)
                (loss / settings.accumulation).backward()
            if on_batch is not None:
                on_batch(state, batch)
            state.micro_step += 1
            state.batch_in_epoch = index + 1
            state.tokens += batch.num_tokens
            window_tokens += batch.num_tokens
            window_micro += 1
            for key, value in metrics.items():
                window[key] = window.get(key, 0.0) + value
            if not last:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], settings.max_grad_norm
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window_steps += 1
            finished = state.step >= settings.total_steps
            report: dict[str, Any] = {}
            if state.step % settings.log_every == 0 or finished or state.step == 1:
                elapsed = max(time.perf_counter() - window_started, 1e-9)
                report = {key: value / window_micro for key, value in window.items()}
                report.update(
                    step=state.step,
                    epoch=state.epoch,
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=float(grad_norm),
                    tokens_per_s=window_tokens / elapsed,
                    seconds_per_step=elapsed / window_steps,
                    phase=settings.phase,
                )
                if callbacks.rank == 0:
                    per_step = (time.perf_counter() - run_started) / max(state.step - first_step, 1)
                    eta = int(per_step * (settings.total_steps - state.step))
                    log.info(
                        "phase %d step %d/%d loss %.4f rank %.4f nnz q/p %.0f/%.0f lr %.2e %.0f tok/s, "
                        "%.2f s/step, ETA %d:%02d:%02d",
                        settings.phase,
                        state.step,
                        settings.total_steps,
                        report.get("loss", 0.0),
                        report.get("ranking_loss", report.get("lm_loss", 0.0)),
                        report.get("nnz_query", 0.0),
                        report.get("nnz_passage", 0.0),
                        report["lr"],
                        report["tokens_per_s"],
                        per_step,
                        eta // 3600,
                        eta % 3600 // 60,
                        eta % 60,
                    )
                if history is not None:
                    history.append(dict(report))
                window, window_micro, window_tokens, window_steps = {}, 0, 0, 0
                window_started = time.perf_counter()
            checkpoint = None
            if state.step % settings.checkpoint_every == 0 or finished:
                state.done = finished
                checkpoint = callbacks.checkpoint_dir()
                save_checkpoint(checkpoint, model, optimizer, scheduler, state, callbacks.rank)
            if report or checkpoint:
                callbacks.report(report or {"step": state.step, "phase": settings.phase}, checkpoint)
            if finished:
                return state
        if not consumed_any and skip == 0:
            raise RuntimeError(
                f"epoch {state.epoch} produced no batches: not enough examples for one micro-batch per worker"
            )
        state.epoch += 1
        state.batch_in_epoch = 0
    return state
