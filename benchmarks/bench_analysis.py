"""Cost of the diagnostics against a bare forward of the same model and batch.

1. Point-in-Box evaluation throughput (``evaluate_pib``: one forward, cosine scores, argmax, box rules) vs a bare
   ``model(images)`` (target >= 0.9x).
2. Masking probe: token dropping vs pixel masking at the same levels (target <= 0.6x of the pixel cost).

    .venv/bin/python benchmarks/bench_analysis.py [--model vit_tiny_patch16_224] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import lastvit
from lastvit.analysis import evaluate_pib, masking_probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CLOCKS, timeit_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--aggregator", default="lazystrike")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=2, help="batches per PiB pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                    help="wall time, or process CPU time (use on a shared, oversubscribed CPU; not for CUDA)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    model = lastvit.create_model(args.model, aggregator=args.aggregator, num_classes=100).to(dev).eval()
    size = int(model.arch["img_size"])
    b = args.batch_size
    batches = []
    for i in range(args.batches):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(b, 3, size, size, generator=g).to(dev)
        xy = torch.rand(b, 2, generator=g) * size * 0.6
        boxes = [torch.cat([p, p + size * 0.3]).reshape(1, 4) for p in xy]
        batches.append({"image": x, "boxes": boxes, "label": torch.zeros(b, dtype=torch.long)})
    n_img = b * args.batches
    print(f"model {args.model} ({args.aggregator}), batch {b} x {args.batches}, device {dev}, "
          f"threads {torch.get_num_threads()}, clock {args.clock}")

    @torch.no_grad()
    def bare():
        for bt in batches:
            model(bt["image"])

    def pib():
        evaluate_pib(model, batches, device=dev)

    t_bare, t_pib = timeit_pair(bare, pib, dev, args.repeats, args.clock)
    print(f"bare forward : {n_img / t_bare:8.1f} img/s")
    print(f"PiB eval     : {n_img / t_pib:8.1f} img/s   ratio {t_bare / t_pib:.3f}x of bare (target >= 0.9)")

    fr = [float(f) for f in args.fractions.split(",")]
    x, y = batches[0]["image"], batches[0]["label"]

    def probe(mode):
        return lambda: masking_probe(model, x, y, fractions=fr, mode=mode)

    t_pix, t_tok = timeit_pair(probe("pixel"), probe("token"), dev, max(1, args.repeats // 2), args.clock)
    print(f"masking probe, {len(fr)} levels x 3 orders on {b} images:")
    print(f"  pixel masking: {t_pix:7.3f} s")
    print(f"  token drop   : {t_tok:7.3f} s   ratio {t_tok / t_pix:.3f}x of pixel (target <= 0.6)")
    print(f"  expected forwards: 1 + 3 x {len(fr)} = {1 + 3 * len(fr)} per image; "
          f"mean kept share (token drop) {sum(1 - f for f in fr) / len(fr):.2f}")


if __name__ == "__main__":
    main()
