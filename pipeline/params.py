"""Typed, validated parameters: one pydantic model per ``params.yaml`` section.

Every model forbids unknown keys, so a typo in ``params.yaml`` fails at load time with the key
path in the message (``params.yaml: quality.dark_threshold: extra inputs are not permitted``)
instead of being silently ignored. Stage scripts call :func:`load_params` and read only their
own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base for every params section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    """Where the images and the labels table are."""

    root: str = Field(description="Folder of images; paths in the labels table are relative to it.")
    labels: str | None = Field(
        default=None, description="Labels table (CSV). null = class-per-folder tree under root."
    )
    truth: str | None = Field(
        default=None, description="Ground-truth file of planted problems (demo data only)."
    )


class ExecutorParams(Section):
    """How per-image work is run: a local process pool or a Dask cluster."""

    kind: Literal["process", "dask"] = "process"
    n_workers: PositiveInt | None = Field(default=None, description="null = number of CPU cores.")
    chunk_size: PositiveInt = 64
    address: str | None = Field(
        default=None, description="Dask scheduler address; null with kind=dask starts a LocalCluster."
    )


class DemoParams(Section):
    """The embedded synthetic dataset (DESIGN.md section 6)."""

    classes: list[str] = Field(default_factory=lambda: ["normal", "nodule", "effusion"], min_length=2)
    n_patients: PositiveInt = 320
    images_per_patient_range: tuple[PositiveInt, PositiveInt] = (1, 8)
    image_size: Annotated[int, Field(ge=32)] = 128
    n_exact_duplicates: Annotated[int, Field(ge=0)] = 32
    n_near_duplicates: Annotated[int, Field(ge=0)] = 64
    n_cross_patient_duplicates: Annotated[int, Field(ge=0)] = 12
    n_blurry: Annotated[int, Field(ge=0)] = 16
    n_dark: Annotated[int, Field(ge=0)] = 16
    n_overexposed: Annotated[int, Field(ge=0)] = 16
    n_blank: Annotated[int, Field(ge=0)] = 16
    n_odd_size: Annotated[int, Field(ge=0)] = 12
    n_corrupt: Annotated[int, Field(ge=0)] = 6
    n_not_an_image: Annotated[int, Field(ge=0)] = 4
    flipped_label_fraction: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.05

    @field_validator("images_per_patient_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"expected [low, high] with low <= high, got {list(v)}")
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        return v


class IngestParams(Section):
    """Scanning and validating the input files."""

    extensions: list[str] = Field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"],
        description="File extensions scanned in a class-per-folder tree (case-insensitive).",
    )
    max_pixels: PositiveInt = Field(
        default=100_000_000, description="Images whose header claims more pixels are rejected unread."
    )
    max_file_mb: Annotated[float, Field(gt=0)] = 512.0
    multi_frame: Literal["first", "reject"] = Field(
        default="first", description="Multi-frame TIFF/GIF/DICOM: keep the first frame or reject."
    )


class QualityParams(Section):
    """Low-quality image detection. Scores are in [0, 1], lower is worse; thresholds on scores."""

    dark_threshold: Fraction = 0.1
    overexposed_threshold: Fraction = 0.1
    blurry_threshold: Fraction = 0.1
    low_information_threshold: Fraction = 0.1
    low_contrast_threshold: Fraction = 0.1
    odd_size_threshold: Fraction = 0.1
    odd_aspect_ratio_threshold: Fraction = 0.1
    robust_z: Annotated[float, Field(gt=0)] = Field(
        default=4.0, description="How many robust standard deviations from the median is 'odd'."
    )
    size_tolerance: Fraction = Field(
        default=0.25, description="Relative size difference from the typical size that is still normal."
    )
    n_contact_sheet: PositiveInt = 24


class DedupParams(Section):
    """Exact and near-duplicate detection."""

    hash_method: Literal["phash", "dhash", "whash", "ahash"] = "phash"
    max_distance: Annotated[int, Field(ge=0, le=64)] = 10
    confirm_similarity: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.9
    thumbnail_size: Annotated[int, Field(ge=8, le=128)] = 32
    n_pairs_sheet: PositiveInt = 24


QUALITY_ISSUES = (
    "dark",
    "overexposed",
    "blurry",
    "low_information",
    "low_contrast",
    "odd_size",
    "odd_aspect_ratio",
    "channel_mismatch",
)


class CurateParams(Section):
    """Exclusion policy."""

    exclude_issues: list[str] = Field(
        default_factory=lambda: ["low_information", "blurry", "dark", "overexposed", "channel_mismatch"],
        description="Quality issues that exclude an image.",
    )
    keep_one_per_duplicate_cluster: bool = True
    exclude_label_conflicts: bool = True

    @field_validator("exclude_issues")
    @classmethod
    def _known_issues(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(QUALITY_ISSUES))
        if unknown:
            raise ValueError(f"unknown quality issue(s) {unknown}; expected some of {list(QUALITY_ISSUES)}")
        return v


class SplitParams(Section):
    """Stratified, group-level train/val/test split."""

    train_fraction: Fraction = 0.7
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitParams:
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train_fraction + val_fraction + test_fraction must be 1, got {total:.6g}"
            )
        if self.train_fraction == 0 or self.test_fraction == 0:
            raise ValueError("train_fraction and test_fraction must be > 0")
        return self


class NormalizeParams(Section):
    """Resizing and pixel normalization (fitted on train only)."""

    image_size: Annotated[int, Field(ge=8, le=2048)] = 64
    aspect: Literal["pad", "center_crop", "stretch"] = "pad"
    mode: Literal["scale01", "center", "standardize", "percentile", "per_image_zscore"] = "standardize"
    percentile_range: tuple[Fraction, Fraction] = (0.005, 0.995)
    keep_uint16: bool = False
    channels: Literal["auto", 1, 3] = "auto"

    @field_validator("percentile_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"expected [low, high] with low < high, got {list(v)}")
        return v


class AugmentParams(Section):
    """Domain-aware augmentation policy and batch-level regularization."""

    domain: Literal["chest_xray", "dermoscopy", "histopathology", "fundus", "generic"] = "chest_xray"
    transforms: dict[str, dict] | None = Field(
        default=None,
        description="Override the preset: {TransformName: {arg: value}}; null = the domain preset.",
    )
    allow_unsafe: bool = False
    horizontal_flip: bool = False
    mixup_alpha: Annotated[float, Field(ge=0)] = 0.2
    cutmix_alpha: Annotated[float, Field(ge=0)] = 0.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.05
    n_preview_images: PositiveInt = 6
    n_preview_variants: PositiveInt = 6


class ModelParams(Section):
    """Network architecture."""

    arch: Literal["small_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b0"] = "small_cnn"
    weights_path: str | None = Field(
        default=None, description="Local file of pretrained weights; never downloaded."
    )
    width: PositiveInt = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2


class LabelIssuesParams(Section):
    """Out-of-fold label-issue finding with cleanlab."""

    n_folds: Annotated[int, Field(ge=2)] = 5
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["train", "val"])
    auditor: Literal["auto", "cnn", "linear"] = "auto"
    action: Literal["flag", "drop"] = "flag"
    cnn_epochs: PositiveInt = 6
    n_top: PositiveInt = 24


class TrainParams(Section):
    """CNN training."""

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    class_weights: bool = False
    patience: PositiveInt = 5
    monitor: Literal["val_balanced_accuracy", "val_auroc", "val_loss"] = "val_balanced_accuracy"
    num_workers: Annotated[int, Field(ge=0)] = 0
    amp: bool = True


class EvaluateParams(Section):
    """Test-set evaluation."""

    n_bootstrap: Annotated[int, Field(ge=0)] = 1000
    ci_level: Annotated[float, Field(gt=0, lt=1)] = 0.95
    n_calibration_bins: Annotated[int, Field(ge=2)] = 10


class ReportParams(Section):
    """The HTML audit report."""

    n_gallery: PositiveInt = 24
    thumbnail_px: PositiveInt = 96


class Params(Section):
    """All of ``params.yaml``."""

    seed: int = 42
    data: DataParams
    executor: ExecutorParams = ExecutorParams()
    demo: DemoParams = DemoParams()
    ingest: IngestParams = IngestParams()
    quality: QualityParams = QualityParams()
    dedup: DedupParams = DedupParams()
    curate: CurateParams = CurateParams()
    split: SplitParams = SplitParams()
    normalize: NormalizeParams = NormalizeParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    label_issues: LabelIssuesParams = LabelIssuesParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {e['msg']}{got_txt}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping.

    Args:
        raw: The parsed YAML mapping.
        source: Name used in error messages (usually the file name).

    Returns:
        The validated, immutable :class:`Params`.

    Raises:
        ValueError: On unknown keys, wrong types or impossible values; the message names every
            offending key path, e.g. ``params.yaml: split.train_fraction: ...``.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_errors(err, source)) from err


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not valid YAML or does not validate (see :func:`parse_params`).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    return parse_params(raw, source=str(path))
