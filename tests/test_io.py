"""lastvit.io: strict JSON (no bare NaN / Infinity, reasons recorded), CSV, atomic writes."""

import csv
import json
import math

import pytest
import torch

from lastvit.io import to_json, write_csv, write_json


def _strict_load(path):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_json_nonfinite_become_null_with_reason(tmp_path):
    p = write_json(tmp_path / "m.json", {
        "a": float("nan"), "b": math.inf, "c": -math.inf, "ok": 1.5,
        "d": {"x": float("nan"), "x_null_reason": "nan: no foreground"},  # the caller's reason wins
        "e": [1.0, float("nan"), math.inf],
        "t": torch.tensor([1.0, 2.0]), "n": torch.tensor(3),
    })
    m = _strict_load(p)
    assert m["a"] is None and m["a_null_reason"] == "nan"
    assert m["b"] is None and m["b_null_reason"] == "inf"
    assert m["c"] is None and m["c_null_reason"] == "-inf"
    assert m["ok"] == 1.5 and "ok_null_reason" not in m
    assert m["d"] == {"x": None, "x_null_reason": "nan: no foreground"}
    assert m["e"] == [1.0, None, None] and m["e_null_reason"].startswith("2 of 3 entries not finite")
    assert m["t"] == [1.0, 2.0] and m["n"] == 3
    # the reason sits right after its key
    keys = list(m)
    assert keys[keys.index("a") + 1] == "a_null_reason"


def test_to_json_refuses_a_bare_nonfinite_number():
    with pytest.raises(ValueError, match="non-finite"):
        to_json(float("nan"))


def test_write_json_is_atomic_on_failure(tmp_path):
    class Bad:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    p = tmp_path / "m.json"
    write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        write_json(p, {"v": Bad()})
    assert json.loads(p.read_text()) == {"v": 1}  # the old file is intact
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]  # no temporary left behind


def test_write_csv_columns_and_cells(tmp_path):
    p = write_csv(tmp_path / "r.csv", [{"id": "a", "v": 1.0}, {"id": "b", "v": float("nan"), "extra": [1, 2]}])
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "v", "extra"]
    assert rows[0] == {"id": "a", "v": "1.0", "extra": ""}
    assert rows[1] == {"id": "b", "v": "", "extra": "[1, 2]"}  # NaN is an empty cell, never "nan"
    q = write_csv(tmp_path / "f.csv", [{"id": "a", "v": 2, "skip": 0}], fields=["id", "v"])
    assert q.read_text().splitlines() == ["id,v", "a,2"]
    assert write_csv(tmp_path / "e.csv", []).read_text() == ""
