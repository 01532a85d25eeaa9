"""One miniature run per supervision paradigm: train a readout on the synthetic benchmark, then diagnose it.

The paper's claim covers three paradigms (label, text and self supervision; paper §3.5, Table 3). ``lastvit demo
--paradigm`` and ``lastvit study`` (``paradigm:`` key) both go through :func:`run_one`, so every number of the
demo and of the study tables comes from the same code. Each paradigm's recipe is a packaged YAML file loaded by
name (:data:`RECIPES`, :func:`lastvit.recipes.load_recipe`); the readout, the seed and the quick variant are
overrides of it:

* ``label`` (``label_synthetic``): accuracy is the model's own head;
* ``text`` (``text_synthetic``): a tiny CLIP trained on the synthetic captions; accuracy is zero-shot top-1 over
  the shape names with prompt ensembling;
* ``self`` (``self_synthetic``): DINO; accuracy is weighted kNN top-1 (k 20, T 0.07) with a bank of un-augmented
  training images, and a linear probe joins it. Every self-supervised number (kNN, linear probe, PiB, AUROC) is
  also measured on the same network untrained (the same seed and readout, before the first step), under the same
  name with ``_untrained`` appended.

Training is :func:`lastvit.train.fit`; the diagnostics are :func:`lastvit.analysis.suite.diagnose` on the held-out
split (Point-in-Box, foreground/background score AUROC, patch-token norms and high-norm outliers; the masking probe
needs a classifier head, so it runs for ``label`` only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["PARADIGMS", "RECIPES", "ACCURACY_NAMES", "paradigm_recipe", "run_one", "untrained_model",
           "self_supervised_probes"]

PARADIGMS = ("label", "text", "self")
#: paradigm -> packaged recipe name (``lastvit/resources/recipes/<name>.yaml``)
RECIPES = {"label": "label_synthetic", "text": "text_synthetic", "self": "self_synthetic"}
ACCURACY_NAMES = {"label": "accuracy (own head)", "text": "zero-shot top-1", "self": "kNN top-1"}


def _check(paradigm: str) -> None:
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(PARADIGMS)}")


def _item(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the recipe loader reads the value back unchanged


def paradigm_recipe(paradigm: str, readout: str, *, out: str, seed: int = 0, quick: bool = False,
                    overrides: dict[str, Any] | None = None,
                    readout_kwargs: dict[str, Any] | None = None, recipe: str | None = None) -> dict[str, Any]:
    """The training recipe of one run: the paradigm's packaged recipe with readout, seed, folder and overrides set.

    ``recipe`` names another packaged recipe of the same task (default: the paradigm's, :data:`RECIPES`);
    ``quick`` applies the recipe's ``quick`` variant; ``overrides`` are dotted keys of the recipe
    (``trainer.max_steps``, ``data.synthetic.clutter`` ...); the readout keeps the recipe's options when it is the
    recipe's own (LazyStrike's K) and starts from none otherwise; ``readout_kwargs`` replace them (``{"k": 0.25}``).
    """
    from lastvit.recipes import load_recipe

    _check(paradigm)
    items = [_item(k, v) for k, v in (overrides or {}).items()]
    items.append(_item("model.aggregator", readout))
    if readout_kwargs is not None:
        items.append(_item("model.aggregator_kwargs", dict(readout_kwargs)))
    cfg = load_recipe(recipe or RECIPES[paradigm], items, variant="quick" if quick else None)
    cfg["trainer"]["seed"] = seed
    cfg["data"]["synthetic"]["seed"] = seed
    if paradigm != "label":
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


def untrained_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """The network a recipe's training starts from (seeded and built exactly as :func:`lastvit.train.fit` does),
    before its first step, in eval mode: the baseline of every self-supervised number."""
    import lightning as L

    from lastvit.train import build, resolve_config

    cfg = resolve_config(cfg)
    L.seed_everything(int(cfg["trainer"].get("seed", 0)), workers=True, verbose=False)
    module, _ = build(cfg)
    return module.model.eval()


def self_supervised_probes(backbone: torch.nn.Module, cfg: dict[str, Any], features: torch.Tensor,
                           labels: torch.Tensor, *, knn_bank: int = 4096) -> dict[str, float]:
    """kNN top-1 (DINO's weighted kNN, k 20, T 0.07) and linear-probe top-1 (L-BFGS logistic regression on
    standardised features) of test ``features``, both trained on the first ``knn_bank`` un-augmented training
    images; fractions in [0, 1]."""
    from lastvit.evaluate.probe import knn_accuracy, linear_probe

    ftr, ytr = _knn_bank(backbone, cfg, knn_bank)
    c = int(cfg["data"]["synthetic"].get("num_classes", int(max(ytr.max(), labels.max())) + 1))
    return {"knn_top1": knn_accuracy(ftr, ytr, features, labels, k=20, T=0.07, num_classes=c) / 100.0,
            "linear_top1": float(linear_probe(ftr, ytr, features, labels, num_classes=c)) / 100.0}


def run_one(paradigm: str, readout: str, *, out: str | Path, seed: int = 0, quick: bool = False,
            overrides: dict[str, Any] | None = None, readout_kwargs: dict[str, Any] | None = None,
            test_images: int = 1000, knn_bank: int = 4096, verbose: bool = True,
            callbacks: list[Any] | None = None, recipe: str | None = None) -> dict[str, Any]:
    """Train one (paradigm, readout, seed) and diagnose it on ``test_images`` held-out images.

    ``callbacks``: extra Lightning callbacks for the training run (e.g. the demo's time estimate).

    Returns ``{"model": backbone, "recipe": cfg, "metrics": {...}, "diagnosis": Diagnosis, "seconds": {...}}``:
    the backbone is the image tower (label: the classifier; text: ``clip.visual``; self: the DINO teacher);
    metrics hold ``accuracy`` (``ACCURACY_NAMES[paradigm]``), PiB, score AUROC, norms and outliers, and for
    ``self`` also ``knn_top1``, ``linear_top1`` and the untrained baselines (``knn_top1_untrained``,
    ``linear_top1_untrained``, ``pib_untrained``, ``pib_center_untrained``, ``score_auroc_untrained``).
    """
    from lastvit.analysis.suite import diagnose
    from lastvit.train import fit

    out = Path(out)
    cfg = paradigm_recipe(paradigm, readout, out=str(out), seed=seed, quick=quick, overrides=overrides,
                          readout_kwargs=readout_kwargs, recipe=recipe)
    if verbose:
        steps = cfg["trainer"].get("max_steps") if paradigm != "self" else f"{cfg['trainer']['max_epochs']} epochs"
        print(f"[{paradigm}] training the {readout} readout ({cfg['model'].get('name') or cfg['model']['vision']}, "
              f"{steps}, seed {seed})", flush=True)
    t = time.time()
    trained = (fit(cfg, callbacks=callbacks) if callbacks else fit(cfg))["model"].eval()
    if paradigm == "label":
        backbone, predict, masking = trained, "head", True
    elif paradigm == "text":
        from lastvit.evaluate.zeroshot import zero_shot_classifier

        clf = zero_shot_classifier(trained, _test_set(cfg, 1).cfg.classes, cfg["eval"]["templates"])
        backbone, masking = trained.visual, False

        def predict(pooled: torch.Tensor) -> torch.Tensor:
            return trained.visual.forward_head(pooled) @ clf.T
    else:
        backbone, predict, masking = trained, None, False
    train_s = time.time() - t
    t = time.time()
    ds = _test_set(cfg, test_images)
    diag = diagnose(backbone, ds, num_images=test_images, predict=predict, masking=masking)
    metrics = dict(diag.metrics)
    if paradigm == "self":
        probes = self_supervised_probes(backbone, cfg, diag.features, diag.labels, knn_bank=knn_bank)
        metrics["accuracy"] = probes["knn_top1"]
        metrics.update(probes)
        base = untrained_model(cfg)
        u = diagnose(base, ds, num_images=test_images, predict=None, masking=False)
        probes_u = self_supervised_probes(base, cfg, u.features, u.labels, knn_bank=knn_bank)
        for k, v in {**probes_u, "pib": u.metrics["pib"], "pib_center": u.metrics["pib_center"],
                     "score_auroc": u.metrics["score_auroc"]}.items():
            metrics[f"{k}_untrained"] = v
    metrics["paradigm"] = paradigm
    metrics["accuracy_name"] = ACCURACY_NAMES[paradigm]
    return {"model": backbone, "recipe": cfg, "metrics": metrics, "diagnosis": diag,
            "seconds": {"train": round(train_s, 1), "eval": round(time.time() - t, 1)}}
