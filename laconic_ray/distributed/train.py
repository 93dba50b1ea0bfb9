"""``laconic train``: the curriculum as one Ray Train (V2) run per phase.

    phase 0 (optional, CSPLADE adaptation) -> phase 1 (weak pairs) -> phase 2 (hard negatives)

Each phase starts from its predecessor's export (``<output>/phase<N-1>/model``, LoRA already merged) with a
fresh adapter, trains under ``TorchTrainer`` (DDP over gloo on CPU, FSDP2 + bf16 on GPUs), checkpoints with
torch.distributed.checkpoint to ``<output>/ray/<name>-phase<N>`` every ``checkpoint_every`` steps, and ends
with rank 0 writing ``<output>/phase<N>/model``. Rerunning with the same name picks up the last checkpoint
(Ray Train V2 keeps a snapshot per run name; ``resume_from_checkpoint`` is gone in 2.60), a phase whose
export exists is skipped, and worker failures within a run restart every worker from the last checkpoint.

This module only wires Ray to laconic_ray.training; the loop itself is training/loop.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from laconic_ray import storage
from laconic_ray.config import PhaseConfig, TrainConfig, to_dict
from laconic_ray.data.examples import example_files
from laconic_ray.distributed.cluster import ensure_ray, worker_env
from laconic_ray.distributed.resources import check_worker_group
from laconic_ray.model.build import build_encoder, encoder_settings, resolve_term_weights
from laconic_ray.model.encoder import LACONIC_FILE, SparseEncoder, dense_to_csr
from laconic_ray.model.losses import FlopsSchedule
from laconic_ray.training.batches import ExampleBatcher, TextBatcher, TrainBatch
from laconic_ray.training.export import export_encoder
from laconic_ray.training.loop import LoopSettings, TrainState, load_checkpoint, train_phase
from laconic_ray.training.objectives import (
    AdaptationModel,
    AdaptationObjective,
    ContrastiveObjective,
    DualEncoder,
)
from laconic_ray.training.parallel import build_parallel_model, choose_strategy, unwrap
from laconic_ray.training.schedule import build_scheduler
from laconic_ray.training.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)

FAULT_ENV = "LACONIC_FAULT_INJECT"  # "train:<phase>:<step>:<marker file>:<raise|kill>" (tests)
SHUFFLE_BUFFER = 2048


def phase_export(output: str, index: int) -> str:
    return storage.join(output, f"phase{index}", "model")


def _initial_source(config: TrainConfig, index: int) -> str | None:
    """The export this phase starts from, or None when it starts from ``config.model``."""
    for previous in range(index - 1, -1, -1):
        ran_before = config.phase is None and getattr(config, f"phase{previous}").enabled
        exported = storage.exists(
            storage.join(phase_export(config.output, previous), LACONIC_FILE), config.storage.options()
        )
        if ran_before or (config.phase is not None and exported):
            return phase_export(config.output, previous)
    return None


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """Plain values a worker needs for one phase (crosses the process boundary as the loop config)."""

    index: int
    model: dict[str, Any]  # ModelConfig as a dict
    init: str | None  # previous phase's export, or None (build from `model`)
    phase: dict[str, Any]  # PhaseConfig as a dict
    export: str
    total_steps: int
    accumulation: int
    parallelism: str
    mixed_precision: str
    gradient_checkpointing: bool
    checkpoint_every: int
    log_every: int
    options: dict[str, Any]
    trace_dir: str | None = None
    probe_texts: tuple[str, ...] = ()
    torch_threads: int | None = None  # CPU workers: one thread per reserved CPU
    tracking: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrackingConfig + the run's name


def _steps(phase: PhaseConfig, examples: int, world: int) -> tuple[int, int]:
    """(total optimizer steps, accumulation micro-steps per step)."""
    per_micro = world * phase.micro_batch_queries
    if phase.queries_per_step % per_micro:
        raise ValueError(
            f"queries_per_step {phase.queries_per_step} is not a multiple of num_workers x "
            f"micro_batch_queries = {per_micro}"
        )
    accumulation = phase.queries_per_step // per_micro
    batches_per_epoch = (examples // world) // phase.micro_batch_queries
    if batches_per_epoch == 0:
        raise ValueError(
            f"{examples} examples cannot fill one micro-batch of {phase.micro_batch_queries} per "
            f"worker on {world} workers"
        )
    if phase.steps:
        return phase.steps, accumulation
    steps = int(phase.epochs * batches_per_epoch) // accumulation
    if steps == 0:
        raise ValueError(
            f"{phase.epochs} epoch(s) of {examples} examples make no full optimizer step of "
            f"{phase.queries_per_step} queries; lower queries_per_step or raise epochs"
        )
    return steps, accumulation


# ----------------------------------------------------------------------------------------------- worker side


class _Collate(NumpyBatchCollateFn):
    def __init__(self, batcher) -> None:
        super().__init__()
        self.batcher = batcher

    def __call__(self, batch):
        return self.batcher(batch)


class _RayCallbacks:
    def __init__(self, rank: int, tracker: Tracker | None = None) -> None:
        self._rank = rank
        self.tracker = tracker

    @property
    def rank(self) -> int:
        return self._rank

    def checkpoint_dir(self) -> str:
        return tempfile.mkdtemp(prefix="laconic-ckpt-")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, metrics["step"])
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _fault(index: int, rank: int):
    """Test hook: fail once, on rank 0, at the named optimizer step (raise, or kill the process)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("train:"):
        return None
    _, phase, step, marker, how = spec.split(":", 4)
    if int(phase) != index or rank != 0:
        return None

    def hook(state: TrainState, _batch: TrainBatch) -> None:
        if state.step == int(step) and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write("failed once\n")
            if how == "kill":
                os._exit(1)
            raise RuntimeError(f"injected failure at phase {index} step {step}")

    return hook


