"""Decoding one image file, safely: the single reader every stage uses.

:func:`read_image` (or :func:`decode_image` on bytes already in memory) returns the pixels in
the pipeline's convention: a numpy array ``HxW`` (grayscale) or ``HxWx3`` (RGB), dtype
``uint8`` or ``uint16`` (the true bit depth is kept). A file that cannot be used raises
:class:`ImageRejected` with a machine-readable ``reason``; nothing else escapes for bad data.

Reading rules (untrusted input; README, ``ingest`` stage):

* The format comes from the file's magic bytes, not its extension (an HTML page saved as
  ``.jpg`` is ``not_an_image``), and only the formats in :data:`PIL_FORMATS` and DICOM (with a
  transfer syntax in :data:`DICOM_TRANSFER_SYNTAXES`) are decoded: any other format Pillow or
  pydicom knows (EPS, which would start Ghostscript; TGA, BLP, DDS, FITS, JPEG 2000 DICOM, ...)
  is ``unsupported_format``, named in the detail, and never handed to its decoder.
* Frames are never walked: a multi-frame TIFF or GIF is recognised from its second frame, so a
  file holding a chain of 200,000 frames costs no more than one with two.
* The size is read from the header and checked against ``max_pixels`` *before* any pixel is
  decoded, so a 100000 x 100000 PNG header costs nothing (``too_large``).
* Truncated files are detected (``truncated``): PIL's ``LOAD_TRUNCATED_IMAGES`` stays False, and
  the fast OpenCV path is only taken for files that end with their format's end marker.
* PNG, JPEG, BMP and TIFF in plain modes are decoded with ``cv2.imdecode`` (fast); PIL handles
  the rest (palette, CMYK, GIF, odd modes) and classifies errors. DICOM goes through pydicom.

Conversions: RGBA/LA drop alpha; palette images expand to RGB (or gray when the palette is
gray); CMYK and YCbCr become RGB; 1/2/4-bit images become 8-bit (0..255); JPEG EXIF
orientation is applied (so ``width``/``height`` are those of the displayed image). DICOM:
stored values are kept (no rescale slope/intercept, no windowing), masked to ``BitsStored``;
signed data is offset by ``2**(BitsStored-1)`` into the unsigned range; ``MONOCHROME1`` is
inverted so that bright means dense everywhere; ``PALETTE COLOR`` is expanded with its LUT.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

log = logging.getLogger(__name__)

# Never decode partial files silently (PIL's default, restated because a library could flip it).
ImageFile.LOAD_TRUNCATED_IMAGES = False

REASONS = (
    "unreadable",
    "truncated",
    "not_an_image",
    "unsupported_format",
    "too_large",
    "unsupported_mode",
    "multi_frame",
)

PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
"""The only Pillow plugins files are opened with (README "Formats"; JPEG includes MPO)."""

DICOM_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
}
"""DICOM transfer syntaxes decoded (uncompressed, deflated, RLE, JPEG and JPEG-LS); others are
``unsupported_format``."""
_DEFLATED = "1.2.840.10008.1.2.1.99"
_CHAINED_FRAMES = ("tiff", "gif")  # frames found by walking a chain: never counted past the second

MultiFrame = Literal["first", "reject"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SIG = b"\xff\xd8\xff"
_TIFF_SIGS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
# PIL modes decoded by cv2 without loss, per format (others go through PIL).
_CV2_MODES = {
    "jpeg": {"L", "RGB"},
    "bmp": {"L", "RGB", "RGBA", "P"},
    "tiff": {"L", "I;16", "I;16B", "RGB", "RGBA"},
}


class ImageRejected(Exception):  # noqa: N818  (the name is the contract)
    """A file that cannot be used as an image.

    Attributes:
        reason: One of :data:`REASONS` (``unreadable``, ``truncated``, ``not_an_image``,
            ``unsupported_format``, ``too_large``, ``unsupported_mode``, ``multi_frame``).
        detail: Human-readable explanation (what was expected, what was found).
        width, height: Size from the header when it was read (e.g. for ``too_large``), else None.
        format: Detected format or ``""``.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        width: int | None = None,
        height: int | None = None,
        format: str = "",
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.width = width
        self.height = height
        self.format = format

    def __reduce__(self):  # keep attributes when pickled across processes
        return (_rebuild_rejected, (self.reason, self.detail, self.width, self.height, self.format))


