"""Atomic writers and small readers. Every output goes to a temp file that is then renamed.

An interrupted stage therefore never leaves a half-written file at the final path. A temp file
is named ``.<name>.<pid>.<random><suffix>.tmp`` beside its output; one whose process no longer
runs (a stage killed with ``kill -9``, which skips every cleanup) is removed by the next writer of
that output.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Args:
        path: Final destination. Parent folders are created.
        suffix: Suffix of the temp file (some writers pick a format from it); defaults to the
            suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=(suffix or path.suffix) + ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates files readable by the owner only; give outputs the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp files of ``path`` left by writers that no longer run; return them.

    A temp file whose name carries no process id (written before ids were recorded) counts as
    stale too: its writer is long gone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and _is_running(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically (numpy scalars allowed)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    write_text(text + "\n", path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


ROW_GROUP_ROWS = 8192
"""Rows per parquet row group: a reader that streams a column (dedup's thumbnails) decodes one
row group at a time, so its memory does not grow with the table (one group would be the whole)."""


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table as parquet, atomically, without the pandas index, in row groups of
    :data:`ROW_GROUP_ROWS` rows."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, row_group_size=ROW_GROUP_ROWS)


@contextlib.contextmanager
def parquet_stream(path: str | Path, empty: pd.DataFrame) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Append tables chunk by chunk to one parquet file without holding them all in memory.

    Yields an ``append(df)`` function; rows are written in row groups of :data:`ROW_GROUP_ROWS`
    (the schema is the first chunk's; later chunks are converted to it). Like every writer here
    the file appears at ``path`` only if the ``with`` block ends without an exception. ``empty``
    is written when no row was appended.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        pending: list[pd.DataFrame] = []

        def flush(final: bool) -> None:
            nonlocal writer, pending
            rows = pd.concat(pending, ignore_index=True)
            full = len(rows) if final else len(rows) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
            if full:
                schema = writer.schema if writer is not None else None
                table = pa.Table.from_pandas(rows.iloc[:full], schema=schema, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            pending = [rows.iloc[full:].reset_index(drop=True)] if full < len(rows) else []

        def append(df: pd.DataFrame) -> None:
            pending.append(df)
            if sum(len(p) for p in pending) >= ROW_GROUP_ROWS:
                flush(final=False)

        try:
            yield append
            if pending:
                flush(final=True)
            if writer is None:
                empty.to_parquet(tmp, index=False)
        finally:
            if writer is not None:
                writer.close()


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a human-facing table as UTF-8 CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_npy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def write_png(image: np.ndarray, path: str | Path) -> None:
    """Write an HxW or HxWx3 (RGB) uint8/uint16 array as PNG, atomically."""
    import cv2

    arr = image
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"could not encode PNG for {path}")
    write_bytes(buf.tobytes(), path)
