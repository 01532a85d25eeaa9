"""Shared timing helpers of the benchmarks: alternating baseline/subject timings and a machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock timings cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timeit_pair(base: Callable[[], object], subject: Callable[[], object], device: torch.device | str,
                repeats: int, clock: str = "wall", warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``base`` and ``subject``, run ALTERNATELY ``repeats`` times after ``warmup`` calls of each
    (load drift on a shared machine hits both alike). ``clock="cpu"``: this process's CPU time."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        base(), subject()
    tb, ts = [], []
    for _ in range(repeats):
        for fn, acc in ((base, tb), (subject, ts)):
            sync(device)
            t0 = now()
            fn()
            sync(device)
            acc.append(now() - t0)
    return statistics.median(tb), statistics.median(ts)


def machine(device: torch.device | str) -> dict[str, object]:
    """What the numbers were measured on."""
    dev = torch.device(device)
    info: dict[str, object] = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["gpus_visible"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info
