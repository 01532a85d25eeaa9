"""``lastvit.evaluate.classification`` and ``lastvit evaluate classify``: no silent wrong numbers (issue 17).

The model is evaluated with the transform it was trained for (its size, crop ratio, normalisation) unless the user
overrides it; a head whose class count differs from the dataset's is refused; a batch whose every image fails to
decode is skipped and counted; the load report and the transform are recorded in metrics.json.
"""

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from lastvit.cli import main

SYN_NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # SyntheticConfig's normalisation
DEMO = 64  # the demo's model (vit_micro_patch8_64) and benchmark are 64 px


def _tree(root, image_size=DEMO, classes=4, n_train=24, n_val=16):
    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

    cfg = SyntheticConfig(image_size=image_size, num_classes=classes)
    write_imagefolder(SyntheticDataset(cfg, split="train", size=n_train, seed=0), root)
    write_imagefolder(SyntheticDataset(cfg, split="val", size=n_val, seed=1), root)
    return root


def _trained_model(root, image_size=DEMO, classes=4):
    """The demo's architecture with its head fitted (logistic regression on its frozen pooled token) at its training
    transform: the whole ``image_size`` image, the tree's normalisation."""
    from lastvit import create_model
    from lastvit.data import build_eval_dataset, collate
    from lastvit.evaluate import extract_features, linear_probe

    torch.manual_seed(0)
    model = create_model("vit_micro_patch8_64", img_size=image_size, num_classes=classes)
    ds = build_eval_dataset("synthetic", root, split="train", image_size=image_size, resize=image_size,
                            mean=SYN_NORM[0], std=SYN_NORM[1])
    f, y = extract_features(model, torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate))
    _, clf = linear_probe(f, y, f, y, epochs=30, num_classes=classes, return_model=True)
    mu, sd = f.double().mean(0), f.double().std(0, unbiased=False).clamp_min(1e-6)
    w = clf.weight.detach().double() / sd
    with torch.no_grad():  # the probe standardises features; fold that into the head
        model.head.weight.copy_(w.float())
        model.head.bias.copy_((clf.bias.detach().double() - (w * mu).sum(1)).float())
    return model.eval()


@pytest.fixture(scope="module")
def tree_and_model(tmp_path_factory):
    from lastvit.checkpoints import save_checkpoint

    base = tmp_path_factory.mktemp("cls")
    root = _tree(base / "syn")
    model = _trained_model(root)
    ck = base / "model.pt"
    save_checkpoint(model, ck)
    return root, ck, model


def _run(*argv):
    return main(["evaluate", "classify", *map(str, argv), "--no-progress"])


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _rows(out):
    with open(out / "per_class.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_transform_comes_from_the_model_and_equals_the_right_flags(tree_and_model, tmp_path):
    root, ck, _ = tree_and_model
    a, b = tmp_path / "auto", tmp_path / "flags"
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", a) == 0
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", b,
                "--image-size", DEMO, "--resize", DEMO, "--mean", 0.5, 0.5, 0.5, "--std", 0.25, 0.25, 0.25) == 0
    ma, mb = _metrics(a), _metrics(b)
    assert ma["head"] == mb["head"] and _rows(a) == _rows(b)
    assert ma["head"]["images"] == 16
    t = ma["eval_transform"]
    assert (t["image_size"], t["resize"], t["mean"], t["std"]) == (DEMO, DEMO, [0.5] * 3, [0.25] * 3)
    assert t["sources"]["image_size"] == "model img_size" and t["sources"]["mean"] == "synthetic tree"
    assert mb["eval_transform"]["sources"]["image_size"] == "user"
    # the fixed Resize 256 / CenterCrop 224 that evaluate classify used before gives another (wrong) number
    c = tmp_path / "old_default"
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", c,
                "--image-size", 224, "--resize", 256) == 0
    assert _metrics(c)["head"] != ma["head"]
    assert ma["load_report"]["format"] == "lastvit" and ma["load_report"]["load"]["missing"] == []


def test_transform_recorded_in_the_checkpoint_is_used(tree_and_model, tmp_path):
    from lastvit.checkpoints import save_checkpoint

    root, _, model = tree_and_model
    ck = tmp_path / "rec.pt"
    save_checkpoint(model, ck, extra={"data": {"image_size": 24, "crop_pct": 0.75, "mean": [0.4] * 3,
                                               "std": [0.3] * 3}})
    out = tmp_path / "o"
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", out) == 0
    t = _metrics(out)["eval_transform"]
    assert (t["image_size"], t["resize"], t["mean"], t["std"]) == (24, 32, [0.4] * 3, [0.3] * 3)
    assert t["sources"]["image_size"] == "checkpoint" and t["sources"]["mean"] == "checkpoint"