def _rebuild_rejected(
    reason: str, detail: str, width: int | None, height: int | None, fmt: str
) -> ImageRejected:
    return ImageRejected(reason, detail, width=width, height=height, format=fmt)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image in the pipeline's convention.

    Attributes:
        pixels: ``HxW`` (gray) or ``HxWx3`` (RGB) array, dtype uint8 or uint16.
        bit_depth: 8 or 16 (the container depth; DICOM with BitsStored=12 is 16).
        channels: Color channels as stored, alpha excluded: 1 (gray) or 3 (color).
        format: ``png``, ``jpeg``, ``tiff``, ``bmp``, ``gif``, ``dicom``, ... (lowercase).
        width: Width in pixels (after EXIF orientation).
        height: Height in pixels (after EXIF orientation).
        n_frames: Frames in the file (only the first is decoded); for TIFF and GIF, whose frames
            form a chain, 2 stands for "more than one" (the chain is not walked).
        patient_id: DICOM ``PatientID`` when present, else None.
        tags: DICOM header fields of :data:`DICOM_TAGS` that are present, as strings (the first
            value of a multi-valued field); empty for other formats.
    """

    pixels: np.ndarray
    bit_depth: int
    channels: int
    format: str
    width: int
    height: int
    n_frames: int = 1
    patient_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


DICOM_TAGS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "ViewPosition",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "BitsStored",
    "KVP",
    "PatientSex",
    "PatientAge",
)
"""DICOM header fields kept at ingest (manifest columns ``dicom_<Keyword>``) for the shortcut audit:
acquisition details that can predict the label without any anatomy."""


def _dicom_tags(ds: object) -> dict[str, str]:
    out = {}
    for key in DICOM_TAGS:
        value = getattr(ds, key, None)
        if value is None or value == "":
            continue
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else ""
        text = " ".join(str(value).split())
        if text:
            out[key] = text
    return out


def read_image(path: str | Path, max_pixels: int, multi_frame: MultiFrame = "first") -> DecodedImage:
    """Read and decode one image file.

    Args:
        path: The file.
        max_pixels: Largest accepted ``width * height``, checked from the header before decoding.
        multi_frame: ``first`` decodes the first frame of multi-frame files, ``reject`` rejects them.

    Returns:
        The :class:`DecodedImage`.

    Raises:
        ImageRejected: For any file that cannot be used, with ``reason`` ``unreadable`` (also
            when the file cannot be opened), ``truncated``, ``not_an_image``,
            ``unsupported_format``, ``too_large``, ``unsupported_mode`` or ``multi_frame``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageRejected("unreadable", f"cannot read file: {err.strerror or err}") from err
    return decode_image(data, max_pixels, multi_frame, name=path.name)


