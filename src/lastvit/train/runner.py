"""``fit(cfg)``: the one training entry point, for every task, from a laptop CPU to a multi-node GPU cluster.

A task module (``lastvit.train.classify``, ``clip``, ``dino``) supplies only ``DEFAULTS`` (its schema),
``resolve_config``, ``build(cfg) -> (LightningModule, LightningDataModule)`` and ``export(module, out_dir, extra)``;
its LightningModule carries the trained network as ``.model`` and its final numbers as ``.summary()``. ``fit``
resolves the recipe, seeds, resolves resume, builds the one ``Trainer`` (the atomic :class:`LastCheckpoint`, the
:class:`BestExport`, the CSV/TensorBoard loggers), fits, and exports on rank 0.

Outputs in ``out_dir``: ``model.pt`` (the trained network in lastvit's format: the classifier, the whole CLIP, the
DINO teacher backbone; DINO adds ``dino_checkpoint.pth`` in the official layout), ``model_best.pt`` (best val
top-1, label supervision), ``metrics.json`` (``{"task", "metrics", "config", "files"}``),
``checkpoints/last.ckpt`` (Lightning full state for ``--resume``; written to a temporary name and renamed),
``logs/version_N/metrics.csv`` (+ TensorBoard when ``tensorboard`` is importable). SIGTERM (as cluster schedulers
send it) saves ``checkpoints/last.ckpt`` at the current step and raises :class:`lastvit.rundir.RunInterrupted`
(exit status 143); the same command with ``--resume`` continues from there.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lastvit.io import write_json
from lastvit.rundir import RunInterrupted
from lastvit.train.config import ConfigError, load_config, resolve_config

__all__ = ["fit", "build", "make_trainer", "LastCheckpoint", "BestExport", "resolve_resume", "task_module",
           "load_config", "resolve_config"]


def task_module(task: str) -> ModuleType:
    """``lastvit.train.<task>``: the module that supplies ``DEFAULTS``, ``build`` and ``export``."""
    try:
        return importlib.import_module(f"lastvit.train.{task}")
    except ModuleNotFoundError as e:
        raise ConfigError(f"config: task {task!r} is not available (no module lastvit.train.{task}: {e})") from None


def build(cfg: dict[str, Any]) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Dispatch on ``cfg["task"]``: ``lastvit.train.<task>.build(cfg)``."""
    return task_module(cfg.get("task", "classify")).build(cfg)


def _atomic_json(obj: Any, path: str | os.PathLike) -> None:
    write_json(path, obj)


class LastCheckpoint(Callback):
    """Full Lightning state to ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimiser steps and at the end of
    training: all ranks call ``trainer.save_checkpoint`` on a temporary name in the same folder, rank 0 renames
    it over ``last.ckpt`` (``os.replace``: atomic), so a kill never leaves a truncated ``last.ckpt``."""

    def __init__(self, dirpath: str, every_n_steps: int) -> None:
        self.dirpath, self.every = dirpath, int(every_n_steps or 0)
        self._saved_at = -1

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, "last.ckpt")

    def save(self, trainer: L.Trainer) -> None:
        tmp = os.path.join(self.dirpath, ".last.ckpt.tmp")
        if trainer.is_global_zero:
            os.makedirs(self.dirpath, exist_ok=True)
        trainer.strategy.barrier()
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state: optimiser, loops, callbacks
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier()
        self._saved_at = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._saved_at:
            self.save(trainer)
        if trainer.received_sigterm:  # Lightning's handler only notes it; stop after this step, not at epoch end
            raise SIGTERMException()

    def state_dict(self) -> dict[str, Any]:
        """The random state at the save (dropout / drop-path draws), so a resumed run continues the same draws."""
        state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """SIGTERM (Lightning raises ``SIGTERMException`` on every rank between steps): save the current step."""
        if isinstance(exception, SIGTERMException) and trainer.global_step != self._saved_at:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_at:
            self.save(trainer)


