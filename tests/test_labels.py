"""The data shapes real tables have (issue 14 items 5-7, 9, 10, 12): no patient ids, spelling
variants of a label, one class, many missing files, params that must not pass, one-line errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.errors import InputError
from pipeline.ingest import ingest, read_labels_table
from pipeline.labels import label_key, resolve_label_variants
from pipeline.params import IngestParams, parse_params
from tests.helpers import default_params

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((RNG.random((16, 16)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def dataset(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path, _, _ in rows:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(png())
    lines = ["image_path,label,patient_id", *(",".join(r) for r in rows)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "labels.csv"


# ------------------------------------------------------------------------- item 5: no patient ids


def test_images_without_patient_id_become_their_own_patient(tmp_path: Path):
    table = dataset(tmp_path, [("a.png", "x", ""), ("b.png", "y", "NA"), ("c.png", "x", "p1")])
    result = ingest(tmp_path, table, IngestParams())
    m = result.manifest.set_index("path")
    assert (m["status"] == "ok").all()
    assert m.loc["a.png", "patient_id"] == "image:a.png" and m.loc["b.png", "patient_id"] == "image:b.png"
    assert m.loc["c.png", "patient_id"] == "p1"
    assert result.metrics["n_own_patient"] == 2


def test_missing_patient_id_reject_keeps_the_old_rule(tmp_path: Path):
    table = dataset(tmp_path, [("a.png", "x", ""), ("c.png", "y", "p1")])
    result = ingest(tmp_path, table, IngestParams(missing_patient_id="reject"))
    assert result.manifest.set_index("path").loc["a.png", "reason"] == "missing_patient"
    assert result.metrics["n_own_patient"] == 0


# ---------------------------------------------------------------------- item 6: spelling variants


def test_label_key():
    assert label_key(" Normal. ") == label_key("normal") == label_key("NORMAL!") == "normal"
    assert label_key("no finding") != label_key("no_finding")  # only surrounding characters


def test_spelling_variants_stop_ingest_with_the_variants_listed(tmp_path: Path):
    table = dataset(
        tmp_path,
        [
            ("a.png", "Normal", "p1"),
            ("b.png", "normal", "p2"),
            ("c.png", "normal.", "p3"),
            ("d.png", "nodule", "p4"),
        ],
    )
    with pytest.raises(
        InputError,
        match=r"labels\.csv: .*'Normal' \(1 images\), 'normal' \(1 images\), 'normal\.' \(1 images\)",
    ):
        ingest(tmp_path, table, IngestParams())


def test_spelling_variants_merge_into_the_class_that_params_name(tmp_path: Path):
    table = dataset(
        tmp_path, [("a.png", "Normal", "p1"), ("b.png", "normal ", "p2"), ("c.png", "NODULE", "p3")]
    )
    result = ingest(tmp_path, table, IngestParams(classes=["normal", "nodule"]))
    m = result.manifest.set_index("path")
    assert m["label"].to_dict() == {"a.png": "normal", "b.png": "normal", "c.png": "nodule"}
    assert (m["status"] == "ok").all()


def test_spelling_variants_of_class_folders(tmp_path: Path):
    for rel in ("Normal/a.png", "normal/b.png", "nodule/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png())
    with pytest.raises(InputError, match=r"class folders.*'Normal' \(1 images\), 'normal' \(1 images\)"):
        ingest(tmp_path, None, IngestParams())


def test_resolve_ignores_missing_values_and_distinct_labels():
    assert resolve_label_variants(["a", "b", "", "NA", "na"], None, "t.csv") == {}


# -------------------------------------------------------------------------- item 7: one class


def _stage_params(tmp_path: Path, root: str, labels: str | None, **sections) -> Path:
    raw = default_params()
    raw["data"] = {"root": root, "labels": labels, "truth": None}
    raw["executor"] = {"kind": "process", "n_workers": 1, "chunk_size": 4, "address": None}
    for key, value in sections.items():
        raw[key].update(value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_stage(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_a_single_class_table_stops_ingest_naming_the_file(tmp_path: Path):
    dataset(tmp_path / "data", [("a.png", "normal", "p1"), ("b.png", "normal", "p2")])
    params = _stage_params(tmp_path, "data", "data/labels.csv")
    outs = [
        "--manifest",
        "m.parquet",
        "--features",
        "f.parquet",
        "--rejected",
        "r.csv",
        "--metrics",
        "m.json",
    ]
    line = _one_error_line(_run_stage("ingest", ["--params", str(params), *outs], tmp_path))
    assert "data/labels.csv" in line and "at least 2 classes" in line and "{'normal': 2}" in line
    assert not any((tmp_path / f).exists() for f in ("m.parquet", "f.parquet", "r.csv", "m.json"))


def test_a_single_class_after_curation_stops_split_naming_the_file(tmp_path: Path):
    ids = ["a", "b", "c"]
    pd.DataFrame({"image_id": ids, "path": ids, "label": ["x", "x", "y"], "patient_id": ids,
                  "status": "ok", "reason": ""}).to_parquet(tmp_path / "manifest.parquet")  # fmt: skip
    pd.DataFrame({"image_id": ids, "included": [True, True, False], "reason": ["", "", "low_quality:dark"],
                  "group_id": ids}).to_parquet(tmp_path / "curated.parquet")  # fmt: skip
    pd.DataFrame({"image_id": ids, "cluster_id": [-1, -1, -1]}).to_parquet(tmp_path / "duplicates.parquet")
    (tmp_path / "data").mkdir()
    params = _stage_params(tmp_path, "data", None)
    args = ["--params", str(params), "--manifest", "manifest.parquet", "--curated", "curated.parquet",
            "--duplicates", "duplicates.parquet", "--out", "s.parquet", "--metrics", "s.json",
            "--balance", "b.csv"]  # fmt: skip
    line = _one_error_line(_run_stage("split", args, tmp_path))
    assert "curated.parquet" in line and "{'x': 2}" in line


# ---------------------------------------------------------------- item 9 and 12: table messages


def test_missing_files_are_reported_together(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "there.png").write_bytes(png())
    rows = ["image_path,label,patient_id", "there.png,a,p"] + [f"gone{k:02d}.png,a,p" for k in range(12)]
    (root / "t.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_labels_table(root / "t.csv", root)
    msg = str(info.value)
    assert "12 of 13 listed file(s) do not exist" in msg
    assert "row 3 'gone00.png'" in msg and "row 7 'gone04.png'" in msg and "gone05" not in msg
    assert "(7 more)" in msg


def test_a_labels_path_that_is_a_folder_says_so(tmp_path: Path):
    (tmp_path / "labels.csv").mkdir()
    with pytest.raises(InputError, match=r"labels\.csv is a folder; expected a CSV file"):
        read_labels_table(tmp_path / "labels.csv", tmp_path)


def test_not_utf8_names_the_row(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png())
    text = "image_path,label,patient_id\na.png,x,p\nb.png,caf\xe9,p\n"
    (tmp_path / "t.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=r"t\.csv row 3: not UTF-8"):
        read_labels_table(tmp_path / "t.csv", tmp_path)


def test_a_truth_path_to_no_file_is_an_error(tmp_path: Path):
    params = _stage_params(tmp_path, ".", None)
    raw = yaml.safe_load(params.read_text())
    raw["data"] = {"root": "data", "labels": None, "truth": "data/truth.json"}
    params.write_text(yaml.safe_dump(raw))
    args = ["--params", str(params)]
    for flag in ("manifest", "quality", "duplicates", "curated", "splits", "label-issues", "out", "metrics",
                 "truth-metrics"):  # fmt: skip
        args += [f"--{flag}", f"{flag}.x"]
    line = _one_error_line(_run_stage("accounting", args, tmp_path))
    assert "data.truth: data/truth.json is not a file" in line


# ------------------------------------------------------------------------ item 10: params


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("ingest", "max_file_mb", float("inf"), r"ingest\.max_file_mb: Input should be a finite number"),
        ("ingest", "max_pixels", True, r"ingest\.max_pixels: .*expected an integer, got the boolean true"),
        ("ingest", "max_seconds_per_file", float("nan"), r"ingest\.max_seconds_per_file: .*finite"),
        ("ingest", "missing_patient_id", "drop", r"ingest\.missing_patient_id"),
        ("ingest", "classes", ["Normal", "normal"], r"ingest\.classes: .*differ by more than case"),
        ("data", "root", "", r"data\.root: .*empty path"),
        ("data", "root", ".", r"data\.root: .*is the project folder"),
        ("data", "root", "..", r"data\.root: .*holds the project"),
        ("quality", "robust_z", True, r"quality\.robust_z: .*expected a number"),
    ],
)
def test_params_that_must_not_pass(section: str, key: str, value, match: str):
    raw = default_params()
    raw[section][key] = value
    with pytest.raises(ValueError, match=match):
        parse_params(raw, source="params.yaml")


def test_bad_params_stop_a_stage_in_one_line(tmp_path: Path):
    raw = default_params()
    raw["ingest"]["max_file_mb"] = float("inf")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    outs = ["--manifest", "m", "--features", "f", "--rejected", "r", "--metrics", "j"]
    line = _one_error_line(_run_stage("ingest", ["--params", "params.yaml", *outs], tmp_path))
    assert "ingest.max_file_mb" in line


def test_an_unreachable_dask_scheduler_is_one_line_naming_the_key(tmp_path: Path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dataset(tmp_path / "data", [("a.png", "x", "p1"), ("b.png", "y", "p2")])
    params = _stage_params(
        tmp_path, "data", "data/labels.csv", executor={"kind": "dask", "address": f"tcp://127.0.0.1:{port}"}
    )
    outs = ["--manifest", "m", "--features", "f", "--rejected", "r", "--metrics", "j"]
    line = _one_error_line(_run_stage("ingest", ["--params", str(params), *outs], tmp_path))
    assert f"executor.address: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in line
