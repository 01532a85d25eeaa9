"""Image-text readers: CSV and webdataset-style tar shards, bad entries skipped and counted."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lastvit.data.text import ImageTextCSV, ImageTextTar, TokenizingCollate, clip_transform
from lastvit.data.tokenizer import ClipTokenizer


def _png(colour, size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), colour, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_csv_pairs_skip_and_count(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "img" / "blue.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    csv = tmp_path / "pairs.csv"
    csv.write_text("filepath,title\nimg/red.png,a red thing\nimg/missing.png,gone\nimg/blue.png,\"a blue, thing\"\n"
                   "img/broken.png,broken\nimg/red.png,\n")
    ds = ImageTextCSV(csv, transform=clip_transform(8))
    assert len(ds) == 3 and ds.bad == {"missing file": 1, "empty caption": 1}
    s = ds[0]
    assert s["caption"] == "a red thing" and s["id"] == "red" and s["label"] == -1
    assert s["image"].shape == (3, 8, 8) and s["boxes"].shape == (0, 4)
    # the red image normalised with the OpenAI statistics
    want = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(ds.mean)) / torch.tensor(ds.std)
    torch.testing.assert_close(s["image"][:, 4, 4], want, atol=1e-5, rtol=0)
    assert ds[1]["caption"] == "a blue, thing"
    # the undecodable image is skipped in favour of the next entry and counted
    s2 = ds[2]
    assert s2["id"] == "red" and ds.bad["undecodable image"] == 1
    batch = TokenizingCollate(ClipTokenizer(context_length=8))([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["text"].shape == (2, 8)
    assert batch["caption"] == ["a red thing", "a blue, thing"]


def test_csv_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ImageTextCSV(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("onlyonecolumn\nx\n")
    with pytest.raises(ValueError, match="bad.csv"):
        ImageTextCSV(bad)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_tar_shards_pair_and_count(tmp_path):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    with tarfile.open(shard_dir / "000000.tar", "w") as tf:
        _add(tf, "sub/0001.jpg", _jpg((0, 255, 0)))
        _add(tf, "sub/0001.txt", b"a green square\n")
        _add(tf, "0002.png", _png((255, 255, 0)))
        _add(tf, "0002.txt", b"a yellow square")
        _add(tf, "0003.png", _png((9, 9, 9)))  # no caption
        _add(tf, "0004.txt", b"caption without image")
        _add(tf, "0005.jpg", b"garbage bytes")
        _add(tf, "0005.txt", b"undecodable")
        _add(tf, "0006.jpg", _jpg((1, 2, 3)))
        _add(tf, "0006.txt", b"   ")  # empty caption
    (shard_dir / "000001.tar").write_bytes(b"this is not a tar archive at all" * 20)
    ds = ImageTextTar(shard_dir, transform=clip_transform(8))
    assert len(ds) == 3
    assert ds.bad == {"unpaired member": 2, "empty caption": 1, "unreadable shard": 1}
    caps = [ds[i]["caption"] for i in range(2)]
    assert caps == ["a green square", "a yellow square"]
    assert ds[0]["id"] == "sub/0001"
    g = ds[0]["image"][:, 4, 4] * torch.tensor(ds.std) + torch.tensor(ds.mean)
    assert g[1] > 0.9 and g[0] < 0.1  # green survived JPEG
    ds[2]  # 0005 does not decode: skipped to the next entry, counted
    assert ds.bad["undecodable image"] == 1
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        ImageTextTar([shard_dir / "missing.tar"])
