"""Ingest: find every input file, validate it, hash it, decode it once and compute its features.

Semantics (README "Use your own data"):

* **Files found** = every regular file under ``data.root`` whose extension is in
  ``ingest.extensions`` (case-insensitive; symlinked folders are not followed) plus every file
  listed in the labels table (whatever its extension). Each appears exactly once in the
  manifest; its ``image_id`` is its POSIX path relative to the root.
* **Labels table** (``data.labels``): CSV with ``image_path,label,patient_id`` (more columns
  are kept). A bad table stops the stage with the file and row (row 1 = header, so row numbers
  match a spreadsheet): missing columns, no rows, a path that is absolute or escapes the root
  (``..``, or a symlink resolving outside it), the same path listed twice, a listed file that
  does not exist. Delimiter ``,``/``;``/tab/``|`` is detected from the header, a UTF-8 BOM is
  ignored, quoted fields may contain the delimiter, values are stripped of spaces.
* **Class-per-folder** (``data.labels: null``): the label is the first folder under the root
  (``root/<label>/.../file``); the patient is the DICOM PatientID or else the file stem (so each
  file is its own leakage group unless stems repeat). Files directly in the root have no label.
* **Per-file reasons** (a bad file never stops the stage), first that applies wins: ``too_large``
  (file over ``max_file_mb``), then the decoder's ``unreadable``, ``truncated``,
  ``not_an_image``, ``too_large`` (pixels over ``max_pixels``, from the header),
  ``unsupported_format``, ``unsupported_mode``, ``multi_frame``; then ``missing_label`` (found
  on disk, not in the table; or in no class folder), ``unknown_label`` (empty/NaN label, or not
  in ``ingest.classes``), ``missing_patient`` (no patient id and no DICOM PatientID, with
  ``ingest.missing_patient_id: reject``; ``own_group``, the default, makes the image its own
  patient ``image:<image_id>`` instead); ``features_failed`` if the feature computation raised
  (a bug: logged with its traceback); ``timeout`` when the work on the file ran past
  ``ingest.max_seconds_per_file`` (``pipeline/budget.py``). A symlink that loops or points
  outside the root is ``unreadable`` and never followed.
* **Labels** follow :mod:`pipeline.labels`: ``NA``/``null``/``n/a``/``nan`` are empty, spelling
  variants of one label stop the stage (or merge into the spelling ``ingest.classes`` names).

One picklable function, :func:`ingest_file`, opens each file once: the same bytes are hashed
(sha256) and decoded, and the decoded pixels go straight into
:func:`pipeline.features.compute_features`, so quality and dedup never decode again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.budget import FileTimeout, time_budget
from pipeline.contract import MANIFEST_COLUMNS, STATUS_OK, STATUS_REJECTED, image_id_for
from pipeline.errors import InputError
from pipeline.images import REASONS as IMAGE_REASONS
from pipeline.images import ImageRejected, decode_image
from pipeline.io import parquet_stream
from pipeline.labels import is_missing, resolve_label_variants
from pipeline.parallel import map_chunks
from pipeline.params import ExecutorParams, IngestParams

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_path", "label", "patient_id")
DICOM_PREFIX = "dicom_"  # manifest columns of DICOM header fields (pipeline.images.DICOM_TAGS)
LABEL_REASONS = ("missing_label", "unknown_label", "missing_patient")
REASONS = (*IMAGE_REASONS, *LABEL_REASONS, "features_failed", "timeout")
OWN_GROUP_PREFIX = "image:"  # patient_id of an image without one, under missing_patient_id: own_group
_N_SHOWN = 5  # rows named in an error that lists many
_DELIMITERS = (",", ";", "\t", "|")


# ------------------------------------------------------------------------------ labels table


# Long on purpose: one pass over the CSV whose every check names the file and the row; the checks
# share the reader's position (row numbers), which helpers would have to be handed one by one.
def read_labels_table(path: str | Path, root: str | Path) -> pd.DataFrame:
    """Read and validate a labels table.

    Args:
        path: The CSV file.
        root: The data root the image paths are relative to.

    Returns:
        A DataFrame with ``image_path`` (normalized POSIX path relative to root), ``label``,
        ``patient_id`` (stripped strings; ``""`` when empty) and the table's other columns, in
        table order.

    Raises:
        ValueError: Naming the file and row: not UTF-8, missing columns, reserved column
            names, no rows, malformed CSV, absolute or escaping paths, paths listed twice.
        FileNotFoundError: The table does not exist, or files it lists do not (one error with
            their count and the first rows).
    """
    path, root = Path(path), Path(root)
    if path.is_dir():
        raise InputError(f"labels table {path} is a folder; expected a CSV file (data.labels)")
    if not path.is_file():
        raise InputError(f"labels table {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        row = raw[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path} row {row}: not UTF-8 text ({raw[err.start : err.start + 1]!r} at byte {err.start}); "
            "save the table as UTF-8 CSV"
        ) from err
    if not text.strip():
        raise InputError(
            f"{path}: empty table; expected a header {','.join(REQUIRED_COLUMNS)} and one row per image"
        )
    delimiter = _detect_delimiter(text, path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    try:
        header = [c.strip() for c in next(reader)]
        records, line_numbers = [], []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise InputError(
                    f"{path} row {reader.line_num}: {len(fields)} fields, expected {len(header)} "
                    f"as in the header {header} (quote values that contain {delimiter!r})"
                )
            records.append([f.strip() for f in fields])
            line_numbers.append(reader.line_num)
    except csv.Error as err:
        raise InputError(f"{path} row {reader.line_num}: malformed CSV: {err}") from err
    reserved = sorted(set(header) & (set(MANIFEST_COLUMNS) - set(REQUIRED_COLUMNS)))
    if reserved:
        raise InputError(f"{path}: column(s) {reserved} clash with manifest columns; rename them")
    if len(set(header)) != len(header):
        raise InputError(f"{path} row 1: duplicate column names {header}")
    if not records:
        raise InputError(f"{path}: no rows after the header; expected one row per image")
    table = pd.DataFrame(records, columns=header, dtype=str)

    root_resolved = root.resolve()
    seen: dict[str, int] = {}
    paths, missing = [], []
    for row, value in zip(line_numbers, table["image_path"], strict=True):
        rel = _safe_relative(value, root, root_resolved, f"{path} row {row}")
        if rel in seen:
            raise InputError(f"{path} row {row}: image_path {rel!r} already listed at row {seen[rel]}")
        seen[rel] = row
        full = root / rel
        if _is_symlink_loop(full):
            pass  # listed, never followed: ingest rejects it as unreadable
        elif not full.exists():
            missing.append(f"row {row} {value!r}")
        elif not full.is_file():
            raise InputError(f"{path} row {row}: image_path {value!r} is not a file")
        paths.append(rel)
    if missing:
        raise InputError(
            f"{path}: {len(missing)} of {len(paths)} listed file(s) do not exist under {root}: "
            + ", ".join(missing[:_N_SHOWN])
            + (f", ... ({len(missing) - _N_SHOWN} more)" if len(missing) > _N_SHOWN else "")
        )
    table["image_path"] = paths
    return table


def _is_symlink_loop(path: Path) -> bool:
    """Whether ``path`` is a symlink whose target chain loops (resolving it would raise)."""
    if not path.is_symlink():
        return False
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11-3.12: "Symlink loop from ..."
        return True
    except OSError as err:  # 3.13+: ELOOP; a dangling link is not a loop
        import errno

        return err.errno == errno.ELOOP
    return False


def _detect_delimiter(text: str, path: Path) -> str:
    """The delimiter whose header parse contains all required columns."""
    header = text.splitlines()[0]
    found = []
    for delim in _DELIMITERS:
        cols = [c.strip() for c in next(csv.reader([header], delimiter=delim))]
        if all(c in cols for c in REQUIRED_COLUMNS):
            return delim
        found.append(cols)
    cols = max(found, key=len)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    raise InputError(
        f"{path} row 1: missing column(s) {missing}; expected a header with "
        f"{list(REQUIRED_COLUMNS)} (delimiter , ; tab or |), got {cols}"
    )


def _safe_relative(value: str, root: Path, root_resolved: Path, where: str) -> str:
    """Normalize a table path and check it stays inside the root (also through symlinks)."""
    if not value:
        raise InputError(f"{where}: empty image_path")
    posix = value.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or Path(value).is_absolute():
        raise InputError(f"{where}: image_path {value!r} is absolute; expected a path relative to {root}")
    rel = posixpath.normpath(posix)
    if rel == ".." or rel.startswith("../"):
        raise InputError(f"{where}: image_path {value!r} escapes the data root {root}")
    if _is_symlink_loop(root / rel):
        return rel  # cannot resolve; ingest rejects it without following it
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root_resolved):
        raise InputError(
            f"{where}: image_path {value!r} resolves to {resolved}, outside the data root {root}"
        )
    return rel


# ------------------------------------------------------------------------------------ scan


def scan_files(root: str | Path, extensions: list[str]) -> list[str]:
    """Relative POSIX paths of the files under ``root`` with one of ``extensions`` (sorted).

    Extensions match case-insensitively. Symlinked folders are not followed; symlinked files
    are listed (ingest refuses to read those that point outside the root).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data root {root} is not a folder")
    exts = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.lower().endswith(exts):
                full = Path(dirpath) / name
                if full.is_file() or full.is_symlink():
                    found.append(full.relative_to(root).as_posix())
    return sorted(found)


