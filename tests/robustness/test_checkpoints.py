"""Bad checkpoints through the public API and the CLI: one line naming the file, non-zero exit, no output."""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
from pathlib import Path

import pytest
import torch
from tests.robustness.corpus import bad_checkpoints, write_all

import lastvit
from lastvit.checkpoints import save_checkpoint
from lastvit.cli import main
from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

_spec = importlib.util.spec_from_file_location(
    "_ckpt_builders", pathlib.Path(__file__).parents[1] / "checkpoints" / "_builders.py")
_builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_builders)

NAMES = ["random_bytes.pth", "truncated.pth", "zip_not_torch.pth", "resnet_state_dict.pth", "wrong_shapes.pth",
         "empty_state_dict.pth", "nan_weights.pth", "truncated.safetensors", "garbage.safetensors", "zero_bytes.pth"]


def _bytes(obj) -> bytes:
    f = io.BytesIO()
    torch.save(obj, f)
    return f.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import torchvision
    from safetensors.torch import save as st_save

    d = tmp_path_factory.mktemp("bad_ckpts")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10), d / "good.pt")
    sd = _builders.timm_vit().state_dict()
    wrong = dict(sd)
    wrong["blocks.0.attn.qkv.weight"] = torch.zeros(7, 5)
    nan = {k: torch.full_like(v, float("nan")) for k, v in sd.items()}
    files = bad_checkpoints((d / "good.pt").read_bytes(), st_save(sd),
                            _bytes(torchvision.models.resnet18().state_dict()), _bytes(wrong), _bytes({}),
                            _bytes(nan))
    assert sorted(files) == sorted(NAMES)
    write_all(d, files)
    write_imagefolder(SyntheticDataset(SyntheticConfig(num_classes=2, image_size=64), split="val", size=2),
                      d / "data")
    return d


def _one_line_error(err: str, verb: str, path: Path) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lastvit {verb}: error: ") and str(path) in lines[0], lines[0]


@pytest.mark.parametrize("name", NAMES)
def test_inspect_refuses_with_one_line(corpus: Path, name: str, capsys):
    path = corpus / name
    rc = main(["inspect", str(path)])
    assert rc != 0
    _one_line_error(capsys.readouterr().err, "inspect", path)


@pytest.mark.parametrize("name", NAMES)
def test_create_model_raises_a_value_error_naming_the_file(corpus: Path, name: str):
    with pytest.raises(ValueError, match=str(corpus / name).replace(".", r"\.")):
        lastvit.create_model(checkpoint=str(corpus / name))


@pytest.mark.parametrize("name", NAMES)
def test_convert_refuses_and_writes_nothing(corpus: Path, name: str, tmp_path: Path, capsys):
    out = tmp_path / "converted.pt"
    rc = main(["convert", str(corpus / name), "--out", str(out)])
    assert rc != 0 and not out.exists() and not list(tmp_path.iterdir())
    _one_line_error(capsys.readouterr().err, "convert", corpus / name)


@pytest.mark.parametrize("name", ["nan_weights.pth", "garbage.safetensors", "resnet_state_dict.pth"])
def test_analyze_refuses_and_leaves_no_result(corpus: Path, name: str, tmp_path: Path, capsys):
    out = tmp_path / "analysis"
    rc = main(["analyze", "pib", "--checkpoint", str(corpus / name), "--dataset", "synthetic", "--root",
               str(corpus / "data"), "--out", str(out), "--no-progress"])
    assert rc != 0
    _one_line_error(capsys.readouterr().err, "analyze pib", corpus / name)
    assert not (out / "metrics.json").exists() and not list(out.glob(".lastvit*"))


def test_the_good_checkpoint_still_loads(corpus: Path, capsys):
    assert main(["inspect", str(corpus / "good.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info
