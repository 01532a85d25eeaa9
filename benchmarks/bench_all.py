"""Every speed target of issue 15 as a ratio to its limit, in one run; baseline and subject timed ALTERNATELY in the
same process (robust to a shared, loaded machine). Prints a Markdown table; ``--json`` writes the numbers.

Sections (``--only a,b``):

* ``train``: a Lightning ``lastvit.train.fit`` step (the demo recipe) vs a bare PyTorch loop of the same model,
  batch, optimiser, schedule and data (target >= 0.9x throughput); ``--profile`` adds a cProfile of the
  Lightning run's per-step Python overhead;
* ``discovery``: ``discover()`` with the LazyStrike rule, LOST and TokenCut vs a bare forward over the same images
  (target >= 0.9x), batch 1 and batched (resized inputs);
* ``eigensolver``: TokenCut's eigensolver (``fiedler_vector``, each solver) vs a dense symmetric eigensolver
  (``torch.linalg.eigh`` of the normalised graph) on the same graph;
* ``zeroshot``: zero-shot segmentation's sliding window (``slide_inference`` + ``window_logits``) vs a bare forward
  of the same windows (target >= 0.9x);
* ``coarse``: coarse segmentation (``evaluate_coarse_seg``) vs a bare forward over the same images (>= 0.9x);
* ``pib``: Point-in-Box (``evaluate_pib``) vs a bare forward (>= 0.9x);
* ``masking``: the masking probe in token mode vs pixel mode (target <= 0.6x of the pixel time).

    .venv/bin/python benchmarks/bench_all.py [--only train,discovery] [--device cpu] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CLOCKS, machine, timeit_pair  # noqa: E402

import lastvit  # noqa: E402

ROWS: list[dict[str, Any]] = []


def row(section: str, what: str, base_s: float, subj_s: float, target: str, kind: str = "throughput") -> None:
    """``kind="throughput"``: ratio = base/subject time (>= target good); ``"cost"``: subject/base (<= target)."""
    ratio = base_s / subj_s if kind == "throughput" else subj_s / base_s
    ROWS.append({"section": section, "what": what, "baseline_s": base_s, "subject_s": subj_s, "ratio": ratio,
                 "ratio_kind": kind, "target": target})
    print(f"  {what}: baseline {1e3 * base_s:.1f} ms, subject {1e3 * subj_s:.1f} ms -> {ratio:.3f}x ({target})",
          flush=True)


# --------------------------------------------------------------------------------------------------- training
def bench_train(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import lightning as L

    from lastvit.paradigms import paradigm_recipe
    from lastvit.train import fit
    from lastvit.train.classify import build
    from lastvit.train.config import resolve_config
    from lastvit.train.optim import build_optimizer, build_scheduler, param_groups

    steps, rounds = args.train_steps, args.rounds
    now = CLOCKS[args.clock]
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    over = {"data.train_size": 64 * (steps + 8), "data.val_size": 64, "trainer.max_steps": steps + 5,
            "trainer.val_every": 10_000, "trainer.ckpt_every": 0, "trainer.progress_bar": False}

    class StepEnds(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *a: Any) -> None:
            self.ends.append(now())

    def lightning_steps(profile: bool = False) -> list[float]:
        cfg = paradigm_recipe("label", "lazystrike", out=str(tmp / f"L{len(lt)}"), seed=0, overrides=over)
        cb = StepEnds()
        if profile:
            pr = cProfile.Profile()
            pr.enable()
        fit(cfg, callbacks=[cb])
        if profile:
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
            out["train_profile"] = s.getvalue()
        return [b - a for a, b in zip(cb.ends[5:], cb.ends[6:], strict=False)]

    def bare_steps() -> list[float]:
        cfg = resolve_config(paradigm_recipe("label", "lazystrike", out=str(tmp / "bare"), seed=0, overrides=over))
        L.seed_everything(0, verbose=False)
        module, dm = build(cfg)
        model = module.model.train()
        dm.setup("fit")
        opt = build_optimizer(param_groups(model, float(cfg["optim"]["weight_decay"])), cfg["optim"])
        sched = build_scheduler(opt, int(cfg["trainer"]["max_steps"]), cfg["optim"])
        ends = []
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= steps + 5:
                break
            logits = model(batch["image"])
            loss = F.cross_entropy(logits, batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.detach().item()  # Lightning's progress/logging reads the loss once per step too
            ends.append(now())
        return [b - a for a, b in zip(ends[5:], ends[6:], strict=False)]

    lt: list[float] = []
    bt: list[float] = []
    for r in range(rounds):  # alternate whole runs; per-step intervals after 5 warm-up steps
        bt += bare_steps()
        lt += lightning_steps(profile=args.profile and r == rounds - 1)
    print(f"train ({rounds} x {steps} steps each, demo recipe: vit_micro_patch8_64, batch 64, AdamW):")
    row("train", "Lightning fit step vs bare PyTorch step (median)", statistics.median(bt), statistics.median(lt),
        ">= 0.9")
    row("train", "Lightning fit step vs bare PyTorch step (mean)", statistics.fmean(bt), statistics.fmean(lt),
        ">= 0.9")


# -------------------------------------------------------------------------------------------------- discovery
def _vit(name: str, dev: torch.device, **kw: Any) -> lastvit.LastViT:
    torch.manual_seed(0)
    return lastvit.create_model(name, aggregator="lazystrike", **kw).eval().to(dev)


def bench_discovery(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from lastvit.evaluate.discovery import discover

    dev = torch.device(args.device)
    model = _vit(args.disc_model, dev, num_classes=0)
    h, w = args.disc_size
    g = torch.Generator().manual_seed(0)
    samples = [{"image": torch.randn(3, h, w, generator=g), "boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]),
                "id": str(i)} for i in range(args.disc_images)]
    print(f"discovery ({args.disc_model}, {h}x{w}, {len(samples)} images):")
    for bs in (1, args.disc_batch):
        def bare(bs=bs):
            with torch.no_grad():
                for i in range(0, len(samples), bs):
                    model.forward_tokens(torch.stack([s["image"] for s in samples[i: i + bs]]).to(dev))

        for m in ("lazystrike", "lost", "tokencut"):
            def subj(m=m, bs=bs):
                discover(model, samples, methods=[m], device=dev, batch_size=bs)

            tb, ts = timeit_pair(bare, subj, dev, args.repeats, args.clock)
            row("discovery", f"{m}, batch {bs}, vs bare forward", tb, ts, ">= 0.9")
    r1 = discover(model, samples, methods=["lazystrike", "lost", "tokencut"], device=dev)
    rb = discover(model, samples, methods=["lazystrike", "lost", "tokencut"], device=dev, batch_size=args.disc_batch)
    out["discovery_batched_boxes_equal"] = {m: r1[m].boxes == rb[m].boxes for m in r1}
    print(f"  batched boxes == batch-1 boxes: {out['discovery_batched_boxes_equal']}")


def bench_eigensolver(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from lastvit.evaluate.discovery import EIG_SOLVERS, LastKeys, fiedler_vector, tokencut_box

    dev = torch.device("cpu")
    model = _vit(args.disc_model, dev, num_classes=0)
    h, w = args.disc_size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LastKeys(model) as hk:
        model.forward_tokens(x)
    feats = hk.keys[0, model.num_prefix_tokens:]
    f = F.normalize(feats.double(), dim=1)
    W = np.where((f @ f.T).numpy() > 0.2, 1.0, 1e-5)
    n = W.shape[0]

    def dense_torch():
        d = W.sum(1)
        r = 1.0 / np.sqrt(d)
        _, v = torch.linalg.eigh(torch.from_numpy(W * r[:, None] * r[None, :]))
        return v[:, -2].numpy() * r

    print(f"eigensolver (TokenCut graph of {n} patches, {args.disc_model} keys at {h}x{w}):")
    boxes = {}
    for s in EIG_SOLVERS:
        tb, ts = timeit_pair(dense_torch, lambda s=s: fiedler_vector(W, s), dev, args.repeats * 2, args.clock)
        row("eigensolver", f"fiedler_vector(solver={s!r}) vs torch.linalg.eigh (dense symmetric)", tb, ts, ">= 1.0")
        boxes[s] = tokencut_box(feats, (h // model.patch_size, w // model.patch_size), model.patch_size,
                                solver=s)[0]
    out["eigensolver_boxes_equal"] = len({tuple(b) for b in boxes.values()}) == 1
    print(f"  boxes equal across solvers: {out['eigensolver_boxes_equal']}")


# ------------------------------------------------------------------------------------------ zero-shot / coarse
def bench_zeroshot(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from lastvit.evaluate.zeroshot_seg import slide_inference, window_logits

    dev = torch.device(args.device)
    model = _vit("vit_tiny_patch16_224", dev, num_classes=0)
    q = 21
    text = F.normalize(torch.randn(q, model.encoder.embed_dim), dim=-1).to(dev)
    img = torch.randn(1, 3, 336, 448, generator=torch.Generator().manual_seed(2)).to(dev)
    crop, stride = 224, 112
    fn = window_logits(model, text)
    wins = []
    hg, wg = (336 - crop + stride - 1) // stride + 1, (448 - crop + stride - 1) // stride + 1
    for i in range(hg):
        for j in range(wg):
            y2, x2 = min(i * stride + crop, 336), min(j * stride + crop, 448)
            wins.append(img[..., y2 - crop: y2, x2 - crop: x2])
    batch = torch.cat(wins)

    def bare():
        with torch.no_grad():
            for k in range(0, len(batch), 16):
                model.forward_tokens(batch[k: k + 16])

    def subj():
        slide_inference(fn, img, q, crop=crop, stride=stride)

    print(f"zero-shot segmentation (vit_tiny_patch16_224, 336x448, {len(wins)} windows of {crop}):")
    tb, ts = timeit_pair(bare, subj, dev, args.repeats, args.clock)
    row("zeroshot", f"slide_inference over {len(wins)} windows vs bare forward of the windows", tb, ts, ">= 0.9")


def bench_coarse(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from lastvit.evaluate.coarse_seg import evaluate_coarse_seg

    dev = torch.device(args.device)
    model = _vit("vit_small_patch16_224", dev, num_classes=0)
    g = torch.Generator().manual_seed(3)
    samples = []
    for i in range(args.disc_images):
        m = torch.zeros(224, 224, dtype=torch.bool)
        m[40:150, 60:170] = True
        samples.append({"image": torch.randn(3, 224, 224, generator=g), "mask": m, "id": str(i)})

    def bare():
        with torch.no_grad():
            for s in samples:
                model.forward_tokens(s["image"][None].to(dev))

    def subj():
        evaluate_coarse_seg(model, samples, device=dev)

    print(f"coarse segmentation (vit_small_patch16_224, 224x224, {len(samples)} images, batch 1):")
    tb, ts = timeit_pair(bare, subj, dev, args.repeats, args.clock)
    row("coarse", "evaluate_coarse_seg vs bare forward", tb, ts, ">= 0.9")


def bench_pib_masking(args: argparse.Namespace, out: dict[str, Any], which: str) -> None:
    from lastvit.analysis import evaluate_pib, masking_probe

    dev = torch.device(args.device)
    model = _vit("vit_tiny_patch16_224", dev, num_classes=100)
    b, size = 16, 224
    batches = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        xy = torch.rand(b, 2, generator=g) * size * 0.6
        batches.append({"image": torch.randn(b, 3, size, size, generator=g).to(dev),
                        "boxes": [torch.cat([p, p + size * 0.3]).reshape(1, 4) for p in xy],
                        "label": torch.zeros(b, dtype=torch.long)})
    if which == "pib":
        def bare():
            with torch.no_grad():
                for bt in batches:
                    model(bt["image"])

        print(f"Point-in-Box (vit_tiny_patch16_224, 2 batches of {b}):")
        tb, ts = timeit_pair(bare, lambda: evaluate_pib(model, batches, device=dev), dev, args.repeats, args.clock)
        row("pib", "evaluate_pib vs bare forward", tb, ts, ">= 0.9")
    else:
        fr = (0.1, 0.3, 0.5, 0.7, 0.9)
        x, y = batches[0]["image"], batches[0]["label"]
        print(f"masking probe (vit_tiny_patch16_224, {b} images, {len(fr)} levels x 3 orders):")
        tb, ts = timeit_pair(lambda: masking_probe(model, x, y, fractions=fr, mode="pixel"),
                             lambda: masking_probe(model, x, y, fractions=fr, mode="token"), dev,
                             max(1, args.repeats // 2), args.clock)
        row("masking", "token mode vs pixel mode (time ratio)", tb, ts, "<= 0.6", kind="cost")


SECTIONS = {
    "train": bench_train,
    "discovery": bench_discovery,
    "eigensolver": bench_eigensolver,
    "zeroshot": bench_zeroshot,
    "coarse": bench_coarse,
    "pib": lambda a, o: bench_pib_masking(a, o, "pib"),
    "masking": lambda a, o: bench_pib_masking(a, o, "masking"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall time, or this process's CPU time (steadier on an oversubscribed CPU; not for CUDA)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating Lightning / bare training runs")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--profile", action="store_true", help="cProfile the last Lightning run (into --json)")
    ap.add_argument("--disc-model", default="vit_small_patch16_224")
    ap.add_argument("--disc-size", type=int, nargs=2, default=(368, 480), metavar=("H", "W"))
    ap.add_argument("--disc-images", type=int, default=4)
    ap.add_argument("--disc-batch", type=int, default=4)
    ap.add_argument("--json", help="write rows + machine to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    info: dict[str, Any] = {"machine": machine(args.device), "args": copy.deepcopy(vars(args))}
    print(f"machine: {info['machine']}")
    for name in names:
        SECTIONS[name](args, info)
    print("\n| section | what | baseline (ms) | subject (ms) | ratio | target |\n|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['section']} | {r['what']} | {1e3 * r['baseline_s']:.1f} | {1e3 * r['subject_s']:.1f} "
              f"| {r['ratio']:.3f} | {r['target']} |")
    if args.profile and "train_profile" in info:
        print("\nLightning run, top functions by own time:\n" + info["train_profile"])
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "rows": ROWS}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