def test_head_class_count_mismatch_is_an_error(tree_and_model, tmp_path, capsys):
    from lastvit import create_model
    from lastvit.checkpoints import save_checkpoint
    from lastvit.evaluate import classification

    root, _, _ = tree_and_model
    m5 = create_model(None, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5)
    ck = tmp_path / "m5.pt"
    save_checkpoint(m5, ck)
    out = tmp_path / "o"
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 classes" in err[0] and "has 4" in err[0]
    assert not (out / "metrics.json").exists()
    # a label beyond the head, on a dataset that does not name its classes
    batches = [(torch.zeros(2, 3, 32, 32), torch.tensor([0, 7]))]
    with pytest.raises(ValueError, match="label 7"):
        classification(m5, batches, modes=("head",))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_of_undecodable_images_is_skipped_and_counted(tree_and_model, tmp_path, workers):
    import shutil

    root, ck, _ = tree_and_model
    bad = tmp_path / "syn"
    shutil.copytree(root, bad)
    victim = sorted((bad / "val").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])  # a real PNG header, the pixel data cut off
    out = tmp_path / "o"
    assert _run("--checkpoint", ck, "--dataset", "synthetic", "--root", bad, "--split", "val", "--batch-size", 1,
                "--modes", "head,knn", "--train-split", "train", "--num-workers", workers, "--out", out) == 0
    m = _metrics(out)
    assert m["head"]["images"] == 15 and m["test_images"] == 15 and m["train_images"] == 24
    assert sum(m["skipped"].values()) == 1
    assert m["empty_batches"]["test"] == 1 and m["empty_batches"]["train"] == 0


def test_classification_library_call_matches_the_probe_functions(tree_and_model):
    from lastvit.data import build_eval_dataset, collate
    from lastvit.evaluate import classification, extract_features, knn_accuracy

    root, _, model = tree_and_model
    kw = dict(image_size=DEMO, resize=DEMO, mean=SYN_NORM[0], std=SYN_NORM[1])
    te = build_eval_dataset("synthetic", root, split="val", **kw)
    tr = build_eval_dataset("synthetic", root, split="train", **kw)
    res = classification(model, te, tr, modes=("head", "knn"), batch_size=5, knn_k=3)
    f1, y1 = extract_features(model, torch.utils.data.DataLoader(tr, batch_size=7, collate_fn=collate))
    f2, y2 = extract_features(model, torch.utils.data.DataLoader(te, batch_size=7, collate_fn=collate))
    assert res["knn"]["top1"] == pytest.approx(knn_accuracy(f1, y1, f2, y2, k=3, num_classes=4))
    with torch.no_grad():
        pred = torch.cat([model(b["image"]).argmax(1) for b in
                          torch.utils.data.DataLoader(te, batch_size=16, collate_fn=collate)])
    assert res["head"]["top1"] == pytest.approx(100.0 * float((pred == y2).double().mean()))
    with pytest.raises(ValueError, match="training features"):
        classification(model, te, None, modes=("knn",))
    with pytest.raises(ValueError, match="unknown modes"):
        classification(model, te, tr, modes=("head", "svm"))


def _timm_file(tmp_path, heads=4):
    """A timm-layout state dict (no head count recorded) of a 64-wide ViT with ``heads`` heads."""
    from lastvit import create_model

    torch.manual_seed(1)
    m = create_model(None, img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=heads, num_classes=4)
    sd = {k.removeprefix("encoder."): v for k, v in m.state_dict().items() if k.startswith("encoder.")}
    sd.update({"head.weight": m.state_dict()["head.weight"], "head.bias": m.state_dict()["head.bias"]})
    p = tmp_path / "timm_vit.pth"
    torch.save(sd, p)
    return p, m


def test_model_options_and_load_report(tree_and_model, tmp_path):
    root, _, _ = tree_and_model
    p, ref = _timm_file(tmp_path)
    guess, given = tmp_path / "g", tmp_path / "n"
    assert _run("--checkpoint", p, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", guess) == 0
    assert _run("--checkpoint", p, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", given,
                "--num-heads", 4) == 0
    mg, mn = _metrics(guess), _metrics(given)
    assert mg["load_report"]["format"] == "timm" and mg["load_report"]["guesses"]  # width/64 = 1 head: a guess
    assert mn["load_report"]["guesses"] == [] and mn["load_report"]["options"]["num_heads"] == 4
    # with the right head count the numbers are the reference model's own
    from lastvit.data import build_eval_dataset, collate
    from lastvit.evaluate import evaluate_head

    ds = build_eval_dataset("synthetic", root, split="val", image_size=32, resize=32, mean=SYN_NORM[0],
                            std=SYN_NORM[1])
    r = evaluate_head(ref, torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate))
    assert mn["head"]["top1"] == pytest.approx(r["top1"])


def test_device_cuda_without_a_gpu_is_one_line(tree_and_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    root, ck, _ = tree_and_model
    rc = _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--device", "cuda", "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "cuda" in err[0].lower()


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_bad_out_is_one_line(tree_and_model, tmp_path, capsys, where):
    root, ck, _ = tree_and_model
    f = tmp_path / "a_file"
    f.write_text("x")
    if where == "file":
        out = f
    elif where == "under_file":
        out = f / "sub"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        out = ro / "out"
        if os.access(ro, os.W_OK):  # root ignores permissions: sysfs refuses new folders to everyone
            out = Path("/sys/lastvit-read-only-test/out")
    rc = _run("--checkpoint", ck, "--dataset", "synthetic", "--root", root, "--split", "val", "--out", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("lastvit evaluate classify: error:"), err
    assert f.read_text() == "x"
