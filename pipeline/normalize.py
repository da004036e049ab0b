"""Fixed-size arrays per split and a pixel normalizer fitted on the train split only.

Storage (``data/processed/``, written by :func:`build_processed`):

* ``{train,val,test}.npy``: ``(N, H, W, C)`` (NHWC), ``H == W == image_size``, ``C`` 1 or 3,
  dtype ``uint8`` (or ``uint16`` for 16-bit sources with ``keep_uint16``). Raw intensities:
  normalization is *not* baked in, so the arrays stay compact and a new normalizer needs no
  re-decode. Written by streaming decoded chunks into a ``np.lib.format.open_memmap`` file on
  a temp path (mapped one chunk window at a time, so the resident set does not grow with the
  number of images), then renamed into place.
* ``{split}.parquet``: row ``i`` of the array -> ``image_id, label, patient_id, group_id,
  label_index`` (rows sorted by ``image_id``).
* ``meta.json``: ``classes`` (sorted; ``label_index`` indexes it), ``channels``,
  ``image_size``, ``dtype``, ``max_value`` (full scale of the stored values), ``aspect``,
  ``n_images`` per split.
* ``normalizer.json``: the fitted :class:`pipeline.processed.Normalizer` (its ``to_dict``).

Reading these files is :class:`pipeline.processed.ProcessedData`'s job; this module writes them.

Resizing: ``aspect`` ``pad`` (default: scale the longer side to ``image_size`` and pad the
shorter one with black, centred; nothing is cut off and anatomy keeps its proportions),
``center_crop`` (scale the shorter side, crop the centre; can cut off findings at the border)
or ``stretch`` (ignore the aspect ratio). Area interpolation when shrinking, bilinear when
enlarging.

Channels: ``auto`` stores 1 channel when every included image is grayscale and 3 otherwise
(gray -> RGB by repetition; RGB -> gray by ITU-R 601 luma when ``channels: 1``).

16-bit sources: the stored range of the dataset (smallest ``2**b - 1``, b in 10/12/14/16,
holding the 99.5th percentile of the images' maxima, from ``features.parquet``) is the full
scale; with ``keep_uint16`` the values are stored as they are (``max_value`` = that range),
otherwise they are scaled to 0..255.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import SPLITS, included
from pipeline.errors import InputError
from pipeline.params import ExecutorParams, NormalizeParams
from pipeline.processed import EPS, MODES, Normalizer

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["image_id", "label", "patient_id", "group_id", "label_index"]


# --------------------------------------------------------------------------------------------
# One image: channels, resize, dtype
# --------------------------------------------------------------------------------------------


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """HxW / HxWx3 -> HxWxC with ``C == channels`` (gray <-> RGB as needed), same dtype."""
    import cv2

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return pixels[:, :, None] if channels == 1 else np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {pixels.shape}")
    if channels == 3:
        return pixels
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)[:, :, None]


def resize_image(pixels: np.ndarray, image_size: int, aspect: str) -> np.ndarray:
    """Resize an HxWxC image to ``image_size x image_size x C`` with the aspect policy.

    Args:
        pixels: HxWxC uint8/uint16 array.
        image_size: Output side length.
        aspect: ``pad`` (letterbox with 0, centred), ``center_crop`` or ``stretch``.

    Returns:
        ``(image_size, image_size, C)`` array of the same dtype.
    """
    import cv2

    h, w, c = pixels.shape
    if aspect == "stretch":
        new_h = new_w = image_size
    elif aspect == "pad":
        scale = image_size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    elif aspect == "center_crop":
        scale = image_size / min(h, w)
        new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    else:
        raise InputError(f"normalize.aspect: expected one of pad, center_crop, stretch; got {aspect!r}")
    interp = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(pixels), (new_w, new_h), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    if aspect == "center_crop":
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        out = out[top : top + image_size, left : left + image_size]
    elif aspect == "pad":
        canvas = np.zeros((image_size, image_size, c), dtype=pixels.dtype)
        top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = out
        out = canvas
    return np.ascontiguousarray(out)


def to_stored_dtype(pixels: np.ndarray, dtype: str, source_max: int, target_max: int) -> np.ndarray:
    """Map values in ``[0, source_max]`` linearly onto ``[0, target_max]`` in ``dtype`` (rounded, clipped).

    ``source_max`` is 255 for 8-bit sources and the dataset's stored range for 16-bit ones; a
    16-bit source kept as uint16 (``source_max == target_max``) is unchanged apart from clipping.
    """
    if source_max == target_max:
        return np.minimum(pixels, target_max).astype(dtype)
    x = np.minimum(pixels.astype(np.float32), source_max) * (target_max / source_max)
    return np.rint(x).astype(dtype)


@dataclass(frozen=True)
class _Job:
    path: str
    max_pixels: int
    multi_frame: str
    image_size: int
    aspect: str
    channels: int
    dtype: str
    source_max: int
    target_max: int


def _load_one(job: _Job) -> tuple[np.ndarray | None, str]:
    """Decode + convert one file (module-level: runs in worker processes). Never raises."""
    from pipeline.images import ImageRejected, read_image

    try:
        img = read_image(Path(job.path), job.max_pixels, job.multi_frame)
        x = to_channels(img.pixels, job.channels)
        x = resize_image(x, job.image_size, job.aspect)
        return to_stored_dtype(x, job.dtype, job.source_max, job.target_max), ""
    except ImageRejected as err:
        return None, f"{err.reason}: {err.detail}"
    except Exception as err:  # noqa: BLE001  (a worker reports, the caller raises with the path)
        return None, f"{type(err).__name__}: {err}"


# --------------------------------------------------------------------------------------------
# Streaming writer and train statistics
# --------------------------------------------------------------------------------------------


class NpyStreamWriter:
    """Fill a ``.npy`` file chunk by chunk; at most one chunk is mapped at a time.

    The file is created with :func:`numpy.lib.format.open_memmap` (header + full size); each
    :meth:`write` maps only the rows it writes, flushes and unmaps them, so written pages do not
    accumulate in the process's resident set (they would with one long-lived memmap).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
        self.offset = int(mm.offset)
        del mm
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.n_written = 0

    def write(self, batch: np.ndarray) -> None:
        n = len(batch)
        if n == 0:
            return
        if self.n_written + n > self.shape[0]:
            raise ValueError(
                f"{self.path}: writing {n} rows at {self.n_written} overflows {self.shape[0]} rows"
            )
        window = np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r+",
            offset=self.offset + self.n_written * self.row_bytes,
            shape=(n, *self.shape[1:]),
        )
        window[:] = batch
        window.flush()
        del window
        self.n_written += n


