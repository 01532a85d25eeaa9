"""One miniature run per supervision paradigm: train a readout on the synthetic benchmark, then diagnose it.

The paper's claim covers three paradigms (label, text and self supervision; paper §3.5, Table 3). ``lastvit demo
--paradigm`` and ``lastvit study`` (``paradigm:`` key) both go through :func:`run_one`, so every number of the
demo and of the study tables comes from the same code:

* ``label``: the demo recipe (:data:`lastvit.demo.DEMO_RECIPE`); accuracy is the model's own head;
* ``text``: a tiny CLIP (:data:`TEXT_RECIPE`) trained on the synthetic captions; accuracy is zero-shot top-1 over
  the shape names with prompt ensembling;
* ``self``: DINO (:data:`SELF_RECIPE`); accuracy is weighted kNN top-1 (k 20, T 0.07) with a bank of
  un-augmented training images.

Every paradigm then gets the same diagnostics on the held-out split (:func:`lastvit.demo.evaluate_readout`):
Point-in-Box, foreground/background score AUROC, patch-token norms and high-norm outliers; the masking probe needs
a classifier head, so it runs for ``label`` only.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["PARADIGMS", "TEXT_RECIPE", "SELF_RECIPE", "ACCURACY_NAMES", "paradigm_recipe", "run_one"]

PARADIGMS = ("label", "text", "self")
ACCURACY_NAMES = {"label": "accuracy (own head)", "text": "zero-shot top-1", "self": "kNN top-1"}

# The demo's data (6 textured shape classes, objects 30-50% of the side, 6 distractors): the setting in which the
# micro ViT learns within the CPU budget (docs/RESULTS.md).
_SYNTHETIC = {"num_classes": 6, "image_size": 64, "min_size": 0.3, "max_size": 0.5, "clutter": 6, "pattern": 0.6}

#: Text supervision: a tiny CLIP (micro ViT image tower, 2-layer 64-wide text tower) on the synthetic captions.
TEXT_RECIPE: dict[str, Any] = {
    "task": "clip",
    "model": {"vision": "vit_micro_patch8_64",
              "text": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
              "embed_dim": 64, "aggregator": "lazystrike", "aggregator_kwargs": {}},
    "data": {"kind": "synthetic", "synthetic": dict(_SYNTHETIC), "train_size": 8192, "val_size": 512},
    "optim": {"batch_size": 64, "lr": 1.0e-3, "weight_decay": 0.1, "warmup_steps": 100},
    "eval": {"templates": ["a {}", "a small {}", "a medium {}", "a large {}"]},
    "trainer": {"accelerator": "cpu", "max_steps": 1500, "log_every": 50, "val_every": None, "seed": 0,
                "progress_bar": True},
}

#: Self supervision: DINO with 2 global (64 px) and 2 local (32 px) crops; student and EMA teacher share the readout.
#: Sized for the CPU (384 steps of 64; about 3x the cost of a label step each): a smaller head (256 prototypes), a
#: faster teacher (momentum 0.98) and lr 1e-3 at batch 64 learned faster than DINO's defaults in our probes, but
#: it stays far from converged (docs/RESULTS.md); on a GPU raise trainer.max_epochs.
SELF_RECIPE: dict[str, Any] = {
    "task": "dino",
    "model": {"name": "vit_micro_patch8_64", "aggregator": "lazystrike", "aggregator_kwargs": {},
              "drop_path_rate": 0.0},
    "dino": {"out_dim": 256, "hidden_dim": 512, "bottleneck_dim": 128, "momentum_teacher": 0.98,
             "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
             "freeze_last_layer": 1},
    "crops": {"global_size": 64, "local_size": 32, "n_local": 2},
    "optim": {"lr": 0.004, "min_lr": 1.0e-5, "warmup_epochs": 1, "weight_decay": 0.04, "weight_decay_end": 0.4,
              "clip_grad": 3.0},
    "data": {"kind": "synthetic", "synthetic": dict(_SYNTHETIC), "train_size": 4096, "val_size": 512,
             "global_batch": 64},
    "eval": {"enabled": False},  # the diagnostics of run_one replace DINO's own probes
    "trainer": {"accelerator": "cpu", "max_epochs": 6, "log_every": 50, "seed": 0, "progress_bar": True},
}

_QUICK = {
    "label": None,  # lastvit.demo.QUICK
    "text": {"data.train_size": 2048, "trainer.max_steps": 250, "optim.warmup_steps": 20},
    "self": {"data.train_size": 1024, "trainer.max_epochs": 2},
}
# text / self: K = 1/8 of the patches, the setting of their 3-seed studies (docs/RESULTS.md, section 6); the label
# paradigm takes lastvit.demo.READOUTS (K = 1)
_READOUTS = {"cls": {}, "lazystrike": {"k": 0.125}}


def _check(paradigm: str) -> None:
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(PARADIGMS)}")


def paradigm_recipe(paradigm: str, readout: str, *, out: str, seed: int = 0, quick: bool = False,
                    overrides: dict[str, Any] | None = None,
                    readout_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training recipe of one run: the paradigm's base recipe with readout, seed, folder and overrides set.

    ``overrides`` are dotted keys of that recipe (``trainer.max_steps``, ``data.synthetic.clutter`` ...);
    ``readout_kwargs`` replace the readout's default keyword arguments (``{"k": 0.25}``).
    """
    _check(paradigm)
    if paradigm == "label":
        from lastvit.demo import demo_recipe

        cfg = demo_recipe(readout, out=out, seed=seed, quick=quick, overrides=overrides)
        if readout_kwargs is not None:
            cfg["model"]["aggregator_kwargs"] = dict(readout_kwargs)
        return cfg
    from lastvit.demo import _set

    cfg = copy.deepcopy(TEXT_RECIPE if paradigm == "text" else SELF_RECIPE)
    for k, v in {**((_QUICK[paradigm] or {}) if quick else {}), **(overrides or {})}.items():
        _set(cfg, k, v)
    cfg["model"]["aggregator"] = readout
    cfg["model"]["aggregator_kwargs"] = dict(_READOUTS.get(readout, {}) if readout_kwargs is None
                                             else readout_kwargs)
    cfg["trainer"]["seed"] = seed
    cfg["data"]["synthetic"]["seed"] = seed
    cfg["data"]["data_seed"] = seed
    cfg["out_dir"] = out
    return cfg


