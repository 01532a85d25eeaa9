"""``lastvit demo``: the paper's story on the embedded synthetic benchmark, on a laptop CPU.

Trains the same small ViT twice (CLS readout and LazyStrike; same seed, data and budget), then measures on the
held-out split, with the library's own diagnostics (``lastvit.analysis``): accuracy, Point-in-Box (any-overlap and
patch-centre rules, and the mask rule), patch-score distributions foreground vs background (AUROC), the masking probe,
patch-token norms, and LazyStrike vote maps. Writes ``metrics.json``, PNG figures and a self-contained
``report.html`` into ``out``. ``paradigm="text"`` / ``"self"`` train the twins as CLIP / DINO models instead
(:mod:`lastvit.paradigms`); ``"all"`` runs the three.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from lastvit.report import Report, write_atomic

__all__ = ["DEMO_RECIPE", "demo_recipe", "evaluate_readout", "run_demo"]

#: The demo's training recipe (the schema of ``lastvit train`` configs, see docs/training.md).
DEMO_RECIPE: dict[str, Any] = {
    "task": "classify",
    "out_dir": "runs/demo",
    "model": {"name": "vit_micro_patch8_64", "aggregator": "lazystrike", "aggregator_kwargs": {}},
    "data": {
        "kind": "synthetic",
        # 6 shape classes with a class-specific stripe texture, objects 30-50% of the image side (box area <= 25%),
        # 6 distractors: the setting in which the micro ViT learns within the CPU budget (docs/RESULTS.md)
        "synthetic": {"num_classes": 6, "image_size": 64, "min_size": 0.3, "max_size": 0.5, "clutter": 6,
                      "pattern": 0.6},
        "train_size": 8192,
        "val_size": 512,
        "global_batch": 64,
        "flip": True,
        "num_workers": 0,
    },
    "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_frac": 0.05, "warmup_factor": 0.1,
              "min_lr_factor": 0.001},
    "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2000, "log_every": 50,
                "val_every": 1000, "ckpt_every": 1000, "seed": 0, "progress_bar": True},
}
QUICK = {"data.train_size": 2048, "data.val_size": 256, "trainer.max_steps": 250, "trainer.val_every": 250,
         "trainer.ckpt_every": 250}
# K = 1, the official label-supervised release's setting: on the miniature it raises PiB from 21 +- 18% to 51 +- 1% over
# 3 seeds, where K = 8 of 64 does not (docs/RESULTS.md, section 3)
READOUTS = {"cls": {}, "lazystrike": {"k": 1}}
_OUTLIER_KEYS = ("threshold", "outlier_fraction", "num_outliers", "background_share", "background_fraction")


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        cfg = cfg.setdefault(k, {})
    cfg[keys[-1]] = value


def demo_recipe(aggregator: str, *, out: str, seed: int = 0, quick: bool = False,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of one demo run: ``DEMO_RECIPE`` with the readout, seed, output folder and overrides set."""
    cfg = copy.deepcopy(DEMO_RECIPE)
    for k, v in {**(QUICK if quick else {}), **(overrides or {})}.items():
        _set(cfg, k, v)
    cfg["model"]["aggregator"] = aggregator
    cfg["model"]["aggregator_kwargs"] = dict(READOUTS.get(aggregator, {}), **cfg["model"].get("aggregator_kwargs", {}))
    cfg["trainer"]["seed"] = seed
    cfg["data"]["synthetic"]["seed"] = seed
    cfg["out_dir"] = out
    return cfg


def _test_batches(ds, n: int, batch: int = 128):
    for i in range(0, n, batch):
        yield ds.batch(list(range(i, min(n, i + batch))))


