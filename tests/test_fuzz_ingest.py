"""Fuzzing ingest (issue 14): a seeded generator mutates valid PNG, JPEG, TIFF and DICOM files
(bit flips, truncations, overwritten header fields, inserted and repeated runs of bytes) and feeds
a few hundred of them to ingest in worker processes.

Every file must get exactly one manifest row with a known reason, nothing may raise, and no file
may need the per-file budget (``timeout`` would mean one mutated small file took seconds).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.ingest import REASONS, ingest
from pipeline.params import ExecutorParams, IngestParams

N_MUTANTS = 30  # per base file; 13 bases -> 390 files
SEED = 20240614


def _enc(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    frames = kw.pop("frames", None)
    im = Image.fromarray(arr)
    if frames:
        kw.update(save_all=True, append_images=[Image.fromarray(f) for f in frames])
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pydicom(name: str) -> bytes | None:
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    return path.read_bytes() if path.exists() else None


def base_files(rng: np.random.Generator) -> dict[str, bytes]:
    gray = (rng.random((48, 64)) * 255).astype(np.uint8)
    rgb = (rng.random((40, 32, 3)) * 255).astype(np.uint8)
    gray16 = (rng.random((32, 32)) * 65535).astype(np.uint16)
    bases = {
        "gray.png": _enc(gray, "PNG"),
        "rgb.png": _enc(rgb, "PNG"),
        "gray16.png": _enc(gray16, "PNG"),
        "gray.jpg": _enc(gray, "JPEG", quality=90),
        "rgb.jpg": _enc(rgb, "JPEG", quality=90),
        "raw.tif": _enc(gray, "TIFF"),
        "deflate.tif": _enc(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "multi.tif": _enc(gray, "TIFF", frames=[255 - gray, gray // 2]),
        "gray16.tif": _enc(gray16, "TIFF"),
    }
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "JPEG-lossy.dcm"):
        data = _pydicom(name)
        if data is not None:
            bases[name.lower()] = data
    return bases


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 6)
        n = len(out)
        if n < 8:
            break
        if kind == 0:  # flip bits anywhere
            for pos in rng.integers(0, n, int(rng.integers(1, 9))):
                out[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncate
            del out[int(rng.integers(1, n)) :]
        elif kind == 2:  # overwrite a header field with an extreme value
            pos = int(rng.integers(0, min(n - 4, 400)))
            out[pos : pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00",
                                             b"\x00\x01\x00\x00"])  # fmt: skip
        elif kind == 3:  # insert random bytes
            pos = int(rng.integers(0, n))
            out[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 4:  # repeat a run (chunk/segment duplication)
            a = int(rng.integers(0, n))
            b = min(n, a + int(rng.integers(1, 256)))
            out[b:b] = out[a:b] * int(rng.integers(1, 4))
        else:  # zero a run
            a = int(rng.integers(0, n))
            out[a : a + int(rng.integers(1, 128))] = bytes(len(out[a : a + int(rng.integers(1, 128))]))
    return bytes(out)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(SEED)
    root = tmp_path_factory.mktemp("fuzz")
    for name, data in base_files(rng).items():
        folder = root / name.replace(".", "_")
        folder.mkdir()
        suffix = Path(name).suffix
        for k in range(N_MUTANTS):
            (folder / f"m{k:02d}{suffix}").write_bytes(mutate(data, rng))
    return root


def test_every_mutated_file_gets_one_row_and_nothing_raises(fuzz_root: Path):
    files = sorted(p.relative_to(fuzz_root).as_posix() for p in fuzz_root.rglob("*") if p.is_file())
    assert len(files) >= 250
    params = IngestParams(max_seconds_per_file=10.0)
    result = ingest(fuzz_root, None, params, ExecutorParams(n_workers=2, chunk_size=16))
    m = result.manifest
    assert sorted(m["path"]) == files and m["image_id"].is_unique  # exactly one row each
    rejected = m.loc[m["status"] == "rejected", "reason"]
    assert set(rejected) <= set(REASONS)
    assert "features_failed" not in set(rejected), result.rejected[
        result.rejected.reason == "features_failed"
    ]
    assert "timeout" not in set(rejected), result.rejected[result.rejected.reason == "timeout"]
    assert (m.loc[m["status"] == "ok", "reason"] == "").all()
    assert result.metrics["n_ok"] + result.metrics["n_rejected"] == len(files)
    assert 0 < result.metrics["n_ok"] < len(files)  # the mutations leave some files readable