def _tracer(trace_dir: str | None, index: int, rank: int):
    """Test hook: record which examples each micro-step applied (one file per micro-step, rewritten on redo)."""
    if not trace_dir:
        return None
    os.makedirs(trace_dir, exist_ok=True)

    def trace(state: TrainState, batch: TrainBatch) -> None:
        path = os.path.join(trace_dir, f"phase{index}-rank{rank}-micro{state.micro_step:06d}.json")
        with open(path, "w") as f:
            json.dump(batch.keys, f)

    return trace


def _chain(*hooks):
    hooks = [h for h in hooks if h is not None]

    def run(state, batch):
        for hook in hooks:
            hook(state, batch)

    return run if hooks else None


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker: build, (resume,) train, export."""
    from laconic_ray.config import ModelConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # Ray Train logs every report at INFO under a logger named by its file path; our own line says enough
    logging.getLogger(ray.train.v2._internal.execution.context.__file__).setLevel(logging.WARNING)
    plan = PhasePlan(**loop_config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    model_config = ModelConfig(**plan.model)
    phase = PhaseConfig(**{k: v for k, v in plan.phase.items() if k != "lora"})
    lora = plan.phase["lora"]
    options = storage.StorageOptions(**plan.options)
    torch.manual_seed(phase.seed + rank)
    if plan.torch_threads and device.type == "cpu":
        torch.set_num_threads(plan.torch_threads)

    mode = "causal" if plan.index == 0 else model_config.mode
    settings = {
        **encoder_settings(model_config),
        "mode": mode,
        "query_max_length": phase.query_max_length,
        "passage_max_length": phase.passage_max_length,
    }

    def rebuild(device: str | None = None) -> SparseEncoder:
        if plan.init:
            return SparseEncoder.from_pretrained(
                plan.init,
                dtype=model_config.dtype,
                options=options,
                attn_implementation=model_config.attn_implementation,
                vocab_chunk=model_config.vocab_chunk,
                pooling_layout=model_config.pooling_layout,
                device=device,
                **settings,
            )
        return build_encoder(
            dataclasses.replace(
                model_config, **{k: v for k, v in settings.items() if hasattr(model_config, k)}
            ),
            device=device,
            options=options,
        )

    lora_kwargs = (
        {
            "r": lora["r"],
            "alpha": lora["alpha"],
            "dropout": lora["dropout"],
            "target_modules": list(lora["target_modules"]),
        }
        if lora["enabled"]
        else None
    )
    wrapper = AdaptationModel if plan.index == 0 else DualEncoder
    strategy = choose_strategy(plan.parallelism, device, world)
    model, encoder, initial = build_parallel_model(
        rebuild,
        wrapper,
        strategy,
        device,
        rank,
        lora=lora_kwargs,
        mixed_precision=plan.mixed_precision,
        gradient_checkpointing=plan.gradient_checkpointing,
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=phase.lr, weight_decay=phase.weight_decay
    )
    scheduler = build_scheduler(optimizer, plan.total_steps, phase.warmup_ratio)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, model, optimizer, scheduler, rank)
        if rank == 0:
            log.info(
                "phase %d resumes at step %d (epoch %d, %d micro-batches in)",
                plan.index,
                state.step,
                state.epoch,
                state.batch_in_epoch,
            )

    history: list[dict[str, Any]] = []
    if not state.done:
        text_format = dataclasses.replace(  # the encoder's own layout (a checkpoint's, or the config's)
            encoder.settings.text_format,
            query_max_length=phase.query_max_length,
            passage_max_length=phase.passage_max_length,
        )
        if plan.index == 0:
            batcher: Any = TextBatcher(encoder.tokenizer, text_format)
            objective: Any = AdaptationObjective(phase.saturation_weight)
        else:
            batcher = ExampleBatcher(encoder.tokenizer, text_format, mode, phase.group_size)
            objective = ContrastiveObjective(
                phase.group_size,
                FlopsSchedule(phase.flops_query, phase.flops_ramp),
                FlopsSchedule(phase.flops_passage, phase.flops_ramp),
                phase.temperature,
                phase.gather_negatives,
            )
        shard = ray.train.get_dataset_shard("train")
        collate = _Collate(batcher)

        def batches(epoch: int):
            return shard.iter_torch_batches(
                batch_size=phase.micro_batch_queries,
                collate_fn=collate,
                drop_last=True,
                local_shuffle_buffer_size=SHUFFLE_BUFFER,
                local_shuffle_seed=phase.seed * 1000 + epoch,
            )

        settings_loop = LoopSettings(
            plan.total_steps,
            plan.accumulation,
            phase.max_grad_norm,
            plan.checkpoint_every,
            plan.log_every,
            plan.index,
        )
        tracker = open_tracker(plan.tracking, plan.tracking.get("run", "laconic"), plan.index, rank)
        try:
            state = train_phase(
                model,
                objective,
                optimizer,
                scheduler,
                batches,
                state,
                settings_loop,
                _RayCallbacks(rank, tracker),
                device,
                on_batch=_chain(_tracer(plan.trace_dir, plan.index, rank), _fault(plan.index, rank)),
                history=history,
            )
        finally:
            if tracker is not None:
                tracker.close()

    probes = _probe(model, encoder, plan.probe_texts)  # collective under FSDP: every rank runs it
    record = {
        "phase": f"phase{plan.index}",
        "init": plan.init or model_config.name_or_path or "random init",
        "data": phase.data,
        "steps": plan.total_steps,
        "mode": mode,
        "lora": f"r={lora_kwargs['r']} alpha={lora_kwargs['alpha']}" if lora_kwargs else None,
    }
    export_encoder(model, rebuild, lora_kwargs, plan.export, rank, options, wrapper=wrapper, training=record)
    return {
        "step": state.step,
        "tokens": state.tokens,
        "history": history,
        "initial_digest": initial,
        "probes": probes,
        # the allocator's peak on this rank's GPU over the phase (what `laconic plan` estimates)
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
        if device.type == "cuda"
        else None,
    }


def _probe(model: torch.nn.Module, encoder: SparseEncoder, texts: tuple[str, ...]) -> dict[str, list] | None:
    """The trained (unmerged) model's vectors for a few texts, to compare with the export's (tests).

    Through the wrapped model's own forward and on every rank: under FSDP each rank must take part in the
    same gathers (a rank-0-only probe met the other ranks already in the export's gathers and aborted)."""
    if not texts:
        return None
    batch = encoder.prepare(list(texts), "passage").to(encoder.device)
    args = (batch.input_ids, batch.attention_mask, batch.pool_mask)
    was_training = model.training
    model.eval()  # no LoRA dropout: the export is used in eval mode too
    try:
        with torch.no_grad():
            out = model(*args, *args) if isinstance(unwrap(model), DualEncoder) else model(*args)
    finally:
        model.train(was_training)
    weights = out[1] if isinstance(unwrap(model), DualEncoder) else out[2]
    csr = dense_to_csr(weights.float().cpu(), None)  # as encode_documents: every weight > 0
    return {"indptr": csr.indptr.tolist(), "indices": csr.indices.tolist(), "data": csr.data.tolist()}


# ----------------------------------------------------------------------------------------------- driver side


def run_phase(config: TrainConfig, index: int) -> dict[str, Any]:
    phase: PhaseConfig = getattr(config, f"phase{index}")
    options = config.storage.options()
    export = phase_export(config.output, index)
    if storage.exists(storage.join(export, LACONIC_FILE), options):
        log.info("phase %d: %s already exported; skipping", index, export)
        return {"phase": index, "export": export, "skipped": "already exported"}
    init = _initial_source(config, index)
    if config.phase is not None and index == 2 and init is None:
        raise FileNotFoundError(
            f"phase {index} starts from phase {index - 1}'s export, which is missing under "
            f"{config.output}; run phase {index - 1} first"
        )
    world = _world(config, index)
    data_uri = phase.data or (config.phase1.data if index == 0 else "")
    manifest, files = example_files(data_uri, options)
    total_steps, accumulation = _steps(phase, manifest.total_rows, world)
    log.info(
        "phase %d: %d examples, %d workers, %d optimizer steps x %d micro-steps, from %s",
        index,
        manifest.total_rows,
        world,
        total_steps,
        accumulation,
        init or "the model config",
    )

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same batches in the same order on every (re)run
    pafs, _ = storage.pyarrow_filesystem(files[0], options)
    paths = [storage.filesystem(f, options)[1] for f in files]
    dataset = ray.data.read_parquet(paths, filesystem=pafs)

    plan = PhasePlan(
        index=index,
        model=to_dict(config.model),
        init=init,
        phase=to_dict(phase),
        export=export,
        total_steps=total_steps,
        accumulation=accumulation,
        parallelism=config.parallelism,
        mixed_precision=config.mixed_precision,
        gradient_checkpointing=config.gradient_checkpointing,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        options=dataclasses.asdict(options),
        trace_dir=config.trace_dir,
        probe_texts=tuple(config.probe_texts),
        tracking={
            **dataclasses.asdict(config.logging),
            "dir": config.logging.dir or storage.join(config.output, "tensorboard")
            if config.logging.backend == "tensorboard"
            else config.logging.dir,
            "run": config.name,
        },
    )
    resources = worker_resources(config)
    storage_fs, storage_path = storage.pyarrow_filesystem(storage.join(config.output, "ray"), options)
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config=dataclasses.asdict(plan),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=world,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=f"{config.name}-phase{index}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            worker_runtime_env=worker_env(),
        ),
        datasets={"train": dataset},
    )
    started = time.perf_counter()
    result = trainer.fit()
    worker = dict(result.return_value or {})
    history = worker.pop("history", [])
    losses = [h["loss"] for h in history if "loss" in h]
    # every logged step, one JSON line each, beside the export (the summary keeps first and last loss only)
    history_uri = storage.join(config.output, f"phase{index}", "history.jsonl")
    storage.write_bytes(history_uri, "".join(json.dumps(h) + "\n" for h in history).encode(), options)
    return {
        "phase": index,
        "export": export,
        "steps": total_steps,
        "examples": manifest.total_rows,
        "workers": world,
        "seconds": round(time.perf_counter() - started, 2),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "final_metrics": result.metrics,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "history": history_uri,
        "worker": worker,
    }