@torch.no_grad()
def evaluate_readout(model, ds, *, num_images: int, out: Path, tag: str,
                     fractions=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9), predict: Any = "head",
                     masking: bool = True) -> dict[str, Any]:
    """Every diagnostic of the demo for one trained model on the held-out split.

    ``predict`` maps pooled tokens to class logits for the accuracy: ``"head"`` is the model's own head, a callable
    anything else (a zero-shot classifier), ``None`` skips the accuracy. ``masking=False`` skips the masking probe
    (it needs the model's own head). The pooled test features and labels come back as ``_features`` / ``_labels``.
    """
    from lastvit.analysis.distributions import score_distributions
    from lastvit.analysis.masking import run_masking_probe
    from lastvit.analysis.norms import outlier_stats, token_norms
    from lastvit.analysis.pib import as_boxes, foreground_patches, point_in_box
    from lastvit.analysis.scores import patch_scores

    model.eval()
    if predict == "head":
        predict = model.forward_head
    correct, total, scores, fg, final_norms, block_norms, feats, labels = 0, 0, [], [], [], [], [], []
    hits: dict[str, list[torch.Tensor]] = {"hit_any": [], "hit_center": [], "hit_mask": []}
    for b in _test_batches(ds, num_images):
        s, rec = patch_scores(model, b["image"])
        # Point-in-Box from these scores (as lastvit.analysis.pib.evaluate_pib: images without boxes are left out)
        keep = [i for i, bx in enumerate(b["boxes"]) if as_boxes(bx).shape[0] > 0]
        if keep:
            sel = torch.tensor(keep)
            h = point_in_box(s[sel], [b["boxes"][i] for i in keep], image_size=tuple(b["image"].shape[-2:]),
                             patch_size=model.patch_size, masks=b["mask"][sel])
            for k in hits:
                hits[k].append(h[k])
        y = torch.as_tensor(b["label"])
        if predict is not None:
            correct += int((predict(rec.pooled).argmax(1) == y).sum())
        total += len(y)
        feats.append(rec.pooled.float())
        labels.append(y)
        scores.append(s)
        fg.append(foreground_patches(b["boxes"], rec.grid, image_size=b["image"].shape[-2:],
                                     patch_size=model.patch_size, masks=b["mask"]))
        n = token_norms(model, b["image"])
        final_norms.append(n["final"])
        block_norms.append(n["blocks"][-1])
    scores, fg = torch.cat(scores), torch.cat(fg)
    n_pib = sum(len(h) for h in hits["hit_any"])
    pib = {k.replace("hit_", "pib_").replace("pib_any", "pib"): (sum(int(h.sum()) for h in v) / n_pib if n_pib
                                                                 else math.nan) for k, v in hits.items()}
    dist = score_distributions(scores, fg)
    final_norms, last_block = torch.cat(final_norms), torch.cat(block_norms)
    out_final = outlier_stats(final_norms, foreground=fg)
    out_block = outlier_stats(last_block, foreground=fg)
    probe = (run_masking_probe(model, _test_batches(ds, min(num_images, 256)), fractions=fractions, mode="pixel",
                               fill="mean") if masking else None)
    return {
        "accuracy": correct / max(total, 1) if predict is not None else None,
        "pib": pib["pib"],
        "pib_center": pib["pib_center"],
        "pib_mask": pib["pib_mask"],
        "num_images": n_pib,
        "score_auroc": dist["auroc"],
        "score_mean_fg": dist["mean_fg"],
        "score_mean_bg": dist["mean_bg"],
        "norm_final_median": float(final_norms.median()),
        "norm_final_max": float(final_norms.max()),
        "outliers_final": {k: out_final[k] for k in _OUTLIER_KEYS if k in out_final},
        "norm_block_median": float(last_block.median()),
        "norm_block_max": float(last_block.max()),
        "outliers_last_block": {k: out_block[k] for k in _OUTLIER_KEYS if k in out_block},
        "masking": ({k: probe[k] for k in ("fractions", "num_removed", "accuracy", "num_patches") if k in probe}
                    if probe is not None else None),
        "_dist": dist,
        "_features": torch.cat(feats),
        "_labels": torch.cat(labels),
        "_norms": final_norms,
        "_block_norms": last_block,
        "_probe": probe,
    }


def _figures(models: dict[str, Any], results: dict[str, dict[str, Any]], ds, out: Path) -> dict[str, Path]:
    from lastvit.analysis.scores import patch_scores
    from lastvit.analysis.votes import vote_maps
    from lastvit.viz import figures as F

    mean, std = ds.mean, ds.std
    b = ds.batch(list(range(8)))
    figs: dict[str, Path] = {}
    for name, m in models.items():
        s, _ = patch_scores(m, b["image"])
        figs[f"scores_{name}"] = F.plot_score_overlays(
            b["image"], s, out / f"scores_{name}.png", boxes=b["boxes"], mean=mean, std=std,
            suptitle=f"patch scores, {name} readout (white: top patch; green: box)")
        figs[f"hist_{name}"] = F.plot_fg_bg_hist(results[name]["_dist"], out / f"hist_{name}.png", title=name)
        if results[name].get("_probe") is not None:
            figs[f"masking_{name}"] = F.plot_masking_curves(results[name]["_probe"], out / f"masking_{name}.png",
                                                            title=f"masking probe, {name}")
    figs["norms"] = F.plot_norm_hist({n: r["_block_norms"] for n, r in results.items()}, out / "norms.png",
                                     title="patch-token norms at the last block output (before the final norm)")
    if "lazystrike" in models:
        v = vote_maps(models["lazystrike"], b["image"])
        figs["votes"] = F.plot_vote_maps(b["image"], v["votes"], v["maps"], out / "votes.png", mean=mean, std=std)
    return figs


