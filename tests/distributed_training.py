"""A 2-process gloo harness for the real training combination, without Ray (tests/unit/test_fsdp_lora.py).

Each process runs what a Ray Train worker runs for one phase (training/parallel.build_parallel_model, the
contrastive objective, training/loop.train_phase with sharded checkpoints, the probe and the export), on a
model folder and deterministic batches, and writes what the test compares into ``out``. Results come back
through files: an mp.Manager would fork the pytest process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROBES = ["aspirin lowers the risk of heart attacks", "cells divide by mitosis", "rainbows need sunlight"]


@dataclasses.dataclass(frozen=True)
class Run:
    model_dir: str
    out: str
    tag: str
    strategy: str = "fsdp"  # fsdp | ddp
    mixed_precision: str = "bf16"
    dtype: str = "bfloat16"  # the presets' storage dtype under LoRA
    pooling_layout: str = "dense"  # the GPU layout, forced on
    gradient_checkpointing: bool = True
    lora: tuple = (8, 16, 0.1)  # r, alpha, dropout
    targets: tuple = ("q_proj", "v_proj", "up_proj")
    long_texts: bool = False  # texts that fill query/passage_max_length (memory measurements)
    steps: int = 4
    accumulation: int = 2
    micro_batch: int = 2
    group_size: int = 2
    checkpoint_every: int = 2
    stop_after: int | None = None  # raise after this optimizer step's checkpoint (a worker killed)
    resume_from: str | None = None
    grads_only: bool = False  # one micro-step: save the gradients, nothing else
    profile_memory: bool = False  # one micro-step and optimizer step under torch's memory profiler (rank 0)
    export: bool = False
    vocab_chunk: int = 4096
    query_max_length: int = 16
    passage_max_length: int = 32


class Stopped(RuntimeError):
    """The simulated failure."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(run: Run, world: int = 2) -> None:
    mp.spawn(_main, args=(world, free_port(), run), nprocs=world, join=True)


def examples(rank: int, n: int, group_size: int, long: bool = False) -> dict[str, Any]:
    """Deterministic example rows for one rank: ``n`` queries with a positive and negatives each (``long``:
    texts of a few hundred words, so that every text is cut at its max length)."""
    rows = [rank * 1000 + i for i in range(n)]
    if long:
        filler = " ".join(f"word{j} topic{j % 17}" for j in range(300))
        return {
            "query_id": np.array([f"q{r}" for r in rows], dtype=object),
            "positive_id": np.array([f"p{r}" for r in rows], dtype=object),
            "query": np.array([f"query {r} {filler}" for r in rows], dtype=object),
            "positive": np.array([f"positive {r} {filler}" for r in rows], dtype=object),
            "negatives": np.array(
                [[f"negative {r} {j} {filler}" for j in range(1, group_size)] for r in rows], dtype=object
            ),
        }
    return {
        "query_id": np.array([f"q{r}" for r in rows], dtype=object),
        "positive_id": np.array([f"p{r}" for r in rows], dtype=object),
        "query": np.array([f"what is topic {r % 13} about number {r}" for r in rows], dtype=object),
        "positive": np.array([f"topic {r % 13} covers item {r} and its history" for r in rows], dtype=object),
        "negatives": np.array(
            [
                [f"unrelated text {r + j} on subject {(r + j) % 5}" for j in range(1, group_size)]
                for r in rows
            ],
            dtype=object,
        ),
    }


def _main(rank: int, world: int, port: int, run: Run) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _train(rank, run)
    except Stopped:
        pass
    finally:
        dist.destroy_process_group()


