"""Experiment tracking: the loop's metric reports, on rank 0, to TensorBoard, MLflow or Weights & Biases.

Ray Train (V2) leaves tracking to the libraries' own calls inside the training function, on one rank
(docs.ray.io, Train user guide "Experiment Tracking"); the Tune-style logger callbacks are not part of
Train V2. So the worker opens one tracker per phase on rank 0 and logs each report the loop makes (every
``log_every`` steps: loss and its parts, query/passage nnz, lr, grad norm, tokens/s, s/step) under
``phase<N>/<metric>`` at the phase's optimizer step.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

BACKENDS = ("none", "tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
SKIP = {"step", "phase", "epoch"}  # the position, not a metric


def missing_package(backend: str) -> str | None:
    """The package ``backend`` needs when it is not importable here (checked on the driver, early)."""
    package = PACKAGES.get(backend)
    return package if package and importlib.util.find_spec(package) is None else None


class Tracker:
    def __init__(self, backend: str, directory: str, project: str, run: str, phase: int) -> None:
        self.backend, self.phase = backend, phase
        if backend == "tensorboard":
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(directory, run))  # local, or s3:// through boto3
        elif backend == "mlflow":
            import mlflow

            if directory:
                mlflow.set_tracking_uri(directory)
            mlflow.set_experiment(project)
            self._run = mlflow.start_run(run_name=f"{run}-phase{phase}")
        elif backend == "wandb":
            import wandb

            self._run = wandb.init(project=project, name=f"{run}-phase{phase}", dir=directory or None)
        else:
            raise ValueError(f"tracking backend must be one of {BACKENDS}, got {backend!r}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        values = {
            f"phase{self.phase}/{k}": float(v)
            for k, v in metrics.items()
            if k not in SKIP and isinstance(v, int | float)
        }
        if not values:
            return
        if self.backend == "tensorboard":
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
        elif self.backend == "mlflow":
            import mlflow

            mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)
        else:
            self._run.log(values, step=step)

    def close(self) -> None:
        if self.backend == "tensorboard":
            self._writer.close()
        elif self.backend == "mlflow":
            import mlflow

            mlflow.end_run()
        else:
            self._run.finish()


def open_tracker(settings: dict[str, Any], run: str, phase: int, rank: int) -> Tracker | None:
    """A tracker on rank 0 when a backend is set; None elsewhere."""
    if rank != 0 or settings.get("backend", "none") == "none":
        return None
    return Tracker(
        settings["backend"], settings.get("dir", ""), settings.get("project", "laconic"), run, phase
    )