def decode_image(
    data: bytes, max_pixels: int, multi_frame: MultiFrame = "first", name: str = ""
) -> DecodedImage:
    """Decode an image from its bytes (see :func:`read_image`).

    ``name`` (the file name) is only a hint: it lets DICOM files without the ``DICM`` preamble be
    tried with pydicom when they end in ``.dcm``/``.dicom``.

    Raises:
        ImageRejected: See :func:`read_image`. Unexpected library errors on bad data are mapped
            to ``unreadable`` with the exception in ``detail``.
    """
    if multi_frame not in ("first", "reject"):
        raise ValueError(f"multi_frame must be 'first' or 'reject', got {multi_frame!r}")
    if not data:
        raise ImageRejected("not_an_image", "empty file (0 bytes)")
    try:
        if data.startswith(_PNG_SIG):
            return _decode_png(data, max_pixels, multi_frame)
        if data.startswith(_JPEG_SIG):
            return _decode_jpeg(data, max_pixels, multi_frame)
        if data[128:132] == b"DICM" or (
            name.lower().endswith(_DICOM_EXTENSIONS) and not data.startswith((_JPEG_SIG, *_TIFF_SIGS))
        ):
            return _decode_dicom(data, max_pixels, multi_frame)
        return _decode_with_pil_header(data, max_pixels, multi_frame)
    except ImageRejected:
        raise
    except MemoryError as err:
        raise ImageRejected("too_large", "out of memory while decoding") from err
    except Exception as err:  # noqa: BLE001  (decoders raise anything on hostile bytes)
        raise ImageRejected("unreadable", f"{type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------------- helpers


def _check_size(width: int, height: int, max_pixels: int, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected("unreadable", f"header gives an empty size {width}x{height}", format=fmt)
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"header claims {width}x{height} = {width * height} pixels > max_pixels={max_pixels}",
            width=width,
            height=height,
            format=fmt,
        )


def _to_convention(arr: np.ndarray, fmt: str, *, bgr: bool) -> tuple[np.ndarray, int]:
    """Bring a decoded array to HxW / HxWx3 uint8|uint16; returns (pixels, stored channels)."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageRejected(
            "unsupported_mode", f"pixel type {arr.dtype} (expected 8- or 16-bit unsigned)", format=fmt
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(arr), 1
    if arr.ndim != 3 or arr.shape[2] not in (2, 3, 4):
        raise ImageRejected(
            "unsupported_mode", f"array shape {arr.shape} (expected HxW, HxWx3, HxWx4)", format=fmt
        )
    if arr.shape[2] == 2:  # gray + alpha
        return np.ascontiguousarray(arr[:, :, 0]), 1
    if bgr:
        code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(arr, code), 3
    return np.ascontiguousarray(arr[:, :, :3]), 3


def _cv2_decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _decode_png(data: bytes, max_pixels: int, multi_frame: MultiFrame) -> DecodedImage:
    # IHDR is always the first chunk at a fixed offset: size, bit depth and color type for free.
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageRejected(
            "truncated" if len(data) < 33 else "unreadable", "PNG without a valid IHDR chunk", format="png"
        )
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    _check_size(width, height, max_pixels, "png")
    is_animated = b"acTL" in data[33 : data.find(b"IDAT", 33)] if b"IDAT" in data else False
    # Fast path: plain gray/RGB(A) PNGs that end with IEND; palette and damaged files go to PIL.
    if color_type != 3 and not is_animated and data.endswith(_PNG_IEND):
        arr = _cv2_decode(data)
        if arr is not None:
            if color_type == 4:  # gray + alpha: cv2 returns BGRA, the data is gray
                arr = arr[:, :, 0]
            pixels, channels = _to_convention(arr, "png", bgr=True)
            return _result(pixels, channels, "png")
    return _decode_with_pil_header(data, max_pixels, multi_frame)


def _jpeg_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, components, precision, exif orientation) from the JPEG markers, or None.

    Walks the marker segments up to the first SOF (a few hundred bytes), about 50x cheaper than
    PIL's open. Anything unusual returns None and the caller falls back to PIL.
    """
    i, n, orientation = 2, len(data), 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
            continue
        seglen = (data[i + 2] << 8) | data[i + 3]
        seg = data[i + 4 : i + 2 + seglen]
        if marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(seg[6:])
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(seg) < 6:
                return None
            height, width = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4]
            return width, height, seg[5], seg[0], orientation
        elif marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + seglen
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 of an EXIF block; 1 when absent or unreadable."""
    try:
        endian = "<" if tiff[:2] == b"II" else ">"
        (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
        (count,) = struct.unpack_from(endian + "H", tiff, ifd)
        for k in range(min(count, 512)):
            tag, _typ, _cnt, value = struct.unpack_from(endian + "HHIH", tiff, ifd + 2 + 12 * k)
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def _decode_jpeg(data: bytes, max_pixels: int, multi_frame: MultiFrame) -> DecodedImage:
    header = _jpeg_header(data)
    if header is None:
        return _decode_with_pil_header(data, max_pixels, multi_frame)
    width, height, components, precision, orientation = header
    _check_size(width, height, max_pixels, "jpeg")
    # Fast path: 8-bit gray/YCbCr JPEGs that end with EOI. CMYK, 12-bit and damaged files go to
    # PIL (cv2 can decode a truncated JPEG into partly gray pixels without an error).
    if components in (1, 3) and precision == 8 and _ends_cleanly(data, "jpeg"):
        arr = _cv2_decode(data)
        if arr is not None:
            pixels, channels = _to_convention(arr, "jpeg", bgr=True)
            if orientation != 1:
                pixels = _apply_orientation(pixels, orientation)
            return _result(pixels, channels, "jpeg")
    return _decode_with_pil_header(data, max_pixels, multi_frame)


@contextmanager
def _pil_pixel_limit(max_pixels: int):
    """Make PIL's decompression-bomb limit ours for the duration of one open."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _pil_error(err: Exception, fmt: str) -> ImageRejected:
    msg = str(err)
    low = msg.lower()
    if "truncated" in low or "incomplete" in low or "end of file" in low:
        return ImageRejected("truncated", f"{fmt or 'image'} data ends early: {msg}", format=fmt)
    return ImageRejected("unreadable", f"{type(err).__name__}: {msg}", format=fmt)


