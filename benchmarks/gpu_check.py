"""The GPU check: one run on one NVIDIA GPU (H100/H200: <= 8 minutes) that writes ONE JSON, ``OUT/gpu_check.json``.

Sections (each records ``ok``, ``seconds`` and its numbers, or ``error``):

* ``tests``: ``pytest -m gpu tests/gpu`` on the device (LazyStrike and the token path on the device equal the CPU
  result; bf16 / fp16 autocast gives finite scores and the float32 selections on well-separated inputs; fused
  attention (SDPA flash / memory-efficient kernels) on and equal to the math kernel);
* ``train``: a bf16 (``bf16-mixed``) training run of the label miniature (the demo recipe, LazyStrike K = 1) with
  Lightning ``strategy="ddp"`` (NCCL on CUDA, gloo on the CPU) on every visible GPU; steps/s and final accuracy;
* ``discovery``: images/s of the LazyStrike rule, LOST and TokenCut on a random-weight ViT-S/16 at a VOC-like size
  (368 x 480), batch 1 and batched, with a bare forward for reference, and the ratio LazyStrike / LOST;
* ``pib``: ViT-B/16 Point-in-Box evaluation throughput vs a bare forward at batch 64 (timed alternately);
* ``study``: the self-supervised study hook: runs a ``lastvit study`` config (``--study PATH``; by default
  ``configs/studies/synthetic_self_gpu.yaml`` when that file exists) on the device in bf16.

``--device cpu --smoke`` runs every section at toy sizes on the CPU in under a minute (``make test`` runs it through
tests/benchmarks/test_gpu_check.py, so the script never rots). Nothing here downloads anything: every model is
created locally with random weights and every image is synthetic.

    bash benchmarks/gpu_check.sh [--device cuda|cpu] [--smoke] --out DIR [--study PATH] [--sections a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, sync, timeit_pair  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("tests", "train", "discovery", "pib", "study")
GPU_STUDY = REPO / "configs" / "studies" / "synthetic_self_gpu.yaml"
SMOKE_STUDY = REPO / "configs" / "studies" / "synthetic_self.yaml"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- tests
def section_tests(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` on the device (in this process); per-test outcomes from its JUnit XML."""
    import pytest

    xml = out / "gpu_tests.xml"
    env = {"LASTVIT_GPU": "1", "LASTVIT_GPU_DEVICE": args.device}
    if args.smoke:
        env["LASTVIT_GPU_MODEL"] = "vit_tiny_patch16_224"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        rc = int(pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                              str(REPO / "tests" / "gpu")]))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cases = []
    if xml.is_file():
        for tc in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                el = tc.find(tag)
                if el is not None:
                    outcome, message = name, (el.get("message") or "")[:500]
            cases.append({"name": tc.get("name"), "outcome": outcome, "seconds": float(tc.get("time", 0)),
                          **({"message": message} if message else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"returncode": rc, "counts": counts, "cases": cases,
            "ok": rc == 0 and counts["passed"] > 0 and counts["passed"] == len(cases)}


# ---------------------------------------------------------------------------------------------------- train
def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    gpu = args.device.startswith("cuda")
    over: dict[str, Any] = {
        "trainer.accelerator": "gpu" if gpu else "cpu",
        "trainer.devices": max(1, torch.cuda.device_count()) if gpu else 1,
        "trainer.strategy": "ddp",
        "trainer.precision": "bf16-mixed",
        "trainer.progress_bar": False,
    }
    if args.smoke:
        over.update({"data.train_size": 256, "data.val_size": 64, "trainer.max_steps": 8, "trainer.val_every": 8,
                     "trainer.ckpt_every": 8, "trainer.log_every": 2})
    return over


def train_worker(args: argparse.Namespace) -> int:
    """The training run itself, in its own process (Lightning's DDP launcher re-runs this command per rank)."""
    import lightning as L
    import torch.distributed as dist

    from lastvit.paradigms import paradigm_recipe
    from lastvit.train import fit

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.val_s = 0.0
            self._v0 = 0.0
            self.backend: str | None = None
            self.world = 1

        def on_train_start(self, trainer, pl_module) -> None:
            self.backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
            self.world = trainer.world_size

        def on_train_batch_end(self, trainer, *a) -> None:
            # no device sync per step (it would stop the CPU from running ahead of the GPU, as training does);
            # the span from the warm-up step to the synced end of training gives the mean rate
            self.ends.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            sync(pl_module_device(trainer))
            self.ends[-1] = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._v0 = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            self.val_s += time.perf_counter() - self._v0

    def pl_module_device(trainer) -> torch.device:
        return trainer.strategy.root_device

    out = Path(args.out)
    cfg = paradigm_recipe("label", "lazystrike", out=str(out / "train_run"), seed=0, overrides=_train_overrides(args))
    timer = StepTimer()
    t0 = time.perf_counter()
    res = fit(cfg, callbacks=[timer])
    total = time.perf_counter() - t0
    if int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0:
        return 0
    ends = timer.ends
    skip = min(10, len(ends) // 5)  # warm-up steps (compilation, allocator, first batches)
    dts = sorted(b - a for a, b in zip(ends[skip:], ends[skip + 1 :], strict=False))
    span = (ends[-1] - ends[skip]) - timer.val_s if len(ends) > skip + 1 else float("nan")
    steps = len(ends) - skip - 1
    m = res["metrics"]
    _write_json(out / "train.json", {
        "recipe": "label_synthetic (label miniature, LazyStrike K = 1)", "overrides": _train_overrides(args),
        "steps": int(res["step"]), "world_size": timer.world, "process_group_backend": timer.backend,
        "precision": cfg["trainer"]["precision"],
        "steps_per_s_mean": steps / span if steps > 0 and span > 0 else float("nan"),
        "steps_per_s_median": 1.0 / dts[len(dts) // 2] if dts else float("nan"),  # per-step host intervals
        "final_val_top1": m.get("val/top1"), "final_val_loss": m.get("val/loss"), "fit_seconds": total,
        "fused_attn": bool(getattr(res["model"].encoder.blocks[0].attn, "fused_attn", False)),
        "validation_seconds": timer.val_s})
    return 0


def section_train(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The training run: in this process on one device; in a child process when several GPUs are visible (Lightning's
    DDP launcher re-runs the child's command line once per further rank)."""
    f = out / "train.json"
    if f.exists():
        f.unlink()
    if args.device.startswith("cuda") and torch.cuda.device_count() > 1:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--train-worker", "--device", args.device,
               "--out", str(out)] + (["--smoke"] if args.smoke else [])
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        if p.returncode != 0 or not f.is_file():
            return {"ok": False, "returncode": p.returncode, "output_tail": (p.stdout + p.stderr)[-4000:]}
    else:
        train_worker(args)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    res = json.loads(f.read_text())
    want = "nccl" if args.device.startswith("cuda") else "gloo"
    res["ok"] = res["process_group_backend"] == want and res["final_val_top1"] is not None
    if res["process_group_backend"] != want:
        res["error"] = f"process group backend {res['process_group_backend']!r}, expected {want!r}"
    return res


# ------------------------------------------------------------------------------------------------ discovery
def section_discovery(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import lastvit
    from lastvit.evaluate.discovery import discover

    dev = torch.device(args.device)
    if args.smoke:
        name, (h, w), n, batch = "vit_tiny_patch16_224", (96, 128), 6, 3
    else:
        name, (h, w), n, batch = "vit_small_patch16_224", (368, 480), 100, 32
    torch.manual_seed(0)
    model = lastvit.create_model(name, aggregator="lazystrike", num_classes=0).eval().to(dev)
    g = torch.Generator().manual_seed(0)
    samples = [{"image": torch.randn(3, h, w, generator=g), "boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]),
                "id": str(i)} for i in range(n)]
    methods = ["lazystrike", "lost", "tokencut"]
    res: dict[str, Any] = {"model": name + " (random weights)", "image_size": [h, w], "images": n,
                           "patches": (h // 16) * (w // 16), "methods": {}}
    boxes = {}
    for bs in (1, batch):
        discover(model, samples[: max(2, bs)], methods=methods, device=dev, batch_size=bs)  # warm-up
        r = discover(model, samples, methods=methods, device=dev, batch_size=bs)
        boxes[bs] = {m: r[m].boxes for m in methods}

        @torch.no_grad()
        def bare(bs=bs):
            for i in range(0, n, bs):
                model.forward_tokens(torch.stack([s["image"] for s in samples[i : i + bs]]).to(dev))

        bare()
        sync(dev)
        t = time.perf_counter()
        bare()
        sync(dev)
        fwd = n / (time.perf_counter() - t)
        for m in methods:
            res["methods"].setdefault(m, {})[f"fps_batch{bs if bs == 1 else 'ed'}"] = r[m].images_per_s
        res.setdefault("forward_only", {})[f"fps_batch{bs if bs == 1 else 'ed'}"] = fwd
    res["batched_size"] = batch
    res["lazystrike_over_lost_batch1"] = (res["methods"]["lazystrike"]["fps_batch1"]
                                          / res["methods"]["lost"]["fps_batch1"])
    res["lazystrike_over_lost_batched"] = (res["methods"]["lazystrike"]["fps_batched"]
                                           / res["methods"]["lost"]["fps_batched"])
    res["paper_table7_fps"] = {"lazystrike": 55.9, "lost": 29.4}
    res["batched_boxes_equal_batch1"] = {m: boxes[1][m] == boxes[batch][m] for m in methods}
    res["ok"] = all(v > 0 for m in res["methods"].values() for v in m.values())
    return res


# ------------------------------------------------------------------------------------------------------ pib
def section_pib(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import lastvit
    from lastvit.analysis import evaluate_pib

    dev = torch.device(args.device)
    if args.smoke:
        name, size, b, nb, repeats = "vit_micro_patch8_64", 64, 8, 2, 2
    else:
        name, size, b, nb, repeats = "vit_base_patch16_224", 224, 64, 4, 5
    torch.manual_seed(0)
    model = lastvit.create_model(name, aggregator="lazystrike", num_classes=1000).eval().to(dev)
    batches = []
    for i in range(nb):
        g = torch.Generator().manual_seed(i)
        xy = torch.rand(b, 2, generator=g) * size * 0.6
        batches.append({"image": torch.randn(b, 3, size, size, generator=g).to(dev),
                        "boxes": [torch.cat([p, p + size * 0.3]).reshape(1, 4) for p in xy],
                        "label": torch.zeros(b, dtype=torch.long)})

    @torch.no_grad()
    def bare():
        for bt in batches:
            model(bt["image"])

    def pib():
        return evaluate_pib(model, batches, device=dev)

    t_bare, t_pib = timeit_pair(bare, pib, dev, repeats)
    out_ = pib()
    metrics = out_[0] if isinstance(out_, tuple) else out_
    n = b * nb
    return {"model": name + " (random weights)", "batch": b, "batches": nb, "repeats": repeats,
            "bare_images_per_s": n / t_bare, "pib_images_per_s": n / t_pib, "pib_over_bare": t_bare / t_pib,
            "target": ">= 0.9", "pib_images_scored": int(metrics["num_images"]),
            "ok": t_pib > 0 and int(metrics["num_images"]) == n}


# ---------------------------------------------------------------------------------------------------- study
def run_gpu_study(config: str | Path, out: Path, device: str, smoke: bool = False) -> dict[str, Any]:
    """The self-supervised study hook: ``lastvit study`` (:func:`lastvit.study.run_study`) on ``config`` with the
    trainer on ``device`` (bf16 on a GPU). ``smoke``: only the config's first (readout, seed), through the same
    :func:`lastvit.paradigms.run_one` the study calls, on a few dozen images: checks the wiring, not the result."""
    from lastvit.study import load_study, run_study

    cfg = load_study(config)
    gpu = device.startswith("cuda")
    over = {"trainer.accelerator": "gpu" if gpu else "cpu", "trainer.precision": "bf16-mixed" if gpu else "32-true"}
    t = time.perf_counter()
    if smoke:
        from lastvit.paradigms import run_one

        readout, kw = next(iter(cfg["readouts"].items()))
        over.update({"data.train_size": 64, "data.val_size": 16, "data.global_batch": 16, "trainer.max_epochs": 1,
                     "trainer.progress_bar": False})  # any study config, the GPU one (batch 256) included
        r = run_one(cfg.get("paradigm", "label"), readout.split("@")[0], out=out / f"{readout}_seed0",
                    seed=int(cfg["seeds"][0]), overrides={**(cfg.get("overrides") or {}), **over},
                    readout_kwargs=dict(kw) or None, test_images=16, knn_bank=64, verbose=False,
                    recipe=cfg.get("recipe"))
        summary = [{"readout": readout, "accuracy": r["metrics"]["accuracy"], "pib": r["metrics"]["pib"]}]
        runs = 1
    else:
        cfg["overrides"] = {**(cfg.get("overrides") or {}), **over}
        r = run_study(cfg, out, verbose=False)
        summary, runs = r["summary"], len(r["runs"])
    return {"config": str(config), "paradigm": cfg.get("paradigm", "label"), "runs": runs, "summary": summary,
            "overrides": over, "seconds_study": time.perf_counter() - t}


def section_study(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    config = args.study or (SMOKE_STUDY if args.smoke else GPU_STUDY)
    if not Path(config).is_file():
        return {"ok": True, "ran": False, "reason": f"no study config at {config} (pass --study PATH)"}
    res = run_gpu_study(config, out / "study", args.device, smoke=args.smoke)
    res.update(ok=res["runs"] > 0, ran=True)
    return res


RUNNERS = {"tests": section_tests, "train": section_train, "discovery": section_discovery, "pib": section_pib,
           "study": section_study}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (with --device cpu: under a minute)")
    ap.add_argument("--out", required=True, help="folder for gpu_check.json (and the runs' files)")
    ap.add_argument("--study", default=None, help="a lastvit study config for the study section")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--timeout", type=float, default=480.0, help="seconds per subprocess section")
    ap.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        ap.error(f"--device must be cuda or cpu, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} but CUDA is not available here (use --device cpu)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.train_worker:
        return train_worker(args)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in RUNNERS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    report: dict[str, Any] = {"machine": machine(args.device), "smoke": args.smoke, "sections": {},
                              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    t_all = time.perf_counter()
    for name in sections:
        t = time.perf_counter()
        try:
            res = RUNNERS[name](args, out)
        except Exception as e:  # a failed section is recorded; the others still run
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.perf_counter() - t, 2)
        report["sections"][name] = res
        print(f"[gpu_check] {name}: {'ok' if res.get('ok') else 'FAILED'} ({res['seconds']:.1f} s)", flush=True)
        _write_json(out / "gpu_check.json", report)  # partial results survive a later crash
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    report["ok"] = all(r.get("ok") for r in report["sections"].values())
    _write_json(out / "gpu_check.json", report)
    print(f"[gpu_check] {'all sections ok' if report['ok'] else 'FAILURES'} in {report['seconds']:.0f} s -> "
          f"{out / 'gpu_check.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
