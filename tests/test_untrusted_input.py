"""Untrusted input, round two (issue 14): only the documented formats are decoded, frame chains
are never walked, and bad files end as rejections with a reason, never a crash."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageRejected, decode_image
from pipeline.ingest import ingest
from pipeline.params import ExecutorParams, IngestParams

GRAY = (np.random.default_rng(3).random((24, 40)) * 255).astype(np.uint8)

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


def enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pydicom_file(name: str) -> bytes:
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.exists():
        pytest.skip(f"pydicom test file {name} not installed")
    return path.read_bytes()


def rejected(data: bytes, name: str = "x.png", **kw) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, kw.pop("max_pixels", 10**8), name=name, **kw)
    return info.value


def test_eps_named_png_never_starts_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pillow's EPS plugin runs `gs` on the file; a fake `gs` first on PATH records any call."""
    from PIL import EpsImagePlugin

    bin_dir, marker = tmp_path / "bin", tmp_path / "gs_ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches where gs is per process
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    (root / "c" / "x.png").write_bytes(EPS)
    (root / "c" / "ok.png").write_bytes(enc(Image.fromarray(GRAY), "PNG"))

    result = ingest(root, None, IngestParams())

    assert not marker.exists(), f"Ghostscript was started: {marker.read_text()}"
    m = result.manifest.set_index("path")
    assert m.loc["c/x.png", "reason"] == "unsupported_format"
    assert m.loc["c/ok.png", "status"] == "ok"
    detail = result.rejected.set_index("path").loc["c/x.png", "detail"]
    assert "EPS" in detail


OTHER_FORMATS = {"DDS": "L", "BLP": "P", "ICO": "L", "PCX": "L", "SGI": "L", "PPM": "L", "QOI": "RGB",
                 "XBM": "1", "MSP": "1", "AVIF": "L", "JPEG2000": "L", "EPS": "L"}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(OTHER_FORMATS))
def test_formats_outside_the_list_are_named_not_decoded(fmt: str):
    try:
        data = enc(Image.fromarray(GRAY).convert(OTHER_FORMATS[fmt]), fmt)
    except (OSError, KeyError, ValueError) as err:  # a plugin built without its encoder
        pytest.skip(f"Pillow cannot write {fmt} here: {err}")
    err = rejected(data)
    assert err.reason == "unsupported_format"
    assert fmt in err.detail and err.format == fmt.lower()


def test_a_format_without_a_signature_is_not_an_image():
    # TGA has no magic bytes: never tried, so it is simply not a recognised image
    assert rejected(enc(Image.fromarray(GRAY), "TGA")).reason == "not_an_image"


def test_the_documented_formats_still_decode():
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"):
        image = decode_image(enc(Image.fromarray(GRAY), fmt), 10**8)
        assert (image.width, image.height) == (40, 24), fmt


def test_dicom_transfer_syntax_outside_the_list_is_unsupported():
    err = rejected(pydicom_file("JPEG2000.dcm"), name="x.dcm")
    assert err.reason == "unsupported_format" and "JPEG 2000" in err.detail


def test_deflated_dicom_decodes_but_a_deflate_bomb_is_too_large():
    data = pydicom_file("image_dfl.dcm")
    assert decode_image(data, 10**8, name="x.dcm").width == 512

    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(b"\0" * (2**24 + 2**20)) + packer.flush()  # 17 MiB of zeros in ~17 kB
    err = rejected(data[: fp.tell()] + body, name="x.dcm", max_pixels=1)
    assert err.reason == "too_large" and "deflated" in err.detail