def _decode_with_pil_header(data: bytes, max_pixels: int, multi_frame: MultiFrame) -> DecodedImage:
    try:
        with _pil_pixel_limit(max_pixels):
            im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_large", f"header claims more than max_pixels={max_pixels}: {err}") from err
    except UnidentifiedImageError as err:
        fmt = _strong_signature(data)
        if fmt:  # the magic bytes say image, but the header cannot be parsed
            reason = "unreadable" if _ends_cleanly(data, fmt) else "truncated"
            raise ImageRejected(
                reason, f"{fmt} signature but the header cannot be parsed", format=fmt
            ) from err
        other = _other_pil_format(data)
        if other:
            raise ImageRejected(
                "unsupported_format",
                f"{other} file; only {', '.join(PIL_FORMATS)} and DICOM are decoded",
                format=other.lower(),
            ) from err
        raise ImageRejected(
            "not_an_image", f"not a recognised image format (starts with {data[:8]!r})"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise _pil_error(err, _strong_signature(data)) from err
    fmt = (im.format or "unknown").lower()
    width, height = im.size
    _check_size(width, height, max_pixels, fmt)
    if fmt in _CHAINED_FRAMES:  # n_frames would walk the whole chain (minutes on a hostile file)
        n_frames = 2 if im.is_animated else 1
    else:  # the header says (PNG acTL, WebP, MPO)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
    if n_frames > 1 and multi_frame == "reject":
        raise ImageRejected(
            "multi_frame",
            f"{'more than one frame' if fmt in _CHAINED_FRAMES else f'{n_frames} frames'} "
            "(ingest.multi_frame=reject)",
            width=width,
            height=height,
            format=fmt,
        )

    orientation = 1
    if fmt == "jpeg" and "exif" in im.info:
        orientation = int(im.getexif().get(0x0112, 1) or 1)

    arr = None
    # Fast path: cv2 for plain modes, only when the file ends with its end marker (cv2 may
    # otherwise decode a truncated file into partly gray pixels).
    if im.mode in _CV2_MODES.get(fmt, ()) and _ends_cleanly(data, fmt):
        arr = _cv2_decode(data)
        if arr is not None and fmt == "bmp" and im.mode in ("L", "P"):
            arr = None  # cv2 expands 8-bit BMPs to BGR; let PIL decide gray vs color palette
        if arr is not None:
            pixels, channels = _to_convention(arr, fmt, bgr=True)
    if arr is None:
        try:
            with _pil_pixel_limit(max_pixels):
                im.seek(0)
                im.load()
        except Image.DecompressionBombError as err:
            raise ImageRejected("too_large", str(err), format=fmt) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise _pil_error(err, fmt) from err
        pixels, channels = _pil_to_array(im, fmt)
    if orientation != 1:
        pixels = _apply_orientation(pixels, orientation)
    return _result(pixels, channels, fmt, n_frames=n_frames)


def _other_pil_format(data: bytes) -> str:
    """The Pillow format (outside :data:`PIL_FORMATS`) whose signature check accepts ``data``, or
    ``""``. Only the plugins' prefix tests run (as ``Image.open`` does on the first 16 bytes);
    nothing is decoded."""
    Image.init()
    prefix = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in PIL_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001, S112  (a signature test that fails just does not match)
            continue
    return ""


def _strong_signature(data: bytes) -> str:
    """Format named by unambiguous magic bytes (not BMP's two-letter 'BM'), or ``""``."""
    if data.startswith(_PNG_SIG):
        return "png"
    if data.startswith(_JPEG_SIG):
        return "jpeg"
    if data.startswith(_TIFF_SIGS):
        return "tiff"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return ""


def _ends_cleanly(data: bytes, fmt: str) -> bool:
    """Whether the file ends with its format's end marker (formats without one: True)."""
    if fmt == "jpeg":
        return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    if fmt == "png":
        return data.endswith(_PNG_IEND)
    if fmt == "gif":
        return data.endswith(b";")
    return fmt in ("bmp", "tiff")  # cv2 returns None on damaged BMP/TIFF; PIL then explains why


def _pil_to_array(im: Image.Image, fmt: str) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode in ("P", "PA"):
        # A palette of grays is a gray image; anything else is color.
        rgb_mode = "RGB"
        palette = im.getpalette() or []
        triples = np.asarray(palette, dtype=np.int32).reshape(-1, 3) if palette else np.zeros((0, 3))
        if len(triples) and (triples[:, 0] == triples[:, 1]).all() and (triples[:, 1] == triples[:, 2]).all():
            rgb_mode = "L"
        im = im.convert(rgb_mode)
        mode = rgb_mode
    elif mode in ("1", "LA", "La"):
        im, mode = im.convert("L"), "L"
    elif mode in ("RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
        im, mode = im.convert("RGB"), "RGB"
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im)
        return _to_convention(arr.astype(np.uint16), fmt, bgr=False)
    elif mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageRejected(
                "unsupported_mode", f"32-bit integer pixels outside 0..65535 (mode {mode})", format=fmt
            )
        return _to_convention(arr.astype(np.uint16), fmt, bgr=False)
    if mode not in ("L", "RGB"):
        raise ImageRejected(
            "unsupported_mode",
            f"pixel mode {im.mode!r} (expected gray, RGB, RGBA, palette, CMYK)",
            format=fmt,
        )
    return _to_convention(np.asarray(im), fmt, bgr=False)


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (values 2..8) so the array is the image as displayed."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    op = ops.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


def _result(
    pixels: np.ndarray,
    channels: int,
    fmt: str,
    n_frames: int = 1,
    patient_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> DecodedImage:
    return DecodedImage(
        pixels=pixels,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        channels=channels,
        format=fmt,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        n_frames=n_frames,
        patient_id=patient_id,
        tags=dict(tags or {}),
    )


# ------------------------------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, max_pixels: int, multi_frame: MultiFrame) -> DecodedImage:

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns about every odd value
        return _decode_dicom_quiet(data, max_pixels, multi_frame)


def _decode_dicom_quiet(data: bytes, max_pixels: int, multi_frame: MultiFrame) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        if data[128:132] == b"DICM":
            _check_transfer_syntax(data, max_pixels)
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except (InvalidDicomError, EOFError, struct.error) as err:
        raise ImageRejected(
            "truncated" if isinstance(err, EOFError) else "not_an_image", f"DICOM: {err}", format="dicom"
        ) from err
    patient_id = str(ds.get("PatientID", "") or "").strip() or None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise ImageRejected("not_an_image", f"DICOM without pixel data{kind}", format="dicom")
    if "PixelData" not in ds:
        raise ImageRejected("unsupported_mode", "DICOM float pixel data", format="dicom")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(cols, rows, max_pixels, "dicom")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 and multi_frame == "reject":
        raise ImageRejected(
            "multi_frame",
            f"{n_frames} frames (ingest.multi_frame=reject)",
            width=cols,
            height=rows,
            format="dicom",
        )
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if bits_stored > 16:
        raise ImageRejected(
            "unsupported_mode", f"DICOM BitsStored={bits_stored} (expected <= 16)", format="dicom"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        arr = pixel_array(ds, index=0 if n_frames > 1 else None)
    except (ValueError, RuntimeError, NotImplementedError) as err:
        msg = str(err)
        reason = "truncated" if "less than expected" in msg or "truncat" in msg.lower() else "unreadable"
        raise ImageRejected(reason, "DICOM pixel data: " + " ".join(msg.split()), format="dicom") from err
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise ImageRejected(
                "unsupported_mode", f"monochrome DICOM with shape {arr.shape}", format="dicom"
            )
        arr = _dicom_unsigned(arr, bits_stored, signed=int(ds.get("PixelRepresentation", 0) or 0) == 1)
        if photometric == "MONOCHROME1":
            arr = ((1 << bits_stored) - 1 - arr.astype(np.int32)).astype(arr.dtype)
    pixels, channels = _to_convention(arr, "dicom", bgr=False)
    return _result(pixels, channels, "dicom", n_frames=n_frames, patient_id=patient_id, tags=_dicom_tags(ds))


def _check_transfer_syntax(data: bytes, max_pixels: int) -> None:
    """Refuse a DICOM file whose transfer syntax is not in :data:`DICOM_TRANSFER_SYNTAXES`, and a
    deflated one that inflates to more than one 16-bit RGB frame of ``max_pixels`` plus 16 MiB of
    tags (pydicom would inflate it whole, unbounded), by reading the file meta header only."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    uid = str(meta.get("TransferSyntaxUID", "") or "").strip()
    if uid and uid not in DICOM_TRANSFER_SYNTAXES:
        name = getattr(meta.TransferSyntaxUID, "name", uid)
        raise ImageRejected(
            "unsupported_format",
            f"DICOM transfer syntax {name} ({uid}); decoded: uncompressed, deflated, RLE, JPEG, JPEG-LS",
            format="dicom",
        )
    if uid == _DEFLATED:
        limit = 6 * max_pixels + 2**24
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        if len(inflater.decompress(data[fp.tell() :], limit + 1)) > limit:
            raise ImageRejected(
                "too_large", f"deflated DICOM inflates to more than {limit} bytes", format="dicom"
            )


def _dicom_unsigned(arr: np.ndarray, bits_stored: int, *, signed: bool) -> np.ndarray:
    """Stored values as unsigned ``bits_stored``-bit integers in uint8/uint16."""
    out_dtype = np.uint8 if bits_stored <= 8 else np.uint16
    a = arr.astype(np.int64)
    if signed:
        a = a + (1 << (bits_stored - 1))  # keeps order: the most negative value maps to 0
    a &= (1 << bits_stored) - 1
    return a.astype(out_dtype)
