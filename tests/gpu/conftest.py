"""GPU tests: marked ``gpu`` and deselected (not skipped) unless asked for.

They run with ``LASTVIT_GPU=1`` or a ``-m`` expression naming ``gpu`` (``pytest -m gpu tests/gpu``), on the device
``LASTVIT_GPU_DEVICE`` (default ``cuda``; ``cpu`` runs the same assertions on the CPU, as
``benchmarks/gpu_check.sh --device cpu --smoke`` does). Asking for CUDA on a machine without it fails.
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: CUDA checks; deselected unless LASTVIT_GPU=1 or -m selects gpu (see tests/gpu/conftest.py)")


def _requested(config: pytest.Config) -> bool:
    return os.environ.get("LASTVIT_GPU") == "1" or "gpu" in (config.option.markexpr or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _requested(config):
        return
    gpu = [it for it in items if it.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [it for it in items if it.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("LASTVIT_GPU_DEVICE", "cuda")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"LASTVIT_GPU_DEVICE={name}: CUDA is not available on this machine "
                           "(set LASTVIT_GPU_DEVICE=cpu to run these checks on the CPU)")
    return dev