class BestExport(Callback):
    """After each validation (not the sanity check), rank 0 writes ``model_best.pt`` (lastvit format) when the
    val top-1 improved. Its state (best value and step) is part of the Lightning checkpoint."""

    def __init__(self, path: str, monitor: str = "val/top1") -> None:
        self.path, self.monitor = path, monitor
        self.best: float | None = None
        self.best_step = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = getattr(pl_module, "val_metrics", {}).get(self.monitor)
        if value is None or (self.best is not None and value <= self.best):
            return
        self.best, self.best_step = float(value), int(trainer.global_step)
        if trainer.is_global_zero:
            _export(pl_module, self.path, {"step": self.best_step, "metrics": dict(pl_module.val_metrics),
                                           "kind": "best"})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), int(state.get("best_step", -1))


def _export(pl_module: L.LightningModule, path: str, extra: dict[str, Any]) -> None:
    from lastvit.checkpoints import save_checkpoint

    model = getattr(pl_module, "model", pl_module)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_checkpoint(model, path, extra=extra)


def resolve_resume(cfg: dict[str, Any]) -> str | None:
    """``trainer.resume``: False -> None; "auto" -> ``out_dir/checkpoints/last.ckpt`` if it exists; True ->
    that file (an error when missing); a path -> that path (an error when missing)."""
    r = cfg["trainer"].get("resume", False)
    last = os.path.join(cfg["out_dir"], "checkpoints", "last.ckpt")
    if r in (False, None, "false", "no", ""):
        return None
    if r == "auto":
        return last if os.path.isfile(last) else None
    path = last if r is True else str(r)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return path