def _test_set(cfg: dict[str, Any], n: int):
    from lastvit.data.synthetic import SyntheticConfig, SyntheticDataset

    return SyntheticDataset(SyntheticConfig(**cfg["data"]["synthetic"]), "test", size=n)


@torch.no_grad()
def _knn_bank(backbone: torch.nn.Module, cfg: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of the first ``n`` (un-augmented) training images."""
    from lastvit.data.synthetic import SyntheticConfig, SyntheticDataset
    from lastvit.evaluate.probe import extract_features

    ds = SyntheticDataset(SyntheticConfig(**cfg["data"]["synthetic"]), "train", size=n)
    batches = ((b["image"], torch.as_tensor(b["label"])) for b in
               (ds.batch(list(range(i, min(n, i + 256)))) for i in range(0, n, 256)))
    return extract_features(backbone, batches)


def run_one(paradigm: str, readout: str, *, out: str | Path, seed: int = 0, quick: bool = False,
            overrides: dict[str, Any] | None = None, readout_kwargs: dict[str, Any] | None = None,
            test_images: int = 1000, knn_bank: int = 4096, verbose: bool = True) -> dict[str, Any]:
    """Train one (paradigm, readout, seed) and diagnose it on ``test_images`` held-out images.

    Returns ``{"model": backbone, "recipe": cfg, "metrics": {...}, "private": {...}, "seconds": {...}}``: the
    backbone is the image tower (label: the classifier; text: ``clip.visual``; self: the DINO teacher); metrics
    hold ``accuracy`` (``ACCURACY_NAMES[paradigm]``), PiB, score AUROC, norms and outliers; ``private`` holds the
    arrays the figures need.
    """
    from lastvit.demo import evaluate_readout

    out = Path(out)
    cfg = paradigm_recipe(paradigm, readout, out=str(out), seed=seed, quick=quick, overrides=overrides,
                          readout_kwargs=readout_kwargs)
    if verbose:
        steps = cfg["trainer"].get("max_steps") if paradigm != "self" else f"{cfg['trainer']['max_epochs']} epochs"
        print(f"[{paradigm}] training the {readout} readout ({cfg['model'].get('name') or cfg['model']['vision']}, "
              f"{steps}, seed {seed})", flush=True)
    t = time.time()
    if paradigm == "label":
        from lastvit.train import fit

        backbone, predict, masking = fit(cfg)["model"], "head", True
    elif paradigm == "text":
        from lastvit.evaluate.zeroshot import zero_shot_classifier
        from lastvit.train.clip import fit as clip_fit

        clip = clip_fit(cfg)["model"].eval()
        classes = _test_set(cfg, 1).cfg.classes
        clf = zero_shot_classifier(clip, classes, cfg["eval"]["templates"])
        backbone, masking = clip.visual, False

        def predict(pooled: torch.Tensor) -> torch.Tensor:
            return clip.visual.forward_head(pooled) @ clf.T
    else:
        from lastvit.train.dino import fit as dino_fit

        backbone, predict, masking = dino_fit(cfg)["model"].eval(), None, False
    train_s = time.time() - t
    t = time.time()
    ds = _test_set(cfg, test_images)
    res = evaluate_readout(backbone, ds, num_images=test_images, out=out, tag=readout, predict=predict,
                           masking=masking)
    if paradigm == "self":
        from lastvit.evaluate.probe import knn_accuracy

        ftr, ytr = _knn_bank(backbone, cfg, knn_bank)
        res["accuracy"] = knn_accuracy(ftr, ytr, res["_features"], res["_labels"], k=20, T=0.07,
                                       num_classes=len(ds.cfg.classes)) / 100.0
    metrics = {k: v for k, v in res.items() if not k.startswith("_")}
    metrics["paradigm"] = paradigm
    metrics["accuracy_name"] = ACCURACY_NAMES[paradigm]
    return {"model": backbone, "recipe": cfg, "metrics": metrics,
            "private": {k: v for k, v in res.items() if k.startswith("_")},
            "seconds": {"train": round(train_s, 1), "eval": round(time.time() - t, 1)}}