def _tiff_chain(n_frames: int) -> bytes:
    frames = [Image.fromarray(np.full((2, 2), i % 256, np.uint8)) for i in range(n_frames)]
    return enc(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def test_a_long_tiff_frame_chain_is_not_walked(monkeypatch: pytest.MonkeyPatch):
    from PIL import TiffImagePlugin

    data = _tiff_chain(600)
    seen: list[int] = []
    original = TiffImagePlugin.TiffImageFile._seek

    def counting_seek(self, frame: int) -> None:
        seen.append(frame)
        original(self, frame)

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek", counting_seek)
    image = decode_image(data, 10**8, "first")
    assert image.n_frames == 2 and image.pixels.shape == (2, 2)
    assert max(seen) <= 1, f"walked to frame {max(seen)}"
    seen.clear()
    err = rejected(data, multi_frame="reject")
    assert err.reason == "multi_frame" and "more than one frame" in err.detail
    assert max(seen) <= 1


def test_symlink_loop_is_a_rejection(tmp_path: Path):
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    (root / "c" / "ok.png").write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    os.symlink(root / "c" / "b.png", root / "c" / "a.png")
    os.symlink(root / "c" / "a.png", root / "c" / "b.png")
    for labels in (None, "table"):
        table = None
        if labels:
            table = root / "labels.csv"
            table.write_text("image_path,label,patient_id\nc/ok.png,x,p1\nc/a.png,x,p2\n", encoding="utf-8")
        result = ingest(root, table, IngestParams())
        m = result.manifest.set_index("path")
        assert m.loc["c/ok.png", "status"] == "ok"
        for loop in ("c/a.png", "c/b.png"):
            assert m.loc[loop, "reason"] == "unreadable", (labels, loop)
        detail = result.rejected.set_index("path").loc["c/a.png", "detail"]
        assert "symlink" in detail and "loop" in detail
        table and table.unlink()


# ------------------------------------------------------------------ bounded work, clean kills


def _slow_decode(*args, **kwargs):
    time.sleep(30)
    return decode_image(*args, **kwargs)


def test_a_file_past_its_budget_is_a_timeout_and_the_run_goes_on(tmp_path: Path, monkeypatch):
    import pipeline.ingest

    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    for name in ("a.png", "slow.png", "z.png"):
        (root / "c" / name).write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    real = pipeline.ingest.decode_image
    monkeypatch.setattr(
        pipeline.ingest,
        "decode_image",
        lambda data, *a, name="", **k: (
            _slow_decode(data, *a, name=name, **k) if name == "slow.png" else real(data, *a, name=name, **k)
        ),
    )
    params = IngestParams(max_seconds_per_file=0.5)
    for executor in (ExecutorParams(n_workers=1), ExecutorParams(n_workers=2, chunk_size=1)):
        result = ingest(root, None, params, executor)
        m = result.manifest.set_index("path")
        assert m.loc["c/slow.png", "reason"] == "timeout"
        assert (m.drop(index="c/slow.png")["status"] == "ok").all()
        assert result.metrics["rejected_by_reason"]["timeout"] == 1
        assert "max_seconds_per_file=0.5" in result.rejected.set_index("path").loc["c/slow.png", "detail"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_leaves_no_orphan_workers_and_the_next_run_removes_its_temp_file(tmp_path: Path):
    """Issue 14 item 4: a killed ingest's workers exit, and its temp file goes at the next run."""
    root, out = tmp_path / "root", tmp_path / "interim" / "features.parquet"
    (root / "c").mkdir(parents=True)
    for k in range(4):
        (root / "c" / f"{k}.png").write_bytes(enc(Image.fromarray(GRAY), "PNG"))
    script = f"""
import pipeline.ingest, tests.test_untrusted_input as t
from pipeline.params import ExecutorParams, IngestParams
pipeline.ingest.decode_image = t._slow_decode  # inherited by the forked workers
pipeline.ingest.ingest({str(root)!r}, None, IngestParams(max_seconds_per_file=None),
                       ExecutorParams(n_workers=2, chunk_size=1), features_out={str(out)!r})
"""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo, env=env)
    try:
        assert _wait_for(lambda: len(_children(proc.pid)) >= 2 and any(out.parent.glob("*.tmp")))
        workers = _children(proc.pid)
        proc.kill()  # SIGKILL: no finally block, no atexit, no pool shutdown
        proc.wait()
        assert _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10), (
            "workers outlived their killed parent"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
    stale = list(out.parent.glob("*.tmp"))
    assert stale, "the killed run should have left its temp file"
    result = ingest(root, None, IngestParams(), features_out=out)
    assert result.metrics["n_ok"] == 4 and out.is_file()
    assert not any(p.exists() for p in stale) and not list(out.parent.glob("*.tmp"))