def _interpret(res: dict[str, dict[str, Any]], num_classes: int, paradigm: str = "label") -> str:
    from lastvit.paradigms import ACCURACY_NAMES

    c, z = res["cls"], res["lazystrike"]
    d_pib = 100 * (z["pib"] - c["pib"])
    d_acc = 100 * (z["accuracy"] - c["accuracy"])
    verdict = ("LazyStrike raised Point-in-Box" if d_pib > 2 else
               "LazyStrike lowered Point-in-Box" if d_pib < -2 else "Point-in-Box barely moved")
    chance = 1.0 / max(num_classes, 1)
    caveat = ""
    if max(c["accuracy"], z["accuracy"]) < 2 * chance:
        caveat = (f"CAUTION: both models are near chance ({ACCURACY_NAMES[paradigm]}, chance {100 * chance:.0f}%), "
                  f"so the diagnostics below describe barely trained features, not lazy aggregation; train longer "
                  f"(trainer.max_steps=... / trainer.max_epochs=...). ")
    text = caveat + (
        f"{paradigm.capitalize()} supervision. {verdict} ({100 * c['pib']:.1f}% -> {100 * z['pib']:.1f}%, "
        f"{d_pib:+.1f} points) at {'similar' if abs(d_acc) < 3 else 'different'} {ACCURACY_NAMES[paradigm]} "
        f"({100 * c['accuracy']:.1f}% -> {100 * z['accuracy']:.1f}%). PiB is the share of test images whose most "
        f"CLS-like patch (highest cosine with the global representation) lies on the object; a lazy model scores "
        f"background patches highest. Patch scores separate foreground from background with AUROC "
        f"{c['score_auroc']:.2f} (CLS) vs {z['score_auroc']:.2f} (LazyStrike); above 0.5 means object patches look "
        f"more like the global token. ")
    if c.get("masking") and z.get("masking") and "high" in c["masking"]["accuracy"]:
        hi = lambda r: r["masking"]["accuracy"]["high"][-2]
        lo = lambda r: r["masking"]["accuracy"]["low"][-2]
        text += (f"Masking probe at the second-largest level: removing the highest-scoring patches leaves "
                 f"{100 * hi(c):.0f}% (CLS) / {100 * hi(z):.0f}% (LazyStrike) accuracy, removing the lowest-scoring "
                 f"leaves {100 * lo(c):.0f}% / {100 * lo(z):.0f}%: in a lazy model the high-score patches do not "
                 f"matter for the decision. ")
    return text + (
        f"Largest last-block patch norm: {c['norm_block_max']:.1f} (CLS) vs {z['norm_block_max']:.1f} (LazyStrike), "
        f"median {c['norm_block_median']:.1f} vs {z['norm_block_median']:.1f}. One seed of a miniature; "
        f"docs/RESULTS.md says what the miniature has and has not shown over several seeds."
    )


def run_demo(out: str | Path = "runs/demo", *, paradigm: str = "label", quick: bool = False, seed: int = 0,
             test_images: int | None = None, overrides: dict[str, Any] | None = None,
             verbose: bool = True) -> dict[str, Any]:
    """Train CLS and LazyStrike twins on the synthetic benchmark and write the comparison report into ``out``.

    ``paradigm``: ``label`` (the default demo), ``text`` (CLIP on the captions), ``self`` (DINO) or ``all`` (the
    three in turn, into ``out/<paradigm>``, plus a combined ``summary.md``); see :mod:`lastvit.paradigms`.
    """
    from lastvit.paradigms import PARADIGMS

    if paradigm == "all":
        t0 = time.time()
        parts = {p: run_demo(Path(out) / p, paradigm=p, quick=quick, seed=seed, test_images=test_images,
                             overrides=None, verbose=verbose) for p in PARADIGMS}
        lines = ["| paradigm | accuracy metric | CLS acc (%) | LazyStrike acc (%) | CLS PiB (%) | LazyStrike PiB (%) |",
                 "|---|---|---|---|---|---|"]
        for p, m in parts.items():
            c, z = m["readouts"]["cls"], m["readouts"]["lazystrike"]
            lines.append(f"| {p} | {c['accuracy_name']} | {100 * c['accuracy']:.1f} | {100 * z['accuracy']:.1f} | "
                         f"{100 * c['pib']:.1f} | {100 * z['pib']:.1f} |")
        table = "\n".join(lines) + "\n"
        write_atomic(Path(out) / "summary.md", f"# lastvit demo, all paradigms (seed {seed})\n\n{table}\n"
                     f"Reports: {', '.join(f'{p}/report.html' for p in PARADIGMS)}\n")
        if verbose:
            print(f"\n{table}\nall paradigms: {time.time() - t0:.0f} s; reports in {out}/<paradigm>/report.html")
        return {"paradigms": parts, "table": table}
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(PARADIGMS)} or 'all'")
    return _run_paradigm(Path(out), paradigm, quick=quick, seed=seed, test_images=test_images,
                         overrides=overrides, verbose=verbose)