# ------------------------------------------------------------------------------ per file


@dataclass(frozen=True)
class FileTask:
    """Everything :func:`ingest_file` needs for one file (picklable)."""

    root: str
    path: str  # relative POSIX path
    label: str = ""
    patient_id: str = ""
    has_label: bool = True  # False: found on disk but not in the table / in no class folder
    patient_from_stem: bool = False  # class-per-folder mode: fallback patient id = file stem
    max_pixels: int = 100_000_000
    max_file_bytes: int = 512 * 2**20
    multi_frame: str = "first"
    classes: tuple[str, ...] | None = None
    hashes: tuple[str, ...] = ("phash",)  # the perceptual hash(es) dedup reads
    max_seconds: float | None = None  # wall-clock budget of the file (ingest.max_seconds_per_file)
    missing_patient_id: str = "own_group"  # or "reject" (ingest.missing_patient_id)


@dataclass
class FileResult:
    """One manifest row (``row``), its features (ok files only) and a rejection detail."""

    row: dict
    features: dict | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


def ingest_file(task: FileTask) -> FileResult:
    """Validate, hash, decode and measure one file. Never raises for bad data.

    The file is read once; its bytes give the sha256 and the decoded pixels, which are passed to
    :func:`pipeline.features.compute_features` when the file is accepted. The whole runs within
    ``task.max_seconds`` (:func:`pipeline.budget.time_budget`); past it the file is ``timeout``.
    """
    try:
        with time_budget(task.max_seconds):
            return _ingest_file(task)
    except FileTimeout as err:
        row = _new_row(task)
        row["reason"] = "timeout"
        return FileResult(row=row, detail=f"{err} (ingest.max_seconds_per_file={task.max_seconds:g})")


