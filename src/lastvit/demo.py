"""``lastvit demo``: the paper's story on the embedded synthetic benchmark, on a laptop CPU.

Trains the same small ViT twice (CLS readout and LazyStrike; same seed, data and budget) through
:func:`lastvit.paradigms.run_one`, which diagnoses each on the held-out split with
:func:`lastvit.analysis.suite.diagnose` (accuracy, Point-in-Box, score distributions and AUROC, the masking probe,
patch-token norms). This module is the story on top: figures (patch scores, histograms, masking curves, norms,
LazyStrike vote maps), the interpretation, ``metrics.json`` and a self-contained ``report.html`` in ``out``.
``paradigm="text"`` / ``"self"`` train the twins as CLIP / DINO models instead; ``"all"`` runs the three.

The twins are independent runs, so ``jobs`` (default: one per twin, at most one per core of
:func:`available_cores`) trains and diagnoses them in parallel processes, each pinned to ``threads`` torch threads
(default ``cores // jobs``): on a small CPU two 1-thread runs side by side beat two 2-thread runs in turn (the micro
models scale poorly across threads). A run's numbers depend on its thread count only, not on the other run:
``jobs=2, threads=1`` gives bit for bit the metrics of ``jobs=1, threads=1``.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from lastvit.io import write_json
from lastvit.report import Report, write_atomic

__all__ = ["READOUTS", "run_demo", "near_chance", "ovdet_verdict", "available_cores", "plan_jobs"]

#: the two twins of every demo (the readout's options come from the paradigm's recipe)
READOUTS = ("cls", "lazystrike")


def near_chance(accuracy: float | None, num_classes: int) -> bool:
    """Whether an accuracy (fraction) is too close to chance for the model's patch scores to mean anything: below
    twice the chance level ``1 / num_classes``."""
    if accuracy is None or accuracy != accuracy:
        return True
    return accuracy < 2.0 / max(num_classes, 1)


class _Eta(Callback):
    """After the first ``after`` optimiser steps, print the measured time per step and the training time this machine
    needs for the whole run and for the demo's ``runs`` runs (an estimate that scales with the machine; with
    ``parallel`` runs the twins train side by side, so the demo's training time is that of one run). ``every`` > 0
    also prints one progress line every ``every`` steps (the parallel jobs' replacement for the progress bar)."""

    def __init__(self, label: str, runs: int, after: int = 20, parallel: bool = False, every: int = 0) -> None:
        self.label, self.runs, self.after, self.parallel, self.every = label, runs, after, parallel, int(every)
        self.t0: float | None = None
        self.s0 = 0
        self.done = False

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        step = int(trainer.global_step)
        if self.t0 is None:  # the first step carries the start-up cost: time from its end
            self.t0, self.s0 = time.time(), step
            return
        total = int(trainer.estimated_stepping_batches)
        if self.every > 0 and step % self.every == 0 and step > self.s0:
            per = (time.time() - self.t0) / (step - self.s0)
            print(f"[{self.label}] step {step}/{total}, {per:.2f} s per step", flush=True)
        if self.done or step - self.s0 < self.after:
            return
        self.done = True
        per = (time.time() - self.t0) / (step - self.s0)
        left = (f"about {per * total / 60:.1f} min of training for this demo ({self.runs} runs of this size in "
                f"parallel)" if self.parallel else
                f"about {per * total * self.runs / 60:.1f} min of training left for this demo ({self.runs} run"
                f"{'s' if self.runs > 1 else ''} of this size)")
        print(f"\n[{self.label}] {per:.2f} s per step measured over {step - self.s0} steps on this machine: about "
              f"{per * total / 60:.1f} min to train this readout ({total} steps), {left}", flush=True)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (``os.cpu_count()`` where that is unknown), capped by
    ``OMP_NUM_THREADS`` when that is set (a user who asked for one thread gets one core's worth of work)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(n, 1)


def plan_jobs(twins: int, jobs: int | None = None, threads: int | None = None,
              cores: int | None = None) -> tuple[int, int | None]:
    """``(jobs, threads per job)`` of a demo: ``jobs`` defaults to ``min(twins, cores)``; ``threads`` to
    ``cores // jobs`` for parallel jobs and to None (torch's own setting, as before) for one job."""
    cores = available_cores() if cores is None else max(int(cores), 1)
    jobs = min(twins, cores) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    jobs = min(jobs, twins)
    if threads is None and jobs > 1:
        threads = max(cores // jobs, 1)
    return jobs, (None if threads is None else int(threads))


def _job(conn: Any, kwargs: dict[str, Any], threads: int | None, result_path: str) -> None:
    """One twin in its own (spawned) process: pin the thread count, run it, save the result to ``result_path``
    and send ``("ok", None)`` or ``("error", traceback)`` back."""
    import torch

    try:
        if threads is not None:
            torch.set_num_threads(threads)
        from lastvit.paradigms import run_one

        r = run_one(**kwargs)
        torch.save(r, result_path)
        conn.send(("ok", None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        import pickle

        exc: BaseException | None = e  # the exception itself where it pickles: the parent raises what a
        try:  # sequential run raises
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001
            exc = None
        conn.send(("error", (exc, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")))
        if not isinstance(e, Exception):
            raise
    finally:
        conn.close()


def _run_parallel(jobs_kwargs: dict[str, dict[str, Any]], threads: int | None) -> dict[str, dict[str, Any]]:
    """Run :func:`lastvit.paradigms.run_one` for each twin in its own spawned process (all at once); results in
    the order of ``jobs_kwargs``. When one fails or the parent is interrupted, the others are stopped (SIGTERM:
    Lightning saves their last checkpoint) and the error is raised here."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    import torch

    ctx = mp.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="lastvit-demo-"))
    procs: dict[str, Any] = {}
    conns: dict[Any, str] = {}
    try:
        for name, kw in jobs_kwargs.items():
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_job, args=(send, kw, threads, str(tmp / f"{name}.pt")), name=f"lastvit-{name}")
            p.start()
            send.close()
            procs[name], conns[recv] = p, name
        status: dict[str, tuple[str, Any]] = {}
        while conns:
            for c in wait(list(conns)):
                name = conns.pop(c)
                try:
                    status[name] = c.recv()
                except EOFError:  # the process died without a word (killed, out of memory)
                    procs[name].join()
                    status[name] = ("error", (None, f"its process ended with exit status {procs[name].exitcode}"))
                if status[name][0] != "ok":
                    exc, text = status[name][1]
                    if isinstance(exc, Exception):
                        raise exc
                    raise RuntimeError(f"demo: the {name} run failed: {text.strip().splitlines()[0]}\n{text}")
        for p in procs.values():
            p.join()
        return {name: torch.load(tmp / f"{name}.pt", weights_only=False) for name in jobs_kwargs}
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=60)
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()


def _figures(models: dict[str, Any], diags: dict[str, Any], ds, out: Path) -> dict[str, Path]:
    from lastvit.analysis.scores import patch_scores
    from lastvit.analysis.votes import vote_maps
    from lastvit.viz import figures as F

    mean, std = ds.mean, ds.std
    b = ds.batch(list(range(min(8, len(ds)))))
    figs: dict[str, Path] = {}
    for name, m in models.items():
        s, _ = patch_scores(m, b["image"])
        figs[f"scores_{name}"] = F.plot_score_overlays(
            b["image"], s, out / f"scores_{name}.png", boxes=b["boxes"], mean=mean, std=std,
            suptitle=f"patch scores, {name} readout (white: top patch; green: box)")
        figs[f"hist_{name}"] = F.plot_fg_bg_hist(diags[name].distribution, out / f"hist_{name}.png", title=name)
        if diags[name].probe is not None:
            figs[f"masking_{name}"] = F.plot_masking_curves(diags[name].probe, out / f"masking_{name}.png",
                                                            title=f"masking probe, {name}")
    figs["norms"] = F.plot_norm_hist({n: d.block_norms for n, d in diags.items()}, out / "norms.png",
                                     title="patch-token norms at the last block output (before the final norm)")
    if "lazystrike" in models:
        v = vote_maps(models["lazystrike"], b["image"])
        figs["votes"] = F.plot_vote_maps(b["image"], v["votes"], v["maps"], out / "votes.png", mean=mean, std=std)
    return figs


def comparison(res: dict[str, dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """Whether the CLS vs LazyStrike comparison means anything: void when either model is near chance
    (:func:`near_chance`); ``{"valid", "near_chance": [readouts], "chance"}``."""
    low = [name for name, r in res.items() if near_chance(r.get("accuracy"), num_classes)]
    return {"valid": not low, "near_chance": low, "chance": 1.0 / max(num_classes, 1)}


#: what the self-supervised demo can and cannot show within its budget (docs/RESULTS.md, section 6)
SELF_BUDGET_NOTE = (
    "The self-supervised demo trains the demo recipe (self_synthetic) on the demo benchmark because that is what fits "
    "the demo's budget, and within it DINO does not learn: expect the trained numbers at their untrained level. The "
    "recipe that does learn on the CPU (self_synthetic_ssl, on the shortcut-free synthetic_ssl benchmark) needs about "
    "13-16 minutes per readout, beyond the demo's budget: run it with `lastvit study --config "
    "configs/studies/synthetic_self_ssl.yaml`."
)


def _interpret(res: dict[str, dict[str, Any]], num_classes: int, paradigm: str = "label") -> str:
    from lastvit.paradigms import ACCURACY_NAMES

    c, z = res["cls"], res["lazystrike"]
    name = ACCURACY_NAMES[paradigm]
    cmp = comparison(res, num_classes)
    baseline = ""
    if paradigm == "self":
        baseline = SELF_BUDGET_NOTE + " "
    if paradigm == "self" and "knn_top1_untrained" in c:
        baseline += (f"The same networks untrained (same seed and readout) score kNN "
                    f"{100 * c['knn_top1_untrained']:.1f}% (CLS) / {100 * z['knn_top1_untrained']:.1f}% (LazyStrike) "
                    f"and linear probe "
                    f"{100 * c['linear_top1_untrained']:.1f}% / {100 * z['linear_top1_untrained']:.1f}%, against "
                    f"{100 * c['knn_top1']:.1f}% / {100 * z['knn_top1']:.1f}% and {100 * c['linear_top1']:.1f}% / "
                    f"{100 * z['linear_top1']:.1f}% trained; PiB untrained {100 * c['pib_untrained']:.1f}% / "
                    f"{100 * z['pib_untrained']:.1f}%. ")
    if not cmp["valid"]:
        who = " and ".join({"cls": "the CLS model", "lazystrike": "the LazyStrike model"}.get(r, r)
                           for r in cmp["near_chance"])
        accs = ", ".join(f"{r} {100 * (res[r]['accuracy'] or 0.0):.1f}%" for r in cmp["near_chance"])
        return (f"{paradigm.capitalize()} supervision. THE COMPARISON IS VOID: {who} stayed near chance ({name}: "
                f"{accs}; chance {100 * cmp['chance']:.0f}%, near chance means below twice that), so "
                f"{'their' if len(cmp['near_chance']) > 1 else 'its'} patch scores describe barely trained "
                f"features, not lazy aggregation, and no conclusion about laziness is drawn "
                f"from this run. Train longer (trainer.max_steps=... / trainer.max_epochs=...) or drop --quick. "
                + baseline + "Point-in-Box and the other diagnostics below are reported as measured, without a "
                "verdict.")
    d_pib = 100 * (z["pib"] - c["pib"])
    d_acc = 100 * (z["accuracy"] - c["accuracy"])
    verdict = ("LazyStrike raised Point-in-Box" if d_pib > 2 else
               "LazyStrike lowered Point-in-Box" if d_pib < -2 else "Point-in-Box barely moved")
    text = (
        f"{paradigm.capitalize()} supervision. {verdict} ({100 * c['pib']:.1f}% -> {100 * z['pib']:.1f}%, "
        f"{d_pib:+.1f} points) at {'similar' if abs(d_acc) < 3 else 'different'} {name} "
        f"({100 * c['accuracy']:.1f}% -> {100 * z['accuracy']:.1f}%). PiB is the share of test images whose most "
        f"CLS-like patch (highest cosine with the global representation) lies on the object; a lazy model scores "
        f"background patches highest. Patch scores separate foreground from background with AUROC "
        f"{c['score_auroc']:.2f} (CLS) vs {z['score_auroc']:.2f} (LazyStrike); above 0.5 means object patches look "
        f"more like the global token. " + baseline)
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
             verbose: bool = True, jobs: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train CLS and LazyStrike twins on the synthetic benchmark and write the comparison report into ``out``.

    ``paradigm``: ``label`` (the default demo), ``text`` (CLIP on the captions), ``self`` (DINO) or ``all`` (the
    three in turn, into ``out/<paradigm>``, plus a combined ``summary.md``); see :mod:`lastvit.paradigms`.
    ``jobs``: twins trained at once in separate processes (default ``min(2, cores)``); ``threads``: torch threads
    per run (default ``cores // jobs`` when parallel, torch's own setting with one job); see :func:`plan_jobs`.
    """
    from lastvit.paradigms import PARADIGMS

    if paradigm == "all":
        t0 = time.time()
        parts = {p: run_demo(Path(out) / p, paradigm=p, quick=quick, seed=seed, test_images=test_images,
                             overrides=None, verbose=verbose, jobs=jobs, threads=threads) for p in PARADIGMS}
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
    if paradigm == "ovdet":
        ov = dict(overrides or {})
        if test_images is not None:
            ov["test_images"] = int(test_images)
        return run_ovdet_demo(Path(out), quick=quick, seed=seed, verbose=verbose, jobs=jobs, threads=threads,
                              overrides=ov or None)
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(PARADIGMS)}, ovdet or 'all'")
    return _run_paradigm(Path(out), paradigm, quick=quick, seed=seed, test_images=test_images,
                         overrides=overrides, verbose=verbose, jobs=jobs, threads=threads)


def _train_twins(out: Path, paradigm: str, *, quick: bool, seed: int, n_test: int,
                 overrides: dict[str, Any] | None, verbose: bool, jobs: int | None,
                 threads: int | None) -> tuple[dict[str, dict[str, Any]], int, int | None]:
    """``run_one`` for every readout of :data:`READOUTS`, in turn (one job) or side by side (several)."""
    import torch

    from lastvit.paradigms import run_one

    jobs, threads = plan_jobs(len(READOUTS), jobs, threads)
    kwargs = {agg: dict(paradigm=paradigm, readout=agg, out=out / agg, seed=seed, quick=quick,
                        overrides=overrides, test_images=n_test, verbose=verbose) for agg in READOUTS}
    if jobs > 1:
        over = dict(overrides or {})
        if "trainer.progress_bar" not in over:  # two progress bars would overwrite each other's line
            over["trainer.progress_bar"] = False
        for agg, kw in kwargs.items():
            kw["overrides"] = over
            if verbose:
                kw["callbacks"] = [_Eta(f"{paradigm}/{agg}", runs=len(READOUTS), parallel=True,
                                        every=0 if over["trainer.progress_bar"] else 100)]
        if verbose:
            print(f"[{paradigm}] {len(READOUTS)} runs in {jobs} parallel processes, {threads} thread"
                  f"{'s' if threads > 1 else ''} each", flush=True)
        return _run_parallel(kwargs, threads), jobs, threads
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        res = {}
        for i, (agg, kw) in enumerate(kwargs.items()):
            eta = [_Eta(f"{paradigm}/{agg}", runs=len(READOUTS) - i)] if verbose else None
            res[agg] = run_one(**kw, callbacks=eta)
        return res, jobs, threads
    finally:
        torch.set_num_threads(before)


def _run_paradigm(out: Path, paradigm: str, *, quick: bool, seed: int, test_images: int | None,
                  overrides: dict[str, Any] | None, verbose: bool, jobs: int | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    from lastvit.data.synthetic import SyntheticConfig, SyntheticDataset
    from lastvit.paradigms import ACCURACY_NAMES

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n_test = test_images or (256 if quick else 1000)
    models, diags, results, recipes, timings = {}, {}, {}, {}, {}
    runs, jobs, threads = _train_twins(out, paradigm, quick=quick, seed=seed, n_test=n_test, overrides=overrides,
                                       verbose=verbose, jobs=jobs, threads=threads)
    for agg in READOUTS:
        r = runs[agg]
        models[agg], recipes[agg], diags[agg], results[agg] = r["model"], r["recipe"], r["diagnosis"], r["metrics"]
        timings[f"train_{agg}_s"], timings[f"eval_{agg}_s"] = r["seconds"]["train"], r["seconds"]["eval"]
    timings["jobs"], timings["threads_per_job"] = jobs, threads
    syn = dict(recipes["cls"]["data"]["synthetic"])
    ds = SyntheticDataset(SyntheticConfig(**syn), "test", size=n_test)
    figs = _figures(models, diags, ds, out)
    timings["total_s"] = round(time.time() - t0, 1)

    num_classes = int(syn.get("num_classes", 10))
    cmp = comparison(results, num_classes)
    metrics = {"paradigm": paradigm, "readouts": results, "comparison": cmp, "test_images": n_test, "seed": seed,
               "quick": quick, "timings": timings, "recipes": recipes, "synthetic": syn}
    write_json(out / "metrics.json", metrics)
    summary = _interpret(results, num_classes, paradigm)

    c, z = results["cls"], results["lazystrike"]
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
    if paradigm == "self":  # every self-supervised number beside the same network untrained
        rows[1:1] = [["kNN top-1, untrained (%)", 100 * c["knn_top1_untrained"], 100 * z["knn_top1_untrained"]],
                     ["linear probe top-1 (%)", 100 * c["linear_top1"], 100 * z["linear_top1"]],
                     ["linear probe top-1, untrained (%)", 100 * c["linear_top1_untrained"],
                      100 * z["linear_top1_untrained"]]]
        rows[5:5] = [["PiB, any-overlap, untrained (%)", 100 * c["pib_untrained"], 100 * z["pib_untrained"]]]
        rows[8:8] = [["score AUROC, untrained", c["score_auroc_untrained"], z["score_auroc_untrained"]]]
    what = {"label": "label", "text": "text (CLIP on the captions)", "self": "self (DINO)"}[paradigm]
    rep = Report(f"lastvit demo: CLS readout vs LazyStrike on the synthetic benchmark, {what} supervision")
    rep.paragraph(summary, note=True)
    rep.heading("Numbers (held-out split)")
    rep.table(["metric", "CLS", "LazyStrike"], rows)
    tr = recipes["cls"]["trainer"]
    budget = f"{tr['max_epochs']} epochs" if paradigm == "self" else f"{tr['max_steps']} steps"
    name = recipes["cls"]["model"].get("name") or recipes["cls"]["model"].get("vision")
    rep.paragraph(f"{n_test} test images, seed {seed}, image model {name}, {budget} per readout; "
                  f"measured on this machine: {timings['total_s']:.0f} s in all (training "
                  f"{timings['train_cls_s']:.0f} s + {timings['train_lazystrike_s']:.0f} s).")
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
        print(f"\nreport: {out / 'report.html'}  metrics: {out / 'metrics.json'}  (measured: "
              f"{timings['total_s']:.0f} s)")
    return metrics


#: what each open-vocabulary number is, for the report (fractions in metrics.json)
OVDET_KEYS = {"novel_ap50": "novel AP50", "base_ap50": "base AP50", "novel_mask_ap": "novel mask AP",
              "novel_rpn_recall": "novel RPN recall", "oracle_box_accuracy": "oracle-box accuracy (novel)"}


def ovdet_verdict(res: dict[str, dict[str, Any]], chance: float) -> str:
    """The report's reading of the oracle-box accuracies (``res``: readout -> metrics; ``chance``: one over the
    number of class names). A readout whose frozen CLIP branch is below twice chance on ground-truth novel boxes has
    a dense map that hardly knows the novel classes; when every readout is, the comparison says little."""
    near = [r for r, m in res.items() if float(m["oracle_box_accuracy"]) < 2 * chance]
    if not near:
        return ""
    accs = lambda rs: ", ".join(f"{r} {100 * float(res[r]['oracle_box_accuracy']):.1f}%" for r in rs)
    if len(near) == len(res):
        return (f"THE COMPARISON IS WEAK: the frozen CLIP branch of every readout is near chance on novel "
                f"ground-truth boxes ({accs(near)}; chance {100 * chance:.1f}%), so neither dense map knows the novel "
                f"classes.")
    return (f"The frozen CLIP branch of {', '.join(near)} is near chance on novel ground-truth boxes ({accs(near)}; "
            f"chance {100 * chance:.1f}%): its dense map hardly knows the novel classes; above twice chance: "
            f"{accs([r for r in res if r not in near])}.")


def run_ovdet_demo(out: Path, *, quick: bool = False, seed: int = 0, verbose: bool = True, jobs: int | None = None,
                   threads: int | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paper Table 5 in miniature (:mod:`lastvit.ovdet_miniature`): F-ViT on the frozen CLS and LazyStrike tiny
    CLIPs of the text paradigm; ``out/metrics.json`` (per readout: novel / base AP50, novel mask AP, novel RPN recall,
    oracle-box accuracy), ``out/detections.png`` and ``out/report.md``. The CLIPs and the data are cached in
    ``out/cache``. ``overrides``: the miniature's keys (``steps``, ``train_images``, ``test_images``, ``batch``,
    ``lr``, ``warmup``) and ``detector.<key>`` (:data:`lastvit.ovdet_miniature.MINI_DETECTOR`); the report lists
    them."""
    from lastvit.ovdet_miniature import run_ovdet_miniature

    n_jobs, n_threads = plan_jobs(2, jobs, threads)
    t0 = time.time()
    res = run_ovdet_miniature(out, seed, quick=quick, cache=out / "cache", workers=n_jobs, threads=n_threads or 1,
                              overrides=overrides, verbose=verbose)
    first = next(iter(res.values()))
    chance = 1.0 / (len(first["novel_classes"]) + len(first["base_classes"]))  # a random guess over every name
    lines = ["| readout of the frozen CLIP | " + " | ".join(f"{v} (%)" for v in OVDET_KEYS.values()) + " |",
             "|---|" + "---|" * len(OVDET_KEYS)]
    for r, m in res.items():
        lines.append(f"| {r} | " + " | ".join(f"{100 * float(m[k]):.1f}" for k in OVDET_KEYS) + " |")
    c, z = res["cls"], res["lazystrike"]
    verdict = ovdet_verdict(res, chance)
    text = (f"# lastvit demo, open-vocabulary detection (seed {seed}{', quick' if quick else ''})\n\n"
            + "\n".join(lines) + "\n\n"
            f"Novel classes {', '.join(c['novel_classes'])} are unannotated in training. Novel AP50 "
            f"{100 * float(c['novel_ap50']):.1f}% (CLS) vs {100 * float(z['novel_ap50']):.1f}% (LazyStrike); "
            f"oracle-box chance is {100 * chance:.1f}%. {verdict} One seed of a miniature: docs/RESULTS.md has the "
            f"seeds that were run. Paper Table 5 (OV-COCO novel AP50, ViT-B/16): 17.5 -> 33.3.\n\n"
            + (f"Overrides of the miniature's settings: {', '.join(f'{k}={v}' for k, v in overrides.items())}.\n\n"
               if overrides else "")
            + f"![detections](detections.png)\n\nElapsed: {time.time() - t0:.0f} s.\n")
    write_atomic(out / "report.md", text)
    if verbose:
        print(text)
    return {"paradigm": "ovdet", "readouts": res, "report": str(out / "report.md")}
