"""Small builders of test files shared by several test modules."""

from __future__ import annotations

import struct
import zlib


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG whose header claims ``width`` x ``height`` pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 99))
        + chunk(b"IEND", b"")
    )


def default_params() -> dict:
    """The shipped defaults on the demo data, as a ``params.yaml`` mapping.

    Tests build their params from this, never from the workspace's ``params.yaml``: a user may have
    pointed that at their own data (``tests/test_params.py`` checks the shipped file equals these).
    """
    from pipeline.params import DataParams, Params

    data = DataParams(root="data/demo", labels="data/demo/labels.csv", truth="data/demo/truth.json")
    return Params(data=data).model_dump(mode="json")