def _run_paradigm(out: Path, paradigm: str, *, quick: bool, seed: int, test_images: int | None,
                  overrides: dict[str, Any] | None, verbose: bool) -> dict[str, Any]:
    from lastvit.data.synthetic import SyntheticConfig, SyntheticDataset
    from lastvit.paradigms import ACCURACY_NAMES, run_one

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n_test = test_images or (256 if quick else 1000)
    models, results, recipes, timings = {}, {}, {}, {}
    for agg in READOUTS:
        r = run_one(paradigm, agg, out=out / agg, seed=seed, quick=quick, overrides=overrides, test_images=n_test,
                    verbose=verbose)
        models[agg], recipes[agg] = r["model"], r["recipe"]
        results[agg] = {**r["metrics"], **r["private"]}
        timings[f"train_{agg}_s"], timings[f"eval_{agg}_s"] = r["seconds"]["train"], r["seconds"]["eval"]
    syn = dict(recipes["cls"]["data"]["synthetic"])
    ds = SyntheticDataset(SyntheticConfig(**syn), "test", size=n_test)
    figs = _figures(models, results, ds, out)
    timings["total_s"] = round(time.time() - t0, 1)

    public = {a: {k: v for k, v in r.items() if not k.startswith("_")} for a, r in results.items()}
    metrics = {"paradigm": paradigm, "readouts": public, "test_images": n_test, "seed": seed, "quick": quick,
               "timings": timings, "recipes": recipes, "synthetic": syn}
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    summary = _interpret(results, int(syn.get("num_classes", 10)), paradigm)

    c, z = public["cls"], public["lazystrike"]
    rows = [
        [f"{ACCURACY_NAMES[paradigm]} (%)", 100 * c["accuracy"], 100 * z["accuracy"]],
        ["PiB, any-overlap (%)", 100 * c["pib"], 100 * z["pib"]],
        ["PiB, patch centre (%)", 100 * c["pib_center"], 100 * z["pib_center"]],
        ["score AUROC fg > bg", c["score_auroc"], z["score_auroc"]],
        ["last-block norm, median", c["norm_block_median"], z["norm_block_median"]],
        ["last-block norm, max", c["norm_block_max"], z["norm_block_max"]],
        ["high-norm outliers (%)", 100 * c["outliers_last_block"]["outlier_fraction"],
         100 * z["outliers_last_block"]["outlier_fraction"]],
    ]
    what = {"label": "label", "text": "text (CLIP on the captions)", "self": "self (DINO)"}[paradigm]
    rep = Report(f"lastvit demo: CLS readout vs LazyStrike on the synthetic benchmark, {what} supervision")
    rep.paragraph(summary, note=True)
    rep.heading("Numbers (held-out split)")
    rep.table(["metric", "CLS", "LazyStrike"], rows)
    tr = recipes["cls"]["trainer"]
    budget = f"{tr['max_epochs']} epochs" if paradigm == "self" else f"{tr['max_steps']} steps"
    name = recipes["cls"]["model"].get("name") or recipes["cls"]["model"].get("vision")
    rep.paragraph(f"{n_test} test images, seed {seed}, image model {name}, {budget} per readout; "
                  f"total {timings['total_s']:.0f} s.")
    rep.heading("Patch scores (Eq. 3)")
    for n in models:
        rep.figure(figs[f"scores_{n}"], f"{n} readout: cosine of each patch with the global representation")
    rep.heading("Score distributions, foreground vs background (paper Fig. 2a)")
    for n in models:
        rep.figure(figs[f"hist_{n}"], f"{n} readout")
    if any(f"masking_{n}" in figs for n in models):
        rep.heading("Masking probe (paper Fig. 2b)")
        for n in models:
            rep.figure(figs[f"masking_{n}"], f"{n} readout; removed patches filled with the dataset mean")
    rep.heading("Feature norms (paper Fig. 6)")
    rep.figure(figs["norms"], "patch-token L2 norms at the last block output")
    if "votes" in figs:
        rep.heading("LazyStrike vote maps (paper Fig. 5)")
        rep.figure(figs["votes"], "patches whose vote count exceeds 50/30/20% of the image's maximum")
    rep.write(out)

    if verbose:
        w = max(len(r[0]) for r in rows)
        print(f"\n{'':{w}}  {'CLS':>10}  {'LazyStrike':>10}")
        for r in rows:
            print(f"{r[0]:{w}}  {r[1]:10.3f}  {r[2]:10.3f}")
        print("\n" + summary)
        print(f"\nreport: {out / 'report.html'}  metrics: {out / 'metrics.json'}  ({timings['total_s']:.0f} s)")
    return metrics