def _loggers(out_dir: str) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(out_dir, name="logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out_dir, name="tb"))
    except ImportError:
        pass
    return loggers


def make_trainer(cfg: dict[str, Any], callbacks: list[Callback] | None = None) -> L.Trainer:
    """The ``lightning.Trainer`` of a resolved recipe's ``trainer`` section, with the checkpoint/export callbacks."""
    t, out = cfg["trainer"], cfg["out_dir"]
    cbs: list[Callback] = [LastCheckpoint(os.path.join(out, "checkpoints"), int(t.get("ckpt_every") or 0)),
                           BestExport(os.path.join(out, "model_best.pt"))]
    cbs += list(callbacks or [])
    val_every = t.get("val_every")
    strategy = t.get("strategy", "auto")
    if strategy == "ddp" and t.get("accelerator") == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    max_steps = t.get("max_steps")
    return L.Trainer(
        accelerator=t.get("accelerator", "auto"),
        devices=t.get("devices", 1),
        num_nodes=int(t.get("num_nodes", 1)),
        strategy=strategy,
        precision=t.get("precision", "32-true"),
        max_steps=-1 if max_steps is None else int(max_steps),
        max_epochs=t.get("max_epochs"),
        accumulate_grad_batches=int(t.get("accumulate", 1)),
        gradient_clip_val=cfg.get("optim", {}).get("grad_clip"),
        log_every_n_steps=int(t.get("log_every", 10)),
        val_check_interval=int(val_every) if val_every else None,
        check_val_every_n_epoch=None if val_every else 1,
        num_sanity_val_steps=0,
        callbacks=cbs,
        logger=_loggers(out),
        default_root_dir=out,
        enable_checkpointing=False,
        enable_progress_bar=bool(t.get("progress_bar", True)),
        enable_model_summary=bool(t.get("model_summary", False)),
        use_distributed_sampler=False,
        deterministic=bool(t.get("deterministic", False)),
    )


#: Lightning messages about choices the recipe made on purpose (num_workers=0 on the in-memory synthetic sets, the
#: step-based schedule, the loggers' folder) or internals: not the user's to act on
_QUIET = (r".*does not have many workers.*", r".*num_workers.*", r".*The number of training batches.*",
          r".*weights_only.*", r".*Checkpoint directory .* exists.*", r".*predict_dataloader.*",
          r".*`training_step` returned `None`.*", r".*LeafSpec.*",
          # the frozen parts (ovdet's CLIP, DINO's teacher) are in eval mode by design
          r"Found \d+ module\(s\) in eval mode.*")


#: Lightning's info lines that are not the user's business (hardware banner, advertisements, defaults we set)
_QUIET_LOG = ("GPU available", "TPU available", "HPU available", "Tip:", "litlogger", "weights_only",
              "`Trainer.fit` stopped", "LOCAL_RANK:", "You are using a CUDA device")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(q in msg for q in _QUIET_LOG)


@contextlib.contextmanager
def _quiet() -> Any:
    """Lightning's banners and tips and the warnings above are hidden while training (the rest of its log, e.g.
    the distributed set-up, stays); ``LASTVIT_DEBUG=1`` shows everything."""
    if os.environ.get("LASTVIT_DEBUG"):
        yield
        return
    flt = _DropLines()
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    handlers = [h for n in names for h in logging.getLogger(n).handlers]
    with warnings.catch_warnings():
        for msg in _QUIET:
            warnings.filterwarnings("ignore", message=msg)
        for h in handlers:
            h.addFilter(flt)
        try:
            yield
        finally:
            for h in handlers:
                h.removeFilter(flt)


@contextlib.contextmanager
def _safe_resume() -> Any:
    """Resume loads the project's own checkpoints with ``weights_only=True`` and the checkpoint allow-list."""
    from lastvit.checkpoints import allowed_globals

    extra: list[Any] = list(allowed_globals())
    with contextlib.suppress(ImportError):
        from lightning.fabric.utilities.data import AttributeDict

        extra.append(AttributeDict)
    with torch.serialization.safe_globals(extra):
        yield


def fit(cfg: dict[str, Any], callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train from a recipe dict (raw or resolved) of any task.

    Returns ``{"model": the trained network (eval mode, CPU), "metrics": final metrics (``step`` included),
    "out_dir": Path, "model_path": Path of model.pt, "step": global step}``. A SIGTERM saves
    ``checkpoints/last.ckpt`` and raises :class:`lastvit.rundir.RunInterrupted` (exit status 143).
    """
    cfg = resolve_config(cfg)
    task = cfg["task"]
    tm = task_module(task)
    out_dir = Path(cfg["out_dir"])
    ckpt_path = resolve_resume(cfg)
    L.seed_everything(int(cfg["trainer"].get("seed", 0)), workers=True, verbose=False)
    module, dm = tm.build(cfg)
    with _quiet():
        trainer = make_trainer(cfg, callbacks)
        try:
            with _safe_resume():
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        except SIGTERMException:
            last = out_dir / "checkpoints" / "last.ckpt"
            if trainer.is_global_zero:
                print(f"lastvit train: SIGTERM at step {int(trainer.global_step)}: saved {last}; the same command "
                      "with --resume continues from there", file=sys.stderr, flush=True)
            raise RunInterrupted() from None
        step = int(trainer.global_step)
        if hasattr(module, "val_metrics") and (getattr(module, "val_step", None) != step or not module.val_metrics):
            trainer.validate(module, datamodule=dm, verbose=False)
    metrics = dict(module.summary())
    metrics["step"] = step
    model_path = out_dir / "model.pt"
    if trainer.is_global_zero:
        files = tm.export(module, out_dir, {"step": step, "metrics": _scalars(metrics), "kind": "last", "task": task})
        _atomic_json({"task": task, "metrics": metrics, "config": cfg, "files": files}, out_dir / "metrics.json")
    trainer.strategy.barrier()
    model = module.model
    model.eval()
    if torch.cuda.is_available():
        model.cpu()
    return {"model": model, "metrics": metrics, "out_dir": out_dir, "model_path": model_path, "step": step}


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
