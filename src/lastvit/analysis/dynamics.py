"""Training dynamics (paper Fig. 3): Point-in-Box and accuracy on a fixed probe set during training."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lastvit.io import write_csv as io_write_csv
from lastvit.viz.figures import plot_dynamics

__all__ = ["DynamicsCallback", "plot_dynamics", "probe_metrics", "write_csv"]

FIELDS = ["run", "step", "epoch", "pib", "pib_center", "accuracy", "num_images"]


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fields: list[str] | None = None) -> Path:
    """Write rows to a CSV atomically (:func:`lastvit.io.write_csv`)."""
    return io_write_csv(path, rows, fields)


def _default_model(pl_module: torch.nn.Module) -> torch.nn.Module:
    if hasattr(pl_module, "forward_tokens"):
        return pl_module
    for name in ("model", "net", "backbone", "student"):
        m = getattr(pl_module, name, None)
        if m is not None and hasattr(m, "forward_tokens"):
            return m
    raise ValueError("DynamicsCallback cannot find a LastViT on the LightningModule; pass get_model=")


@torch.no_grad()
def probe_metrics(model: torch.nn.Module, batches: Iterable[dict[str, Any]], source: str = "auto") -> dict[str, Any]:
    """PiB (any, centre) and accuracy of ``model`` on collated batches (restores the model's train/eval mode)."""
    from lastvit.analysis.pib import evaluate_pib

    was_training = model.training
    device = next(model.parameters()).device
    try:
        metrics, _ = evaluate_pib(model, batches, source=source, device=device)
    finally:
        model.train(was_training)
    return metrics


class DynamicsCallback(Callback):
    """Every ``every_n_steps`` optimiser steps (and at the start and end of training) measure PiB (any-overlap and
    centre rule) and accuracy on a fixed probe set; log ``probe/pib``, ``probe/pib_center``, ``probe/accuracy`` to
    the trainer's loggers and write ``out_dir/dynamics.csv`` (plus ``dynamics.png`` at the end).

    Args:
        probe: one collated batch (dict with ``image``, ``boxes``, ``label``) or an iterable of such batches.
        every_n_steps: measurement period in global steps.
        out_dir: where the CSV / PNG go (None: no files, loggers only).
        run_name: value of the CSV's ``run`` column.
        get_model: picks the LastViT out of the LightningModule (default: the module itself or its ``.model``).
    """

    def __init__(
        self,
        probe: dict[str, Any] | Iterable[dict[str, Any]],
        every_n_steps: int = 100,
        out_dir: str | os.PathLike | None = None,
        *,
        run_name: str = "run",
        source: str = "auto",
        get_model: Callable[[Any], torch.nn.Module] | None = None,
        plot: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.batches = [probe] if isinstance(probe, dict) else list(probe)
        if not self.batches:
            raise ValueError("DynamicsCallback needs a non-empty probe set")
        self.every_n_steps = int(every_n_steps)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_name, self.source, self.get_model, self.plot = run_name, source, get_model, plot
        self.rows: list[dict[str, Any]] = []
        self._done: set[int] = set()

    @property
    def csv_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "dynamics.csv"

    def measure(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        step = int(trainer.global_step)
        model = (self.get_model or _default_model)(pl_module)
        m = probe_metrics(model, self.batches, self.source)
        row = {"run": self.run_name, "step": step, "epoch": int(trainer.current_epoch), "pib": m["pib"],
               "pib_center": m["pib_center"], "accuracy": m.get("accuracy", float("nan")),
               "num_images": m["num_images"]}
        self.rows.append(row)
        self._done.add(step)
        logged = {f"probe/{k}": float(row[k]) for k in ("pib", "pib_center", "accuracy")}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
        if self.csv_path is not None and trainer.is_global_zero:
            write_csv(self.csv_path, self.rows, FIELDS)
        return row

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if int(trainer.global_step) not in self._done:
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step % self.every_n_steps == 0 and step not in self._done:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if int(trainer.global_step) not in self._done:
            self.measure(trainer, pl_module)
        if self.plot and self.csv_path is not None and trainer.is_global_zero and self.rows:
            plot_dynamics(self.csv_path, self.out_dir / "dynamics.png")
