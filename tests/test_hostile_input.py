"""Hostile, real-world input (issue 8 item 3): each file ends as a correct read or a clear
rejection reason, never a traceback, and the accounting always adds up."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.ingest import ingest, read_labels_table
from pipeline.params import IngestParams
from tests.helpers import huge_png_header

RNG = np.random.default_rng(7)
GRAY = (RNG.random((30, 50)) * 255).astype(np.uint8)
RGB = (RNG.random((30, 50, 3)) * 255).astype(np.uint8)


def enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pydicom_file(name: str) -> Path:
    """A pydicom test file shipped inside the package (get_testdata_file would try to download
    files that are not installed, so look them up locally only)."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.exists():
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return enc(Image.fromarray(RGB), "JPEG", exif=exif)


def multi_frame(fmt: str) -> bytes:
    frames = [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)]
    return enc(frames[0], fmt, save_all=True, append_images=frames[1:])


# relative path -> (bytes or a callable, expected reason or "ok", expected (w, h, channels, bit_depth) or None)
def hostile_files() -> dict[str, tuple[bytes, str, tuple | None]]:
    png = enc(Image.fromarray(GRAY), "PNG")
    jpg = enc(Image.fromarray(RGB), "JPEG")
    return {
        "x/truncated.png": (png[: len(png) // 2], "truncated", None),
        "x/truncated.jpg": (jpg[: len(jpg) // 2], "truncated", None),
        "x/zero_bytes.png": (b"", "not_an_image", None),
        "x/page.jpg": (
            b"<!DOCTYPE html><html><head><title>404</title></head></html>\n",
            "not_an_image",
            None,
        ),
        "x/cmyk.jpg": (enc(Image.fromarray(RGB).convert("CMYK"), "JPEG"), "ok", (50, 30, 3, 8)),
        "x/gray16.png": (enc(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"), "ok", (50, 30, 1, 16)),
        "x/gray16.tif": (enc(Image.fromarray(GRAY.astype(np.uint16) * 257), "TIFF"), "ok", (50, 30, 1, 16)),
        "x/palette.png": (enc(Image.fromarray(RGB).convert("P"), "PNG"), "ok", (50, 30, 3, 8)),
        "x/rgba.png": (enc(Image.fromarray(RGB).convert("RGBA"), "PNG"), "ok", (50, 30, 3, 8)),
        "x/exif_rotated.jpg": (exif_rotated_jpeg(), "ok", (30, 50, 3, 8)),  # width/height swapped
        "x/multi.tif": (multi_frame("TIFF"), "ok", (50, 30, 1, 8)),
        "x/multi.gif": (multi_frame("GIF"), "ok", (50, 30, 1, 8)),
        "x/multi_frame.dcm": (pydicom_file("SC_rgb_rle_2frame.dcm").read_bytes(), "ok", (100, 100, 3, 8)),
        "x/ct.dcm": (pydicom_file("CT_small.dcm").read_bytes(), "ok", (128, 128, 1, 16)),
        "x/no_pixels.dcm": (pydicom_file("rtplan.dcm").read_bytes(), "not_an_image", None),
        "x/huge_header.png": (huge_png_header(), "too_large", (100_000, 100_000, None, None)),
        "x/name with spaces.png": (png, "ok", (50, 30, 1, 8)),
        "x/ñame-ü-日本.png": (png, "ok", (50, 30, 1, 8)),
    }


@pytest.fixture
def hostile_root(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "root"
    files = hostile_files()
    for rel, (data, _, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def _check(result, files: dict) -> None:
    m = result.manifest.set_index("path")
    assert sorted(m.index) == sorted(files)  # every file exactly once
    for rel, (_, reason, dims) in files.items():
        row = m.loc[rel]
        assert (row["reason"] or "ok") == reason, (rel, row["reason"])
        if dims is not None:
            got = (row["width"], row["height"], row["channels"], row["bit_depth"])
            assert tuple(None if v is None or v is pd_NA else int(v) for v in got[: len(dims)]) == tuple(
                None if d is None else d for d in dims
            ), rel
    metrics = result.metrics
    assert metrics["n_files"] == len(files) == metrics["n_ok"] + metrics["n_rejected"]
    assert sum(metrics["rejected_by_reason"].values()) == metrics["n_rejected"]
    assert len(result.features) == metrics["n_ok"]


pd_NA = __import__("pandas").NA
WITH_GIF = IngestParams(
    extensions=[*IngestParams().extensions, ".gif"]
)  # GIF is read, not scanned by default


def test_hostile_files_with_a_labels_table(hostile_root):
    root, files = hostile_root
    lines = ["image_path,label,patient_id"]
    for rel in files:
        # a quoted path with a comma-free name, the DICOMs without a patient (PatientID is used)
        patient = "" if rel.endswith(".dcm") else "p1"
        lines.append(f'"{rel}",a,{patient}')
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = ingest(root, root / "labels.csv", IngestParams())
    _check(result, files)
    m = result.manifest.set_index("path")
    assert m.loc["x/ct.dcm", "patient_id"] == "1CT1"  # from the DICOM header


def test_hostile_files_class_per_folder(hostile_root):
    root, files = hostile_root
    result = ingest(root, None, WITH_GIF)
    _check(result, files)
    assert set(result.manifest.loc[result.manifest.status == "ok", "label"]) == {"x"}


def test_multi_frame_reject_option(hostile_root):
    root, files = hostile_root
    result = ingest(root, None, WITH_GIF.model_copy(update={"multi_frame": "reject"}))
    m = result.manifest.set_index("path")
    for rel in ("x/multi.tif", "x/multi.gif", "x/multi_frame.dcm"):
        assert m.loc[rel, "reason"] == "multi_frame"


def test_symlink_outside_root_in_folder_mode_is_rejected_not_read(tmp_path: Path):
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    (root / "c" / "ok.png").write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    (tmp_path / "secret.png").write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    os.symlink(tmp_path / "secret.png", root / "c" / "link.png")
    m = ingest(root, None, IngestParams()).manifest.set_index("path")
    assert m.loc["c/link.png", "reason"] == "unreadable"
    assert m.loc["c/link.png", "sha256"] == ""  # never opened
    assert m.loc["c/ok.png", "status"] == "ok"


def test_symlink_outside_root_in_table_stops_with_row(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    (root / "t.csv").write_text("image_path,label,patient_id\nlink.png,a,p\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.csv row 2: .*outside the data root"):
        ingest(root, root / "t.csv", IngestParams())


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffimage_path,label,patient_id\nimg a.png,normal,p1\nimg,b.png,nodule,p2\n",  # BOM (+ a ragged row)
        "\ufeffimage_path,label,patient_id\nimg a.png,normal,p1\nimg b.png,nodule,p2\n",  # BOM
        "image_path;label;patient_id;note\nimg a.png;normal;p1;x, y\nimg b.png;nodule;p2;z\n",  # semicolons
        'image_path,label,patient_id,note\n"img a.png",normal,p1,"x, y"\n"img b.png",nodule,"p2","a ""quoted"" z"\n',
        "image_path\tlabel\tpatient_id\nimg a.png\tnormal\tp1\nimg b.png\tnodule\tp2\n",  # tabs
    ],
    ids=["bom_ragged", "bom", "semicolons", "quoted_commas", "tabs"],
)
def test_labels_table_dialects(tmp_path: Path, text: str):
    root = tmp_path / "root"
    root.mkdir()
    for name in ("img a.png", "img b.png"):
        (root / name).write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    (root / "t.csv").write_bytes(text.encode("utf-8"))
    if "img,b.png" in text:
        with pytest.raises(ValueError, match=r"t\.csv row 3: 4 fields, expected 3"):
            read_labels_table(root / "t.csv", root)
        return
    table = read_labels_table(root / "t.csv", root)
    assert table["image_path"].tolist() == ["img a.png", "img b.png"]
    assert table["label"].tolist() == ["normal", "nodule"]
    assert table["patient_id"].tolist() == ["p1", "p2"]
    if "note" in table:
        assert table["note"].iloc[0] == "x, y"
    result = ingest(root, root / "t.csv", IngestParams())
    assert result.metrics["n_ok"] == 2 and result.metrics["n_files"] == 2


def test_unreadable_permissions(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    p = root / "c" / "locked.png"
    p.write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    p.chmod(0)
    try:
        m = ingest(root, None, IngestParams()).manifest
        assert m.loc[0, "reason"] == "unreadable"
    finally:
        p.chmod(0o644)
        shutil.rmtree(root)
