"""Object-discovery throughput: the LazyStrike patch-score rule vs LOST (and TokenCut) on the same backbone.

Both methods run image by image (batch 1, as LOST does) on a ViT-S/16 with the LazyStrike readout (random
weights: throughput does not depend on them) at a VOC-like size (default 480x368 after LOST's padding to a
multiple of 16). A method's time per image = its forward pass + its box extraction (same code as
``lastvit evaluate discovery``); the methods take turns image by image so that a shared machine's load hits
them alike. Also reported: the post-processing alone on pre-computed tokens.

    .venv/bin/python benchmarks/bench_discovery.py [--device cuda] [--images 100] [--size 368 480] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lastvit import create_model
from lastvit.evaluate.discovery import (
    last_block_keys,
    lazystrike_box,
    lost_box,
    model_patch_scores,
    tokencut_box,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, images, device) -> float:
    for x in images[:3]:  # warm-up
        fn(x)
    _sync(device)
    t = time.perf_counter()
    for x in images:
        fn(x)
    _sync(device)
    return time.perf_counter() - t


def _interleaved(methods: dict, images, device) -> dict[str, list[float]]:
    """Per-image seconds of every method, the methods taking turns on each image (fair under shared load)."""
    for fn in methods.values():  # warm-up
        for x in images[:2]:
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for x in images:
        for name, fn in methods.items():
            _sync(device)
            t = time.perf_counter()
            fn(x)
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--size", type=int, nargs=2, default=(368, 480), metavar=("H", "W"))
    ap.add_argument("--tokencut", action="store_true", help="also time TokenCut")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=0).eval().to(device)
    p = model.patch_size
    h, w = args.size
    grid = (h // p, w // p)
    images = [torch.randn(1, 3, h, w, device=device) for _ in range(args.images)]

    @torch.no_grad()
    def forward_only(x):
        model.forward_tokens(x)

    @torch.no_grad()
    def lazystrike(x):
        s = model_patch_scores(model, x)
        lazystrike_box(s[0], p, (h, w))

    @torch.no_grad()
    def lost(x):
        lost_box(last_block_keys(model, x)[0, model.num_prefix_tokens :], grid, p, (h, w))

    @torch.no_grad()
    def tokencut(x):
        tokencut_box(last_block_keys(model, x)[0, model.num_prefix_tokens :], grid, p, (h, w))

    methods = {"forward_only": forward_only, "lazystrike": lazystrike, "lost": lost}
    if args.tokencut:
        methods["tokencut"] = tokencut
    res = {}
    for name, ts in _interleaved(methods, images, device).items():
        med = statistics.median(ts)
        res[name] = {"images_per_s": len(ts) / sum(ts), "ms_per_image": 1000 * sum(ts) / len(ts),
                     "median_ms": 1000 * med}

    # post-processing alone, on tokens computed once
    with torch.no_grad():
        s = model_patch_scores(model, images[0])
        keys = last_block_keys(model, images[0])[0, model.num_prefix_tokens :].clone()
    post = {
        "lazystrike_rule": _time(lambda _: lazystrike_box(s[0], p, (h, w)), images, device),
        "lost_rule": _time(lambda _: lost_box(keys, grid, p, (h, w)), images, device),
    }
    post = {k: 1000 * v / len(images) for k, v in post.items()}
    ratio = res["lazystrike"]["images_per_s"] / res["lost"]["images_per_s"]
    out = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "model": args.model, "image_size": [h, w], "grid": list(grid), "images": args.images,
        "end_to_end": res, "post_ms_per_image": post, "speedup_lazystrike_over_lost": ratio,
        "torch": torch.__version__,
    }
    print(f"| method | images/s | mean ms/image | median ms/image |  ({out['device']}, {args.model}, {h}x{w}, batch 1)")
    print("|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v['images_per_s']:.2f} | {v['ms_per_image']:.1f} | {v['median_ms']:.1f} |")
    print(f"post-processing only: LazyStrike rule {post['lazystrike_rule']:.2f} ms, LOST rule "
          f"{post['lost_rule']:.2f} ms; end-to-end speed-up LazyStrike / LOST = {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