def _new_row(task: FileTask) -> dict:
    return {
        "image_id": image_id_for(task.path),
        "path": task.path,
        "label": task.label,
        "patient_id": task.patient_id,
        "sha256": "",
        "width": None,
        "height": None,
        "channels": None,
        "bit_depth": None,
        "format": "",
        "status": STATUS_REJECTED,
        "reason": "",
    }


def _ingest_file(task: FileTask) -> FileResult:
    row = _new_row(task)
    full = Path(task.root) / task.path

    def reject(reason: str, detail: str) -> FileResult:
        row["reason"] = reason
        return FileResult(row=row, detail=detail)

    try:
        if _is_symlink_loop(full):
            return reject("unreadable", "symlink loop; not followed")
        if full.is_symlink() and not full.resolve().is_relative_to(Path(task.root).resolve()):
            return reject("unreadable", f"symlink to {full.resolve()} outside the data root; not followed")
        size = full.stat().st_size
        if size > task.max_file_bytes:
            return reject(
                "too_large", f"file is {size / 2**20:.1f} MB > max_file_mb={task.max_file_bytes / 2**20:g}"
            )
        data = full.read_bytes()
    except OSError as err:
        return reject("unreadable", f"cannot read file: {err.strerror or err}")
    row["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, task.max_pixels, task.multi_frame, name=full.name)  # type: ignore[arg-type]
    except ImageRejected as err:
        row.update(format=err.format, width=err.width, height=err.height)
        return reject(err.reason, err.detail)
    del data
    row.update(
        width=image.width,
        height=image.height,
        channels=image.channels,
        bit_depth=image.bit_depth,
        format=image.format,
    )
    row.update({f"{DICOM_PREFIX}{k}": v for k, v in image.tags.items()})
    if is_missing(row["patient_id"]):
        if image.patient_id:
            row["patient_id"] = image.patient_id
        elif task.patient_from_stem:
            row["patient_id"] = Path(task.path).stem
    if not task.has_label:
        return reject(
            "missing_label",
            "file not listed in the labels table"
            if not task.patient_from_stem
            else "file is not inside a class folder",
        )
    if is_missing(row["label"]):
        return reject("unknown_label", f"empty label {row['label']!r}")
    if task.classes is not None and row["label"] not in task.classes:
        return reject("unknown_label", f"label {row['label']!r} is not one of {list(task.classes)}")
    own_group = False
    if is_missing(row["patient_id"]):
        if task.missing_patient_id == "reject":
            return reject("missing_patient", "empty patient_id and no DICOM PatientID")
        row["patient_id"], own_group = OWN_GROUP_PREFIX + row["image_id"], True

    from pipeline.features import compute_features  # owned by quality; imported in the worker

    try:
        features = compute_features(image.pixels, image.bit_depth, hashes=task.hashes)
    except Exception as err:  # noqa: BLE001  (a bad feature must not stop the stage)
        log.warning("compute_features failed on %s", task.path, exc_info=True)
        return reject("features_failed", f"{type(err).__name__}: {err}")
    row["status"] = STATUS_OK
    return FileResult(
        row=row, features={"image_id": row["image_id"], **features}, extra={"own_group": own_group}
    )


# ------------------------------------------------------------------------------ the stage


@dataclass
class IngestResult:
    """What the ingest stage writes."""

    manifest: pd.DataFrame  # MANIFEST_COLUMNS + extra table columns, one row per file found
    features: pd.DataFrame | None  # image_id + features, ok rows only (None: streamed to features_out)
    rejected: pd.DataFrame  # image_id, path, reason, detail
    metrics: dict


def build_tasks(
    root: str | Path, labels: str | Path | None, params: IngestParams, hashes: tuple[str, ...] = ("phash",)
) -> tuple[list[FileTask], pd.DataFrame]:
    """Decide the files and their labels (no image is opened).

    Returns:
        The tasks (sorted by path) and a DataFrame of extra table columns indexed by
        ``image_path`` (empty without a table).

    Raises:
        ValueError, FileNotFoundError: For a bad labels table or root (see :func:`read_labels_table`).
    """
    root = Path(root)
    on_disk = scan_files(root, params.extensions)
    common = {
        "root": str(root),
        "max_pixels": params.max_pixels,
        "max_file_bytes": int(params.max_file_mb * 2**20),
        "multi_frame": params.multi_frame,
        "classes": tuple(params.classes) if params.classes is not None else None,
        "hashes": tuple(hashes),
        "max_seconds": params.max_seconds_per_file,
        "missing_patient_id": params.missing_patient_id,
    }
    tasks: list[FileTask] = []
    if labels is None:
        folders = [rel.split("/")[0] for rel in on_disk if "/" in rel]
        rename = resolve_label_variants(folders, params.classes, f"{root} (class folders)")
        for rel in on_disk:
            parts = rel.split("/")
            tasks.append(
                FileTask(
                    path=rel,
                    label=rename.get(parts[0], parts[0]) if len(parts) > 1 else "",
                    has_label=len(parts) > 1,
                    patient_from_stem=True,
                    **common,
                )
            )
        return tasks, pd.DataFrame(index=pd.Index([], name="image_path"))
    table = read_labels_table(labels, root)
    rename = resolve_label_variants(table["label"], params.classes, str(labels))
    table["label"] = table["label"].map(lambda lab: rename.get(lab, lab))
    listed = set(table["image_path"])
    for rec in table[list(REQUIRED_COLUMNS)].itertuples(index=False):
        tasks.append(FileTask(path=rec.image_path, label=rec.label, patient_id=rec.patient_id, **common))
    for rel in on_disk:
        if rel not in listed:
            tasks.append(FileTask(path=rel, has_label=False, **common))
    tasks.sort(key=lambda t: t.path)
    extras = table.drop(columns=["label", "patient_id"]).set_index("image_path")
    return tasks, extras


def ingest(
    root: str | Path,
    labels: str | Path | None,
    params: IngestParams,
    executor: ExecutorParams | None = None,
    hashes: tuple[str, ...] = ("phash",),
    features_out: str | Path | None = None,
) -> IngestResult:
    """Run ingest over a data root (see the module docstring for the semantics).

    Args:
        root: The data root.
        labels: Labels table, or None for a class-per-folder tree.
        params: The ``ingest`` params.
        executor: Where per-file work runs (None = in-process).
        hashes: The imagededup hash(es) to store in the features table (``dedup.hash_method``;
            each costs ~0.1-0.2 ms per image, so only what dedup reads is computed).
        features_out: Write the features table to this parquet file chunk by chunk as images are
            measured (the result's ``features`` is then None), so it is never whole in memory
            (~3 KB per image); the file appears only if ingest completes, accounting included.

    Returns:
        The :class:`IngestResult`.

    Raises:
        ValueError, FileNotFoundError: For a bad labels table or data root.
        RuntimeError: If the manifest does not hold every file found exactly once (a bug).
    """
    tasks, extras = build_tasks(root, labels, params, hashes)
    _warm_up()
    log.info("ingest: %d files under %s (%s)", len(tasks), root, labels or "class-per-folder")
    rows, features, rejected = [], [], []
    n_own_group = 0
    no_features = pd.DataFrame({"image_id": pd.Series([], dtype=str)})
    stream = parquet_stream(features_out, no_features) if features_out is not None else nullcontext(None)
    with stream as append:
        keep = append or features.append  # to the file, or kept for the result
        for chunk in map_chunks(ingest_file, tasks, executor, desc="ingest"):
            ok = [res.features for res in chunk if res.features is not None]
            if ok:  # columnar per chunk: a few times smaller than one dict per image
                keep(pd.DataFrame(ok))
            for res in chunk:
                rows.append(res.row)
                n_own_group += bool(res.extra.get("own_group"))
                if res.features is None:
                    r = res.row
                    rejected.append(
                        {
                            "image_id": r["image_id"],
                            "path": r["path"],
                            "reason": r["reason"],
                            "detail": res.detail,
                        }
                    )
        manifest = _manifest_frame(rows, extras)
        _check_accounting(manifest, tasks)  # raises inside the block: no features file then
    feats = None
    if features_out is None:
        feats = pd.concat(features, ignore_index=True) if features else no_features
    del features
    rejected_df = pd.DataFrame(rejected, columns=["image_id", "path", "reason", "detail"])
    metrics = ingest_metrics(manifest)
    metrics["n_own_patient"] = n_own_group
    if n_own_group:
        log.warning(
            "ingest: %d readable image(s) have no patient id; each is its own patient "
            "(ingest.missing_patient_id: own_group), so patient-level leakage control is not possible "
            "for them (near-duplicate links still join them)",
            n_own_group,
        )
    log.info(
        "ingest: %d ok, %d rejected %s",
        metrics["n_ok"],
        metrics["n_rejected"],
        {k: v for k, v in metrics["rejected_by_reason"].items() if v},
    )
    return IngestResult(manifest=manifest, features=feats, rejected=rejected_df, metrics=metrics)


def _warm_up() -> None:
    """Import and run the feature code once here (scipy, OpenCV, the one-time check of Pillow's
    resampling order), so forked pool workers inherit it instead of each redoing it."""
    from pipeline.features import compute_features

    compute_features(np.zeros((8, 8), np.uint8), 8)


def _manifest_frame(rows: list[dict], extras: pd.DataFrame) -> pd.DataFrame:
    tag_cols = sorted({k for r in rows for k in r if k.startswith(DICOM_PREFIX)})
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + tag_cols)
    manifest[tag_cols] = manifest[tag_cols].fillna("").astype(str)
    for col in ("width", "height", "channels", "bit_depth"):
        manifest[col] = pd.array(manifest[col], dtype="Int64")
    for col in ("image_id", "path", "label", "patient_id", "sha256", "format", "status", "reason"):
        manifest[col] = manifest[col].astype(str)
    if len(extras.columns):
        # a labels-table column wins over a DICOM field of the same name
        manifest = manifest.drop(columns=[c for c in tag_cols if c in extras.columns])
        extra = extras.reindex(manifest["path"]).reset_index(drop=True).fillna("")
        manifest = pd.concat([manifest, extra], axis=1)
    return manifest