class PixelStats:
    """Streaming per-channel statistics of integer NHWC batches: sums and a full histogram.

    The histogram has one bin per integer value (256 for uint8, ``max_value + 1`` for uint16),
    so percentiles are exact.
    """

    def __init__(self, channels: int, max_value: int) -> None:
        self.channels, self.max_value = channels, int(max_value)
        self.n_images = 0
        self.hist = np.zeros((channels, self.max_value + 1), dtype=np.int64)
        self.sum = np.zeros(channels, dtype=np.float64)
        self.sumsq = np.zeros(channels, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add an (N, H, W, C) integer batch."""
        if batch.ndim != 4 or batch.shape[3] != self.channels:
            raise ValueError(f"expected (N, H, W, {self.channels}) batch, got {batch.shape}")
        self.n_images += batch.shape[0]
        for c in range(self.channels):
            v = np.minimum(batch[..., c].ravel(), self.max_value)
            h = np.bincount(v, minlength=self.max_value + 1)
            self.hist[c] += h
            vals = np.arange(self.max_value + 1, dtype=np.float64)
            self.sum[c] += float(h @ vals)
            self.sumsq[c] += float(h @ (vals * vals))

    def percentile(self, q: float) -> np.ndarray:
        """Per-channel ``q``-quantile (q in [0, 1]), inverted-CDF definition (an observed value)."""
        cdf = np.cumsum(self.hist, axis=1)
        total = cdf[:, -1:]
        return np.array(
            [np.searchsorted(cdf[c], max(q * total[c, 0], 1), side="left") for c in range(self.channels)],
            dtype=np.float64,
        )


def fit_normalizer(
    batches: Iterable[np.ndarray] | PixelStats,
    mode: str,
    max_value: int,
    channels: int,
    percentile_range: tuple[float, float] = (0.005, 0.995),
) -> Normalizer:
    """Fit the normalizer on train pixels.

    Args:
        batches: (N, H, W, C) integer batches of the *train* split (or a filled
            :class:`PixelStats`).
        mode: One of ``scale01, center, standardize, percentile, per_image_zscore``.
        max_value: Full scale of the stored values (255, or the 16-bit stored range).
        channels: C.
        percentile_range: ``(p_low, p_high)`` in [0, 1] for ``percentile``.

    Returns:
        The :class:`Normalizer` (``mean, std, low, high`` per channel, raw units).

    Raises:
        ValueError: Unknown mode or no train pixels.
    """
    if mode not in MODES:
        raise InputError(f"normalize.mode: expected one of {list(MODES)}, got {mode!r}")
    if isinstance(batches, PixelStats):
        stats = batches
    else:
        stats = PixelStats(channels, max_value)
        for b in batches:
            stats.update(b)
    n_pix = int(stats.hist[0].sum())
    if n_pix == 0:
        raise InputError("normalize: cannot fit the normalizer: the train split has no images")
    mean = stats.sum / n_pix
    std = np.sqrt(np.maximum(stats.sumsq / n_pix - mean**2, 0.0))
    if (std < EPS).any():
        log.warning("normalize: a channel of the train pixels is constant; its std is set to 1")
        std = np.where(std < EPS, 1.0, std)
    low = stats.percentile(percentile_range[0])
    high = stats.percentile(percentile_range[1])
    high = np.where(high <= low, low + 1.0, high)
    return Normalizer(
        mode=mode,
        max_value=float(max_value),
        channels=int(channels),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
        percentile_range=(float(percentile_range[0]), float(percentile_range[1])),
        n_images=int(stats.n_images),
        n_pixels=n_pix,
        fitted_on="train",
    )


# --------------------------------------------------------------------------------------------
# The stage's work
# --------------------------------------------------------------------------------------------


def stored_range(features: pd.DataFrame | None, image_ids: Iterable[str]) -> int:
    """Full scale of 16-bit sources: smallest ``2**b - 1`` (b in 10, 12, 14, 16) holding the
    99.5th percentile of the images' maxima (``features.max * features.full_scale``); 65535
    when unknown."""
    if features is None or not {"max", "full_scale"} <= set(features.columns):
        return 65535
    f = features[features["image_id"].astype(str).isin(set(image_ids))]
    f = f[f["full_scale"] > 255]
    if f.empty:
        return 65535
    raw_max = float((f["max"] * f["full_scale"]).quantile(0.995))
    return next((2**b - 1 for b in (10, 12, 14, 16) if raw_max <= 2**b - 1), 65535)


def build_index(
    manifest: pd.DataFrame, curated: pd.DataFrame, splits: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """Join the included rows with their split, labels and groups; sorted by (split, image_id).

    Returns:
        ``(table, classes)``: columns ``image_id, path, label, patient_id, group_id, split,
        label_index, channels, bit_depth`` (and ``width, height`` when the manifest has them);
        sorted class names.
    """
    cur = curated.loc[included(curated), ["image_id", "group_id"]]
    man_cols = ["image_id", "path", "label", "patient_id", "channels", "bit_depth"]
    man_cols += [c for c in ("width", "height") if c in manifest.columns]  # for image_size: auto
    df = cur.merge(manifest[man_cols], on="image_id", how="left", validate="one_to_one")
    df = df.merge(splits[["image_id", "split"]], on="image_id", how="left", validate="one_to_one")
    if df["split"].isna().any() or df["path"].isna().any():
        bad = df.loc[df["split"].isna() | df["path"].isna(), "image_id"].head(5).tolist()
        raise ValueError(f"normalize: included image(s) without a split or manifest row: {bad}")
    for col in ("image_id", "path", "label", "patient_id", "group_id", "split"):
        df[col] = df[col].astype(str)
    classes = sorted(df["label"].unique())
    df["label_index"] = df["label"].map({c: i for i, c in enumerate(classes)}).astype(np.int64)
    order = {s: i for i, s in enumerate(SPLITS)}
    df = df.sort_values(
        ["split", "image_id"], key=lambda s: s.map(order) if s.name == "split" else s, kind="stable"
    )
    return df.reset_index(drop=True), classes


def _store_split(
    jobs: list[_Job],
    paths: pd.Series,
    out: Path,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    executor: ExecutorParams | None,
    stats: PixelStats | None,
    desc: str,
    root: Path,
) -> None:
    """Decode ``jobs`` in parallel chunks and stream them into the ``.npy`` file ``out`` (atomically);
    train batches also feed ``stats``.

    Raises:
        InputError: An image no longer decodes (ingest is stale).
    """
    from pipeline.io import atomic_path
    from pipeline.parallel import map_chunks

    with atomic_path(out) as tmp:
        writer = NpyStreamWriter(tmp, shape, dtype)
        start = 0
        for results in map_chunks(_load_one, jobs, executor, desc=desc):
            failed = [(paths.iloc[start + i], err) for i, (arr, err) in enumerate(results) if arr is None]
            if failed:
                raise InputError(
                    f"normalize: {len(failed)} included image(s) under {root} no longer decode, e.g. "
                    f"{failed[0][0]}: {failed[0][1]}; re-run ingest"
                )
            batch = np.stack([arr for arr, _ in results])
            writer.write(batch)
            if stats is not None:
                stats.update(batch)
            start += len(results)
        if writer.n_written != shape[0]:
            raise ValueError(f"normalize: wrote {writer.n_written} of {shape[0]} images to {out}")


# image_size: auto never goes above these: a CPU trains a small CNN at 64 px in seconds per epoch; a
# GPU affords the 224-256 px that ImageNet-pretrained backbones were trained at.
AUTO_SIZE_CAP = {"cpu": 64, "cuda": 256}
AUTO_SIZE_STEP = 32


def choose_image_size(requested: int | str, table: pd.DataFrame, on_cuda: bool) -> tuple[int, str]:
    """The side of the stored square images: ``requested`` when it is a number, else from the data.

    ``auto``: the median short side (``min(width, height)``) of the included images, rounded down to
    a multiple of 32 (never upsampling the typical image), capped by :data:`AUTO_SIZE_CAP` for the
    device training will use; images smaller than 32 px keep their median short side (at least 8).

    Returns:
        ``(size, reason)``; the reason goes to ``metrics/normalize.json``.
    """
    if requested != "auto":
        return int(requested), "normalize.image_size"
    if not {"width", "height"} <= set(table.columns) or table.empty:
        cap = AUTO_SIZE_CAP["cuda" if on_cuda else "cpu"]
        return cap, f"auto: no image dimensions, the {'cuda' if on_cuda else 'cpu'} cap"
    short = np.minimum(pd.to_numeric(table["width"]), pd.to_numeric(table["height"]))
    median = int(np.median(short))
    device = "cuda" if on_cuda else "cpu"
    stepped = median // AUTO_SIZE_STEP * AUTO_SIZE_STEP or max(8, median)
    size = min(stepped, AUTO_SIZE_CAP[device])
    return size, f"auto: median short side {median} px, {device} cap {AUTO_SIZE_CAP[device]} px"


# Long on purpose: the stage's one streaming pass (layout choice, per-split writes, train statistics,
# meta) in order; the per-split work is _store_split, what remains is bookkeeping the caller reads.
def build_processed(
    manifest: pd.DataFrame,
    curated: pd.DataFrame,
    splits: pd.DataFrame,
    root: str | Path,
    out_dir: str | Path,
    params: NormalizeParams,
    executor: ExecutorParams | None = None,
    max_pixels: int = 100_000_000,
    multi_frame: str = "first",
    features: pd.DataFrame | None = None,
    on_cuda: bool = False,
) -> dict[str, Any]:
    """Decode, resize and store every included image per split; fit the normalizer on train.

    Writes ``{split}.npy``, ``{split}.parquet``, ``meta.json`` and ``normalizer.json`` under
    ``out_dir`` (each atomically: temp path, then rename). Memory stays flat: images stream
    through :func:`pipeline.parallel.map_chunks` into :class:`NpyStreamWriter`, and train pixels
    into :class:`PixelStats`.

    Args:
        manifest: ``image_id, path, label, patient_id, channels, bit_depth`` (+ others).
        curated: ``image_id, included, group_id``.
        splits: ``image_id, split`` for every included row.
        root: Data root the manifest paths are relative to.
        out_dir: Output folder (created).
        params: The ``normalize`` params section.
        executor: Where decoding runs (``None``: in-process).
        max_pixels, multi_frame: Passed to ``pipeline.images.read_image`` (ingest params).
        features: Optional ``features.parquet`` (``max``, ``full_scale``) for the 16-bit stored range.
        on_cuda: Training will run on a CUDA GPU (``image_size: auto`` may then pick a larger size).

    Returns:
        The metrics dict (``metrics/normalize.json``).

    Raises:
        ValueError: An included image no longer decodes (names the file and why), or the train
            split is empty.
    """
    from pipeline.io import write_json, write_parquet

    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, classes = build_index(manifest, curated, splits)
    channels = (
        (3 if (pd.to_numeric(table["channels"]) == 3).any() else 1)
        if params.channels == "auto"
        else int(params.channels)
    )
    is16 = pd.to_numeric(table["bit_depth"]) > 8
    dtype = "uint16" if params.keep_uint16 and is16.any() else "uint8"
    source_max = stored_range(features, table.loc[is16, "image_id"]) if is16.any() else 255
    max_value = source_max if dtype == "uint16" else 255
    size, size_reason = choose_image_size(params.image_size, table, on_cuda)
    log.info("normalize: image_size %d (%s)", size, size_reason)
    log.info(
        "normalize: %d images, %d classes, %d channel(s), %s, %dx%d, aspect=%s",
        len(table),
        len(classes),
        channels,
        dtype,
        size,
        size,
        params.aspect,
    )

    stats = PixelStats(channels, max_value)
    per_split: dict[str, dict] = {}
    for split in SPLITS:
        part = table[table["split"] == split].reset_index(drop=True)
        jobs = [
            _Job(
                str(root / p),
                max_pixels,
                multi_frame,
                size,
                params.aspect,
                channels,
                dtype,
                source_max if b > 8 else 255,
                max_value,
            )
            for p, b in zip(part["path"], pd.to_numeric(part["bit_depth"]), strict=True)
        ]
        _store_split(
            jobs, part["path"], out_dir / f"{split}.npy", (len(part), size, size, channels), np.dtype(dtype),
            executor, stats if split == "train" else None, f"normalize {split}", root,
        )  # fmt: skip
        write_parquet(part[INDEX_COLUMNS], out_dir / f"{split}.parquet")
        per_split[split] = {
            "n_images": len(part),
            "shape": [len(part), size, size, channels],
            "class_counts": {c: int((part["label"] == c).sum()) for c in classes},
        }
    normalizer = fit_normalizer(stats, params.mode, max_value, channels, tuple(params.percentile_range))
    meta = {
        "classes": classes,
        "channels": channels,
        "image_size": size,
        "dtype": dtype,
        "max_value": int(max_value),
        "aspect": params.aspect,
        "layout": "NHWC",
        "n_images": {s: per_split[s]["n_images"] for s in SPLITS},
    }
    write_json(meta, out_dir / "meta.json")
    write_json(normalizer.to_dict(), out_dir / "normalizer.json")
    return {
        **{k: meta[k] for k in ("channels", "image_size", "dtype", "max_value", "aspect")},
        "image_size_reason": size_reason,
        "n_classes": len(classes),
        "mode": params.mode,
        "splits": per_split,
        "normalizer": {k: normalizer.to_dict()[k] for k in ("mean", "std", "low", "high", "n_images")},
        "bytes": int(sum(os.path.getsize(out_dir / f"{s}.npy") for s in SPLITS)),
    }