def read_history(uri: str, options: storage.StorageOptions | None = None) -> list[dict[str, Any]]:
    """A phase's logged steps (``history.jsonl``, written by ``run_phase``)."""
    return [json.loads(line) for line in storage.read_bytes(uri, options).decode().splitlines() if line]


def _world(config: TrainConfig, index: int) -> int:
    return getattr(config, f"phase{index}").num_workers or config.scaling.num_workers


def worker_resources(config: TrainConfig) -> dict[str, float]:
    """What each training worker reserves (Ray Train's ``resources_per_worker``)."""
    resources = {"CPU": config.scaling.cpus_per_worker, **config.scaling.resources_per_worker}
    if config.scaling.use_gpu:
        resources["GPU"] = config.scaling.gpus_per_worker
    return resources


def run_train(config: TrainConfig) -> dict[str, Any]:
    if config.model.name_or_path:  # before the cluster: a model the driver cannot reach fails in one line
        from laconic_ray.model.encoder import check_model_source

        check_model_source(config.model.name_or_path, config.storage.options(), key="model.name_or_path")
    for index in config.phases():  # and every contrastive phase's examples are finished
        if index > 0:
            example_files(getattr(config, f"phase{index}").data, config.storage.options())
    # idf:<collection> term weights: computed here once (a file every worker reads), before the cluster
    config = dataclasses.replace(
        config, model=resolve_term_weights(config.model, config.output, config.storage.options())
    )
    ensure_ray(config.ray)
    for index in config.phases():  # a worker group the cluster can never hold fails now, not after phase 1
        check_worker_group(worker_resources(config), _world(config, index), config.scaling.placement_strategy)
    phases = [run_phase(config, index) for index in config.phases()]
    return {
        "output": config.output,
        "name": config.name,
        "phases": phases,
        "model": phases[-1]["export"] if phases else None,
    }