def _check_accounting(manifest: pd.DataFrame, tasks: list[FileTask]) -> None:
    expected = [image_id_for(t.path) for t in tasks]
    got = manifest["image_id"].tolist()
    dups = [k for k, n in Counter(got).items() if n > 1]
    if dups or sorted(got) != sorted(expected):
        missing = sorted(set(expected) - set(got))[:5]
        raise RuntimeError(
            f"ingest accounting: expected each of {len(expected)} files once, got {len(got)} rows "
            f"(duplicates {dups[:5]}, missing {missing})"
        )


def ingest_metrics(manifest: pd.DataFrame) -> dict:
    """``{"n_files", "n_ok", "n_rejected", "rejected_by_reason": {reason: count}}`` (every reason listed)."""
    status = manifest["status"]
    rejected = manifest.loc[status == STATUS_REJECTED, "reason"]
    by_reason = dict.fromkeys(REASONS, 0)
    by_reason.update(Counter(rejected))
    n_ok, n_rej = int((status == STATUS_OK).sum()), int(len(rejected))
    if n_ok + n_rej != len(manifest):
        raise RuntimeError(f"ingest accounting: {n_ok} ok + {n_rej} rejected != {len(manifest)} files")
    return {"n_files": len(manifest), "n_ok": n_ok, "n_rejected": n_rej, "rejected_by_reason": by_reason}
