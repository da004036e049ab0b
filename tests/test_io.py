"""Atomic outputs: an interrupted write leaves neither a partial file nor a temp file behind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import io


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writers_round_trip(tmp_path):
    df = pd.DataFrame({"image_id": ["a", "b"], "x": [1.5, 2.0]})
    io.write_parquet(df, tmp_path / "t.parquet")
    io.write_csv(df, tmp_path / "t.csv")
    io.write_json({"n": np.int64(3), "f": np.float32(0.5), "ok": np.bool_(True)}, tmp_path / "m.json")
    io.write_npy(np.arange(6, dtype=np.uint8).reshape(2, 3), tmp_path / "a.npy")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    assert json.loads((tmp_path / "m.json").read_text()) == {"f": 0.5, "n": 3, "ok": True}
    assert np.load(tmp_path / "a.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert _leftovers(tmp_path) == ["a.npy", "m.json", "t.csv", "t.parquet"]


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        io.write_json({"x": float("nan")}, tmp_path / "m.json")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_keeps_old_output_and_leaves_no_temp(tmp_path, interrupt):
    out = tmp_path / "arrays.npy"
    io.write_npy(np.zeros(4, np.uint8), out)
    before = out.read_bytes()

    with pytest.raises(interrupt), io.atomic_path(out) as tmp:
        # A streaming writer half-way through a large array when the interrupt comes.
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(1000, 64))
        arr[:500] = 7
        arr.flush()
        raise interrupt("stopped mid-write")

    assert out.read_bytes() == before, "the previous complete output must be untouched"
    assert _leftovers(tmp_path) == ["arrays.npy"]


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    def explode(self, path, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", explode)
    with pytest.raises(KeyboardInterrupt):
        io.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "sub" / "t.parquet")
    assert _leftovers(tmp_path / "sub") == []


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        io.write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
