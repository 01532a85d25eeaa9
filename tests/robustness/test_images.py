"""Every bad image people feed: processed (converted) or skipped and counted once with its reason, never fatal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.robustness.corpus import CONVERTED, bad_images, png_header_only, voc_xml

from lastvit.cli import main
from lastvit.data import (
    DataError,
    SyntheticConfig,
    SyntheticDataset,
    build_eval_dataset,
    collate,
    skip_empty_batches,
    write_imagefolder,
)
from lastvit.data.readers import BOMB_REASON, NATIVE_REASON

GOOD = 4


def _add(root: Path, name: str, data: bytes, wh: tuple[int, int], cls: str = "square") -> None:
    stem = Path(name).stem
    (root / "val" / cls / name).write_bytes(data)
    (root / "Annotations" / "val" / f"{stem}.xml").write_text(
        voc_xml(wh[0], wh[1], [(cls, (0, 0, max(1, wh[0] // 2), max(1, wh[1] // 2)))], name))
    mw, mh = (wh if wh[0] * wh[1] <= 64 * 64 else (32, 32))
    Image.fromarray(np.full((mh, mw), 255, np.uint8)).save(root / "Masks" / "val" / f"{stem}.png")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_imagefolder(SyntheticDataset(SyntheticConfig(num_classes=2, image_size=32), split="val", size=GOOD), root)
    (root / "val" / "square").mkdir(exist_ok=True)
    for name, (data, wh, _) in bad_images().items():
        _add(root, name, data, wh)
    return root


def _expected() -> Counter:
    return Counter(reason for _, _, reason in bad_images().values() if reason)


def test_reader_counts_each_bad_image_once_and_processes_the_rest(tree: Path):
    ds = build_eval_dataset("synthetic", tree, image_size=32, resize=32)
    processed = [n for n, (_, _, r) in bad_images().items() if r is None]
    assert ds.num_images == GOOD + len(processed) + 1  # + the truncated JPEG, whose header is fine
    for _ in range(2):  # a second pass counts nothing twice
        samples = [ds[i] for i in range(len(ds))]
        assert dict(ds.skipped) == dict(_expected())
    ok = [s for s in samples if s is not None]
    assert len(ok) == GOOD + len(processed)
    assert all(s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32 for s in ok)
    assert all(torch.isfinite(s["image"]).all() for s in ok)
    for name, mode in CONVERTED.items():
        key = next(k for k in ds.fixed if k.startswith(f"converted {mode.split(';')[0]}"))
        assert ds.fixed[key] == 1, (name, key)
    assert sum(ds.fixed[k] for k in ds.fixed if k.startswith("converted")) == len(CONVERTED)
    # the errors name the file
    assert any("truncated.JPEG" in e for e in ds.extra["errors"])


def test_a_batch_whose_every_image_failed_is_empty_and_skippable(tree: Path):
    ds = build_eval_dataset("synthetic", tree, image_size=32, resize=32)
    bad = next(i for i, r in enumerate(ds.records) if r["path"].endswith("truncated.JPEG"))
    assert collate([ds[bad]]) == {}  # every sample failed: the empty batch
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, collate_fn=collate)
    batches = list(loader)
    assert sum(1 for b in batches if not b) == 1
    kept = list(skip_empty_batches(batches))
    assert len(kept) == len(ds) - 1 and all(b["image"].shape == (1, 3, 32, 32) for b in kept)
    wrapped = skip_empty_batches(loader)  # re-iterable, with the loader's len() and attributes
    assert len(wrapped) == len(ds) and wrapped.dataset is ds
    assert [b["id"] for b in wrapped] == [b["id"] for b in kept] == [b["id"] for b in wrapped]


def test_native_size_guard_and_bomb_limit(tmp_path: Path):
    root = tmp_path / "native"
    write_imagefolder(SyntheticDataset(SyntheticConfig(num_classes=2, image_size=32), split="val", size=2), root)
    (root / "val" / "square").mkdir(exist_ok=True)
    _add(root, "big.png", png_header_only(5000, 5000), (5000, 5000))  # 25 Mpx: under PIL's limit
    _add(root, "huge.png", png_header_only(12000, 12000), (12000, 12000))  # 144 Mpx: over it
    with pytest.warns(UserWarning, match=r"1 image\(s\) above 16,777,216 pixels skipped at native size .*big.png"):
        ds = build_eval_dataset("synthetic", root, image_size=None)
    assert ds.skipped == {NATIVE_REASON: 1, BOMB_REASON: 1} and ds.num_images == 2
    ds = build_eval_dataset("synthetic", root, image_size=None, max_native_pixels=None)
    assert ds.skipped == {BOMB_REASON: 1} and ds.num_images == 3  # the guard can be lifted, PIL's limit cannot


def test_no_images_names_where_it_looked(tmp_path: Path, capsys):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"no images found in {tmp_path / 'empty'}/<class>/"):
        build_eval_dataset("imagefolder", tmp_path / "empty")
    rc = main(["data", "check", "imagefolder", "--root", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no images found in" in err[0] and "Traceback" not in err[0]


def test_data_check_records_the_skips_in_metrics(tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "check"
    rc = main(["data", "check", "synthetic", "--root", str(tree), "--decode", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["skipped"] == dict(_expected())
    assert "Traceback" not in capsys.readouterr().err