def _train(rank: int, run: Run) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from laconic_ray.distributed.train import _probe
    from laconic_ray.model import SparseEncoder
    from laconic_ray.model.losses import FlopsSchedule
    from laconic_ray.model.tokenization import TextFormat
    from laconic_ray.training.batches import ExampleBatcher
    from laconic_ray.training.export import export_encoder
    from laconic_ray.training.loop import LoopSettings, TrainState, load_checkpoint, train_phase
    from laconic_ray.training.objectives import ContrastiveObjective, DualEncoder
    from laconic_ray.training.parallel import build_parallel_model
    from laconic_ray.training.schedule import build_scheduler

    torch.manual_seed(1 + rank)
    device = torch.device("cpu")

    def rebuild(device: str | None = None) -> SparseEncoder:
        return SparseEncoder.from_pretrained(
            run.model_dir,
            dtype=run.dtype,
            device=device,
            vocab_chunk=run.vocab_chunk,
            pooling_layout=run.pooling_layout,
            query_max_length=run.query_max_length,
            passage_max_length=run.passage_max_length,
        )

    r, alpha, dropout = run.lora
    lora = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": list(run.targets)}
    model, encoder, _ = build_parallel_model(
        rebuild,
        DualEncoder,
        run.strategy,
        device,
        rank,
        lora=lora,
        mixed_precision=run.mixed_precision,
        gradient_checkpointing=run.gradient_checkpointing,
    )
    if rank == 0:  # a tied LM head must stay the embeddings' parameter through meta init and sharding
        lm = encoder.lm
        with open(os.path.join(run.out, f"{run.tag}-tied.txt"), "w") as f:
            f.write(str(lm.get_output_embeddings().weight is lm.get_input_embeddings().weight))
    batcher = ExampleBatcher(
        encoder.tokenizer,
        TextFormat(query_max_length=run.query_max_length, passage_max_length=run.passage_max_length),
        "bidirectional",
        run.group_size,
    )
    per_epoch = run.steps * run.accumulation
    rows = examples(rank, per_epoch * run.micro_batch, run.group_size, long=run.long_texts)
    micro = [
        batcher({k: v[i * run.micro_batch : (i + 1) * run.micro_batch] for k, v in rows.items()})
        for i in range(per_epoch)
    ]
    objective = ContrastiveObjective(
        run.group_size, FlopsSchedule(1e-3, 4), FlopsSchedule(1e-3, 4), 1.0, True
    )
    if run.grads_only:
        loss, _ = objective(model, micro[0], 0)
        loss.backward()
        grads = {}
        for name, param in model.named_parameters():
            if param.grad is not None:
                grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
                grads[name.replace("module.", "")] = grad.float().clone()
        if rank == 0:
            torch.save(grads, os.path.join(run.out, f"{run.tag}-grads.pt"))
        return
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = build_scheduler(optimizer, run.steps, 0.25)
    if run.profile_memory:
        _profile_step(rank, run, model, objective, micro[0], optimizer)
        return
    state = TrainState()
    if run.resume_from:
        state = load_checkpoint(run.resume_from, model, optimizer, scheduler, rank)

    class Callbacks:
        rank = 0

        def checkpoint_dir(self) -> str:
            return os.path.join(run.out, f"{run.tag}-ckpt")

        def report(self, metrics, checkpoint_dir) -> None:
            pass

    callbacks = Callbacks()
    callbacks.rank = rank

    def on_batch(train_state: TrainState, _batch) -> None:
        if run.stop_after is not None and train_state.step >= run.stop_after:
            raise Stopped()

    train_phase(
        model,
        objective,
        optimizer,
        scheduler,
        lambda epoch: iter(micro),
        state,
        LoopSettings(run.steps, run.accumulation, 1.0, run.checkpoint_every, 100),
        callbacks,
        device,
        on_batch=on_batch,
    )
    trained = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    )
    if rank == 0:
        torch.save(
            {k: v.float() for k, v in trained.items()}, os.path.join(run.out, f"{run.tag}-adapters.pt")
        )
    if run.export:
        probes = _probe(model, encoder, tuple(PROBES))
        export_encoder(
            model, rebuild, lora, os.path.join(run.out, f"{run.tag}-export"), rank, wrapper=DualEncoder
        )
        if rank == 0:
            torch.save(probes, os.path.join(run.out, f"{run.tag}-probes.pt"))


def _profile_step(rank, run, model, objective, batch, optimizer) -> None:
    """One micro-step and optimizer step under torch's memory profiler; rank 0 writes, per memory category
    (parameter, gradient, optimizer state, activation, temporary, ...), the bytes live at the step's peak
    and the category's own peak, and the peak of all live tensor bytes (``{tag}-memory.json``)."""
    import json

    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        loss, metrics = objective(model, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if rank != 0:
        return
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    names = ["unknown"] + [c.name.lower() if c else "unknown" for c in _CATEGORY_TO_INDEX]
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    at_peak: dict[str, int] = {}
    own_peak: dict[str, int] = {}
    for i, name in enumerate(names):
        at_peak[name] = at_peak.get(name, 0) + sizes[at][i]
        own_peak[name] = max(own_peak.get(name, 0), max(row[i] for row in sizes))
    report = {
        "peak_bytes": totals[at],
        "at_peak": at_peak,
        "category_peaks": own_peak,
        "active_share": float(metrics.get("nnz_passage", 0.0)) / model_vocab(model),
        "metrics": metrics,
    }
    with open(os.path.join(run.out, f"{run.tag}-memory.json"), "w") as f:
        json.dump(report, f)


def model_vocab(model) -> int:
    from laconic_ray.training.parallel import unwrap

    return unwrap(model).encoder.vocab_size
