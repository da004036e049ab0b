"""read_image / decode_image: formats, modes, bit depths, orientation, and the rejection reasons."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.images import DecodedImage, ImageRejected, decode_image, read_image

MAX = 10_000_000
RNG = np.random.default_rng(0)
GRAY = (RNG.random((24, 40)) * 255).astype(np.uint8)
RGB = (RNG.random((24, 40, 3)) * 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRCs) whose IHDR claims width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def rejected(data: bytes, **kw) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, kw.pop("max_pixels", MAX), **kw)
    return info.value


@pytest.mark.parametrize(
    ("make", "shape", "dtype", "channels", "fmt"),
    [
        (lambda: encode(Image.fromarray(GRAY), "PNG"), (24, 40), np.uint8, 1, "png"),
        (lambda: encode(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"), (24, 40), np.uint16, 1, "png"),
        (lambda: encode(Image.fromarray(RGB), "PNG"), (24, 40, 3), np.uint8, 3, "png"),
        (lambda: encode(Image.fromarray(RGB).convert("RGBA"), "PNG"), (24, 40, 3), np.uint8, 3, "png"),
        (lambda: encode(Image.fromarray(GRAY).convert("LA"), "PNG"), (24, 40), np.uint8, 1, "png"),
        (lambda: encode(Image.fromarray(GRAY > 128), "PNG"), (24, 40), np.uint8, 1, "png"),
        (lambda: encode(Image.fromarray(GRAY).convert("P"), "PNG"), (24, 40), np.uint8, 1, "png"),
        (lambda: encode(Image.fromarray(RGB).convert("P"), "PNG"), (24, 40, 3), np.uint8, 3, "png"),
        (lambda: encode(Image.fromarray(GRAY), "JPEG"), (24, 40), np.uint8, 1, "jpeg"),
        (lambda: encode(Image.fromarray(RGB), "JPEG"), (24, 40, 3), np.uint8, 3, "jpeg"),
        (lambda: encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"), (24, 40, 3), np.uint8, 3, "jpeg"),
        (lambda: encode(Image.fromarray(GRAY), "BMP"), (24, 40), np.uint8, 1, "bmp"),
        (lambda: encode(Image.fromarray(RGB), "BMP"), (24, 40, 3), np.uint8, 3, "bmp"),
        (
            lambda: encode(Image.fromarray(GRAY.astype(np.uint16) * 257), "TIFF"),
            (24, 40),
            np.uint16,
            1,
            "tiff",
        ),
        (
            lambda: encode(Image.fromarray(RGB), "TIFF", compression="tiff_lzw"),
            (24, 40, 3),
            np.uint8,
            3,
            "tiff",
        ),
    ],
    ids=[
        "png8",
        "png16",
        "png_rgb",
        "png_rgba",
        "png_la",
        "png_1bit",
        "png_gray_palette",
        "png_color_palette",
        "jpeg_gray",
        "jpeg_rgb",
        "jpeg_cmyk",
        "bmp_gray",
        "bmp_rgb",
        "tiff16",
        "tiff_lzw_rgb",
    ],
)
def test_reads_formats_and_modes(make, shape, dtype, channels, fmt):
    img = decode_image(make(), MAX)
    assert isinstance(img, DecodedImage)
    assert img.pixels.shape == shape
    assert img.pixels.dtype == dtype
    assert img.channels == channels
    assert img.bit_depth == (16 if dtype == np.uint16 else 8)
    assert img.format == fmt
    assert (img.height, img.width) == shape[:2]


def test_lossless_values_are_exact_and_rgb_order_kept():
    assert np.array_equal(decode_image(encode(Image.fromarray(RGB), "PNG"), MAX).pixels, RGB)
    g16 = (RNG.random((24, 40)) * 65535).astype(np.uint16)
    assert np.array_equal(decode_image(encode(Image.fromarray(g16), "PNG"), MAX).pixels, g16)
    assert np.array_equal(decode_image(encode(Image.fromarray(g16), "TIFF"), MAX).pixels, g16)
    rgba = np.dstack([RGB, np.full(GRAY.shape, 7, np.uint8)])
    assert np.array_equal(decode_image(encode(Image.fromarray(rgba), "PNG"), MAX).pixels, RGB)


def test_cmyk_jpeg_matches_pil_conversion():
    data = encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data, MAX).pixels, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pil(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(RGB), "JPEG", exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    img = decode_image(data, MAX)
    assert img.pixels.shape == expected.shape
    assert (img.width, img.height) == ((40, 24) if orientation <= 4 else (24, 40))
    assert np.abs(img.pixels.astype(int) - expected.astype(int)).max() <= 2  # same decoder, same pixels


def test_too_large_is_rejected_from_the_header_without_decoding():
    err = rejected(png_claiming(100_000, 100_000))
    assert err.reason == "too_large"
    assert (err.width, err.height) == (100_000, 100_000)
    err = rejected(encode(Image.fromarray(RGB), "JPEG"), max_pixels=100)
    assert err.reason == "too_large" and "24" in err.detail
    assert rejected(encode(Image.fromarray(GRAY), "TIFF"), max_pixels=100).reason == "too_large"
    assert rejected(encode(Image.fromarray(GRAY), "BMP"), max_pixels=100).reason == "too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "GIF"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files_are_detected(fmt, keep):
    data = encode(Image.fromarray(RGB if fmt != "GIF" else GRAY), fmt)
    err = rejected(data[: int(len(data) * keep)])
    assert err.reason in ("truncated", "unreadable"), err.detail
    if fmt in ("PNG", "JPEG"):
        assert err.reason == "truncated"


def test_not_an_image_and_empty_and_garbage():
    assert rejected(b"").reason == "not_an_image"
    assert rejected(b"<!DOCTYPE html><html><body>404</body></html>").reason == "not_an_image"
    assert rejected(b"BM not a bitmap").reason == "not_an_image"
    # a valid signature followed by garbage is a broken image, not "not an image"
    assert rejected(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10).reason == "truncated"
    assert rejected(b"\xff\xd8\xff" + bytes(range(256)) * 4).reason in ("truncated", "unreadable")


def test_corrupt_png_crc_is_unreadable():
    data = bytearray(encode(Image.fromarray(GRAY), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 30] = b"\xff" * 20
    assert rejected(bytes(data)).reason in ("unreadable", "truncated")


def test_multi_frame_first_or_reject():
    frames = [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)]
    for fmt in ("TIFF", "GIF"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        img = decode_image(data, MAX, "first")
        assert img.n_frames == 2 and img.pixels.shape == (24, 40)
        assert rejected(data, multi_frame="reject").reason == "multi_frame"


def test_unsupported_mode():
    float_tiff = encode(Image.fromarray(RNG.random((8, 8)).astype(np.float32)), "TIFF")
    assert rejected(float_tiff).reason == "unsupported_mode"


def test_read_image_missing_file_is_unreadable(tmp_path: Path):
    with pytest.raises(ImageRejected) as info:
        read_image(tmp_path / "nope.png", MAX)
    assert info.value.reason == "unreadable"


def test_bad_multi_frame_option_is_a_value_error():
    with pytest.raises(ValueError, match="multi_frame"):
        decode_image(b"x", MAX, "all")  # type: ignore[arg-type]


def test_rejection_pickles_with_its_reason():
    import pickle

    err = pickle.loads(pickle.dumps(ImageRejected("too_large", "big", width=3, height=4, format="png")))
    assert (err.reason, err.detail, err.width, err.height, err.format) == ("too_large", "big", 3, 4, "png")


# ------------------------------------------------------------------------------------ DICOM

pydicom_data = pytest.importorskip("pydicom.data")


def _testfile(name: str) -> Path:
    """A pydicom test file that ships with the package (never downloaded)."""
    path = Path(pydicom_data.__file__).parent / "test_files" / name
    if not path.exists():
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def test_dicom_signed_16bit_keeps_stored_values_offset():
    import pydicom

    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path, MAX)
    assert img.format == "dicom" and img.bit_depth == 16 and img.channels == 1
    assert img.pixels.dtype == np.uint16 and img.pixels.shape == (128, 128)
    assert img.patient_id == "1CT1"
    stored = ds.pixel_array.astype(np.int64)
    assert np.array_equal(img.pixels.astype(np.int64), stored + 2 ** (ds.BitsStored - 1))


def test_dicom_monochrome1_is_inverted(tmp_path: Path):
    import pydicom

    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    normal = read_image(_testfile("MR_small.dcm"), MAX).pixels.astype(np.int64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    inverted = read_image(out, MAX).pixels.astype(np.int64)
    assert np.array_equal(inverted, (2**ds.BitsStored - 1) - normal)


def test_dicom_rgb_multi_frame_and_palette():
    img = read_image(_testfile("SC_rgb_rle_2frame.dcm"), MAX)
    assert img.n_frames == 2 and img.pixels.shape == (100, 100, 3) and img.channels == 3
    with pytest.raises(ImageRejected) as info:
        read_image(_testfile("SC_rgb_rle_2frame.dcm"), MAX, "reject")
    assert info.value.reason == "multi_frame"
    pal = read_image(_testfile("examples_palette.dcm"), MAX)
    assert pal.channels == 3 and pal.pixels.ndim == 3


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtplan.dcm", "not_an_image"),  # no pixel data
        ("MR_truncated.dcm", "truncated"),
        ("rtdose.dcm", "unsupported_mode"),  # 32-bit dose grid
    ],
)
def test_dicom_rejections(name, reason):
    with pytest.raises(ImageRejected) as info:
        read_image(_testfile(name), MAX)
    assert info.value.reason == reason


def test_dicom_too_large_from_header():
    with pytest.raises(ImageRejected) as info:
        read_image(_testfile("CT_small.dcm"), 100)
    assert info.value.reason == "too_large"


def test_dicom_header_fields_reach_the_manifest(tmp_path: Path):
    import shutil

    import pydicom

    from pipeline.ingest import ingest
    from pipeline.params import IngestParams

    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    img = read_image(_testfile("CT_small.dcm"), MAX)
    assert img.tags["Manufacturer"] == str(ds.Manufacturer) and img.tags["Modality"] == "CT"
    assert img.tags["PixelSpacing"] == str(ds.PixelSpacing[0])
    assert read_image(_testfile("MR_small.dcm"), MAX).tags["Modality"] == "MR"
    (tmp_path / "ct").mkdir()
    (tmp_path / "mr").mkdir()
    shutil.copy(_testfile("CT_small.dcm"), tmp_path / "ct" / "a.dcm")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mr" / "b.png")
    manifest = ingest(tmp_path, None, IngestParams()).manifest.set_index("image_id")
    assert manifest.loc["ct/a.dcm", "dicom_Manufacturer"] == str(ds.Manufacturer)
    assert manifest.loc["mr/b.png", "dicom_Manufacturer"] == ""
