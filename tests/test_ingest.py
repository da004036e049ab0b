"""Ingest: one planted bad file per reason, labels-table errors, accounting, the stage entry point."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

import pipeline.ingest
import pipeline.io
from pipeline.contract import MANIFEST_COLUMNS
from pipeline.errors import InputError
from pipeline.ingest import REASONS, ingest, read_labels_table, scan_files
from pipeline.params import ExecutorParams, IngestParams, parse_params
from tests.helpers import default_params, huge_png_header

RNG = np.random.default_rng(1)


def png_bytes(shape=(32, 32), dtype=np.uint8) -> bytes:
    arr = (RNG.random(shape) * (255 if dtype == np.uint8 else 65535)).astype(dtype)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_table(path: Path, rows: list[tuple], header: str = "image_path,label,patient_id") -> Path:
    lines = [header] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_dataset(root: Path) -> dict[str, str]:
    """One file per reason (plus ok files); returns {relative path: expected reason or 'ok'}."""
    good = png_bytes()
    expected: dict[str, str] = {}
    files = {
        "img/ok1.png": (good, "ok"),
        "img/ok2.png": (png_bytes(), "ok"),
        "img/truncated.png": (good[: len(good) // 2], "truncated"),
        "img/html.png": (b"<html><body>not found</body></html>", "not_an_image"),
        "img/huge.png": (huge_png_header(), "too_large"),
        "img/float.tif": (_float_tiff(), "unsupported_mode"),
        "img/corrupt.png": (_corrupt_png(good), "unreadable"),
        "img/nolabel.png": (png_bytes(), "unknown_label"),
        "img/nopatient.png": (png_bytes(), "missing_patient"),
        "img/unlisted.png": (png_bytes(), "missing_label"),
        "img/multi.tif": (_multi_tiff(), "multi_frame"),
        "img/big_file.png": (png_bytes((64, 64)), "too_large"),  # over max_file_mb (set tiny below)
        "img/eps.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "unsupported_format"),
    }
    (root / "img").mkdir(parents=True)
    for rel, (data, reason) in files.items():
        (root / rel).write_bytes(data)
        expected[rel] = reason
    rows = [(rel, "a", "p1") for rel in files if rel not in ("img/unlisted.png",)]
    rows = [
        (
            rel,
            {"img/nolabel.png": "", "img/ok2.png": "b"}.get(rel, "a"),
            "" if rel == "img/nopatient.png" else "p1",
        )
        for rel, _, _ in rows
    ]
    write_table(root / "labels.csv", rows)
    return expected


def _float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.random((8, 8)).astype(np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def _multi_tiff() -> bytes:
    frames = [Image.fromarray((RNG.random((8, 8)) * 255).astype(np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _corrupt_png(good: bytes) -> bytes:
    data = bytearray(good)
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = bytes(32)  # zeroed compressed data; the file still ends with IEND
    return bytes(data)


PARAMS = IngestParams(multi_frame="reject", missing_patient_id="reject")


def test_one_planted_file_per_reason(tmp_path: Path):
    expected = make_dataset(tmp_path)
    big = len((tmp_path / "img/big_file.png").read_bytes())
    params = PARAMS.model_copy(update={"max_file_mb": (big - 1) / 2**20})
    # every other file must stay under the limit
    assert all(len((tmp_path / r).read_bytes()) < big for r in expected if r != "img/big_file.png")
    result = ingest(tmp_path, tmp_path / "labels.csv", params)
    got = dict(zip(result.manifest["path"], result.manifest["reason"].replace("", "ok"), strict=True))
    assert got == expected
    covered = {r for r in expected.values() if r != "ok"}
    assert covered == set(REASONS) - {"features_failed", "timeout"}  # (timeout: test_untrusted_input)


def test_every_file_exactly_once_and_accounting(tmp_path: Path):
    expected = make_dataset(tmp_path)
    (tmp_path / "img" / "notes.txt").write_text("ignored: not an image extension")
    (tmp_path / "img" / "UPPER.PNG").write_bytes(png_bytes())  # extension match is case-insensitive
    result = ingest(tmp_path, tmp_path / "labels.csv", PARAMS)
    m = result.manifest
    assert sorted(m["image_id"]) == sorted([*expected, "img/UPPER.PNG"])
    assert m["image_id"].is_unique
    assert list(m.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    metrics = result.metrics
    assert metrics["n_files"] == len(m) == metrics["n_ok"] + metrics["n_rejected"]
    assert sum(metrics["rejected_by_reason"].values()) == metrics["n_rejected"]
    assert set(result.features["image_id"]) == set(m.loc[m.status == "ok", "image_id"])
    assert set(result.rejected["image_id"]) == set(m.loc[m.status == "rejected", "image_id"])
    assert (result.rejected["detail"] != "").all()
    ok = m[m.status == "ok"]
    assert (ok["reason"] == "").all() and ok["sha256"].str.len().eq(64).all()
    assert ok.set_index("path").loc[
        "img/ok1.png", ["width", "height", "channels", "bit_depth", "format"]
    ].tolist() == [
        32,
        32,
        1,
        8,
        "png",
    ]


def test_extra_columns_are_kept(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes())
    write_table(
        tmp_path / "t.csv",
        [("a.png", "x", "p1", "PA"), ("b.png", "y", "p2", "AP")],
        "image_path,label,patient_id,view",
    )
    m = ingest(tmp_path, tmp_path / "t.csv", IngestParams()).manifest
    assert list(m.columns) == [*MANIFEST_COLUMNS, "view"]
    assert dict(zip(m["path"], m["view"], strict=True)) == {"a.png": "PA", "b.png": "AP"}


def test_classes_param_rejects_other_labels(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes())
    write_table(tmp_path / "t.csv", [("a.png", "normal", "p1"), ("b.png", "pneumonai", "p2")])
    m = ingest(tmp_path, tmp_path / "t.csv", IngestParams(classes=["normal", "pneumonia"])).manifest
    assert dict(zip(m["path"], m["reason"], strict=True)) == {"a.png": "", "b.png": "unknown_label"}


def test_class_per_folder_mode(tmp_path: Path):
    for rel in ("normal/x1.png", "normal/sub/x2.png", "nodule/y1.png", "loose.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png_bytes())
    m = ingest(tmp_path, None, IngestParams()).manifest.set_index("path")
    assert m.loc["normal/sub/x2.png", "label"] == "normal"
    assert m.loc["nodule/y1.png", "label"] == "nodule"
    assert m.loc["nodule/y1.png", "patient_id"] == "y1"  # file stem when no DICOM PatientID
    assert m.loc["loose.png", "reason"] == "missing_label"
    assert (m.drop(index="loose.png")["status"] == "ok").all()


def test_features_streamed_to_parquet_equal_the_in_memory_table(tmp_path: Path, monkeypatch):
    root = tmp_path / "data"
    for k in range(23):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{k % 2}" / f"img{k:02d}.png").write_bytes(png_bytes((24 + k, 30)))
    (root / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # rejected: no features row
    executor = ExecutorParams(n_workers=1, chunk_size=4)
    in_memory = ingest(root, None, IngestParams(), executor).features
    monkeypatch.setattr(pipeline.io, "ROW_GROUP_ROWS", 5)  # several row groups and a remainder
    out = tmp_path / "features.parquet"
    streamed = ingest(root, None, IngestParams(), executor, features_out=out)
    assert streamed.features is None and streamed.metrics["n_ok"] == 23
    assert pq.ParquetFile(out).metadata.num_row_groups == 5
    pd.testing.assert_frame_equal(pd.read_parquet(out), in_memory)


def test_a_failed_ingest_leaves_no_features_file(tmp_path: Path, monkeypatch):
    (tmp_path / "data" / "c").mkdir(parents=True)
    (tmp_path / "data" / "c" / "a.png").write_bytes(png_bytes())

    def broken(*_args):
        raise RuntimeError("manifest does not hold every file")

    monkeypatch.setattr(pipeline.ingest, "_check_accounting", broken)
    with pytest.raises(RuntimeError, match="every file"):
        ingest(tmp_path / "data", None, IngestParams(), features_out=tmp_path / "features.parquet")
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # neither the file nor its temp


@pytest.mark.parametrize("hashes", [("phash",), ("dhash", "ahash")])
def test_only_the_requested_perceptual_hashes_are_computed(tmp_path: Path, hashes):
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "a.png").write_bytes(png_bytes())
    feats = ingest(tmp_path, None, IngestParams(), hashes=hashes).features
    assert {h for h in ("phash", "dhash", "ahash", "whash") if h in feats.columns} == set(hashes)
    assert feats[list(hashes)].map(len).eq(16).all().all()


# ------------------------------------------------------------------------------ table errors


def _root_with_images(tmp_path: Path, names=("a.png", "b.png")) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for n in names:
        (root / n).write_bytes(png_bytes())
    return root


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("image_path,label\na.png,x\n", r"t\.csv row 1: missing column\(s\) \['patient_id'\]"),
        ("image_path,label,patient_id\n", r"t\.csv: no rows"),
        ("", r"t\.csv: empty table"),
        (
            "image_path,label,patient_id\na.png,x,p\nb.png,x,p\na.png,y,q\n",
            r"t\.csv row 4: .*'a.png' already listed at row 2",
        ),
        ("image_path,label,patient_id\n./a.png,x,p\na.png,x,p\n", r"t\.csv row 3: .*already listed at row 2"),
        (
            "image_path,label,patient_id\na.png,x,p\n../outside.png,x,p\n",
            r"t\.csv row 3: .*escapes the data root",
        ),
        (
            "image_path,label,patient_id\nsub/../../outside.png,x,p\n",
            r"t\.csv row 2: .*escapes the data root",
        ),
        ("image_path,label,patient_id\n/etc/passwd,x,p\n", r"t\.csv row 2: .*is absolute"),
        (
            "image_path,label,patient_id\na.png,x,p\nmissing.png,x,p\n",
            r"t\.csv: 1 of 2 listed file\(s\) do not exist under .*: row 3 'missing.png'",
        ),
        ("image_path,label,patient_id\na.png,x,p,extra,more\n", r"t\.csv row 2: 5 fields, expected 3"),
        ("image_path,label,patient_id,status\na.png,x,p,1\n", r"t\.csv: column\(s\) \['status'\] clash"),
    ],
    ids=[
        "missing_column",
        "no_rows",
        "empty_file",
        "duplicate",
        "duplicate_normalized",
        "dotdot",
        "nested_dotdot",
        "absolute",
        "absent",
        "ragged",
        "reserved",
    ],
)
def test_labels_table_errors_name_file_and_row(tmp_path: Path, content: str, match: str):
    root = _root_with_images(tmp_path)
    (tmp_path / "outside.png").write_bytes(png_bytes())
    table = root / "t.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=match):
        read_labels_table(table, root)
    with pytest.raises(InputError, match=match):  # and it stops the stage
        ingest(root, table, IngestParams())


def test_labels_table_symlink_out_of_root_is_an_error(tmp_path: Path):
    root = _root_with_images(tmp_path)
    (tmp_path / "secret.png").write_bytes(png_bytes())
    os.symlink(tmp_path / "secret.png", root / "link.png")
    table = write_table(root / "t.csv", [("a.png", "x", "p"), ("link.png", "x", "p")])
    with pytest.raises(
        ValueError, match=r"t\.csv row 3: image_path 'link.png' resolves to .*outside the data root"
    ):
        read_labels_table(table, root)


def test_labels_table_not_utf8(tmp_path: Path):
    root = _root_with_images(tmp_path)
    (root / "t.csv").write_bytes("image_path,label,patient_id\na.png,caf\xe9,p\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"t\.csv row 2: not UTF-8"):
        read_labels_table(root / "t.csv", root)


def test_scan_is_sorted_and_case_insensitive(tmp_path: Path):
    for rel in ("b/Z.PNG", "a/y.Jpg", "a/readme.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert scan_files(tmp_path, [".png", ".jpg"]) == ["a/y.Jpg", "b/Z.PNG"]


# ------------------------------------------------------------------------------ params


@pytest.mark.parametrize(
    ("ingest_section", "match"),
    [
        ({"max_pixels": 0}, r"ingest\.max_pixels"),
        ({"max_pixels": "many"}, r"ingest\.max_pixels"),
        ({"max_file_mb": -1}, r"ingest\.max_file_mb"),
        ({"multi_frame": "all"}, r"ingest\.multi_frame"),
        ({"extensions": ["png"]}, r"ingest\.extensions"),
        ({"extensions": []}, r"ingest\.extensions"),
        ({"classes": ["a", "a"]}, r"ingest\.classes"),
        ({"max_pixel": 10}, r"ingest\.max_pixel: Extra inputs are not permitted"),
    ],
)
def test_ingest_params_errors_name_the_key(ingest_section: dict, match: str):
    raw = {"data": {"root": "data/demo"}, "ingest": ingest_section}
    with pytest.raises(ValueError, match=match):
        parse_params(raw, source="params.yaml")


# ------------------------------------------------------------------------------ the stage


def test_stage_writes_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from stages.ingest import main

    make_dataset(tmp_path / "data")
    raw = default_params()
    raw["data"] = {"root": "data", "labels": "data/labels.csv", "truth": None}
    raw["executor"] = {"kind": "process", "n_workers": 2, "chunk_size": 4, "address": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    out = {
        "--manifest": "interim/manifest.parquet",
        "--features": "interim/features.parquet",
        "--rejected": "reports/rejected.csv",
        "--metrics": "metrics/ingest.json",
    }
    assert main(["--params", "params.yaml", *[x for kv in out.items() for x in kv]]) == 0
    manifest = pd.read_parquet(out["--manifest"])
    metrics = json.loads(Path(out["--metrics"]).read_text())
    assert metrics["n_files"] == len(manifest) == 13
    # default params: the multi-frame TIFF keeps its first frame, the big file is under 512 MB,
    # the image without patient id is its own patient
    assert metrics["n_ok"] == len(pd.read_parquet(out["--features"])) == 5
    assert len(pd.read_csv(out["--rejected"])) == metrics["n_rejected"] == 8
    assert metrics["n_own_patient"] == 1
    assert manifest.set_index("path").loc["img/nopatient.png", "patient_id"] == "image:img/nopatient.png"


def test_stage_reports_an_empty_root_in_one_line(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    params = default_params()
    params["data"] = {"root": str(tmp_path / "empty"), "labels": None, "truth": None}
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    outs = {name: str(tmp_path / name) for name in ("m.parquet", "f.parquet", "r.csv", "m.json")}
    args = [
        sys.executable,
        "-m",
        "stages.ingest",
        "--params",
        str(tmp_path / "p.yaml"),
        "--manifest",
        outs["m.parquet"],
    ]
    args += ["--features", outs["f.parquet"], "--rejected", outs["r.csv"], "--metrics", outs["m.json"]]
    proc = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "no readable image (0 file(s) found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(Path(p).exists() for p in outs.values())
