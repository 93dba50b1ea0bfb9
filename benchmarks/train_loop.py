"""Step time of the Ray Train loop (1 worker) vs the same loop in a plain torch process.

    .venv/bin/python benchmarks/train_loop.py [--steps 12] [--repeats 3]

Both run training/loop.py's ``train_phase`` on the tiny preset model with the same phase-1 examples (weak
pairs mined from SciFact), batch layout and objective, one process each with 2 torch threads. The plain loop
feeds pre-tokenised batches from memory and checkpoints to local disk; the Ray run reads the examples
through Ray Data (get_dataset_shard + iter_torch_batches with the tokenising collate), reports through
ray.train.report and checkpoints through Ray Train. Seconds per optimizer step are taken from each loop's
own per-step report (startup excluded), medians over steps and repeats, variants alternated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.setup()

OVERRIDES = [
    "phase1.micro_batch_queries=16",
    "phase1.queries_per_step=16",
    "log_every=1",
    "checkpoint_every=1000",
    "scaling.num_workers=1",
    "scaling.cpus_per_worker=2",
    "phase=1",
]


def step_seconds(history: list[dict]) -> list[float]:
    return [h["seconds_per_step"] for h in history[2:]]


def plain(config, steps: int) -> tuple[list[float], float]:
    import numpy as np
    import torch

    from laconic_ray.data.examples import read_examples
    from laconic_ray.model.build import build_encoder
    from laconic_ray.model.losses import FlopsSchedule
    from laconic_ray.model.tokenization import TextFormat
    from laconic_ray.training.batches import ExampleBatcher
    from laconic_ray.training.loop import LoopSettings, TrainState, train_phase
    from laconic_ray.training.objectives import ContrastiveObjective, DualEncoder
    from laconic_ray.training.schedule import build_scheduler

    torch.set_num_threads(2)
    phase = config.phase1
    encoder = build_encoder(config.model)
    model = DualEncoder(encoder)
    examples = list(read_examples(phase.data))
    batcher = ExampleBatcher(
        encoder.tokenizer,
        TextFormat(query_max_length=phase.query_max_length, passage_max_length=phase.passage_max_length),
        config.model.mode,
        1,
    )
    micro = phase.micro_batch_queries
    columns = ("query", "positive", "negatives", "query_id", "positive_id")
    batches = [
        batcher(
            {c: np.array([getattr(e, c) for e in examples[i : i + micro]], dtype=object) for c in columns}
        )
        for i in range(0, len(examples) - micro + 1, micro)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=phase.lr)
    scheduler = build_scheduler(optimizer, steps, phase.warmup_ratio)
    objective = ContrastiveObjective(
        1,
        FlopsSchedule(phase.flops_query, phase.flops_ramp),
        FlopsSchedule(phase.flops_passage, phase.flops_ramp),
    )

    class Local:
        rank = 0

        def checkpoint_dir(self):
            return tempfile.mkdtemp()

        def report(self, metrics, checkpoint_dir):
            pass

    history: list[dict] = []
    state = train_phase(
        model,
        objective,
        optimizer,
        scheduler,
        lambda epoch: iter(batches),
        TrainState(),
        LoopSettings(steps, 1, phase.max_grad_norm, 1000, 1, 1),
        Local(),
        torch.device("cpu"),
        history=history,
    )
    return step_seconds(history), state.tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from laconic_ray.config import MineConfig, TrainConfig, load_config
    from laconic_ray.data.mining import run_mine
    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV
    from laconic_ray.distributed.train import run_phase

    tmp = Path(tempfile.mkdtemp())
    run_mine(
        load_config(
            MineConfig,
            "conf/mine.yaml",
            ["dataset=scifact", f"output={tmp}/weak", "phase=1", "max_pairs=2048"],
        )
    )
    import os

    os.environ.update(LOCAL_RAY_ENV)
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    times: dict[str, list[float]] = {"plain": [], "ray_train": []}
    tokens_per_step = 0.0
    for repeat in range(args.repeats):
        config = load_config(
            TrainConfig,
            "conf/train/tiny.yaml",
            [
                f"output={tmp}/run{repeat}",
                f"phase1.data={tmp}/weak",
                f"phase1.steps={args.steps}",
                *OVERRIDES,
            ],
        )
        seconds, tokens = plain(config, args.steps)
        times["plain"] += seconds
        tokens_per_step = tokens / args.steps
        started = time.perf_counter()
        summary = run_phase(config, 1)
        times["ray_train"] += step_seconds(summary["worker"]["history"])
        print(f"repeat {repeat}: ray run {time.perf_counter() - started:.1f} s", file=sys.stderr)
    result = {"steps": args.steps, "repeats": args.repeats, "tokens_per_step": round(tokens_per_step)}
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {"median_step_s": round(median, 3), "tokens_per_s": round(tokens_per_step / median)}
    result["ratio_ray_over_plain"] = round(
        result["ray_train"]["median_step_s"] / result["plain"]["median_step_s"], 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
