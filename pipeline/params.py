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

    classes: list[Literal["normal", "nodule", "effusion", "cardiomegaly"]] = Field(
        default_factory=lambda: ["normal", "nodule", "effusion"],
        min_length=2,
        description="Classes to draw; each name is a synthetic finding (normal = none).",
    )
    n_patients: PositiveInt = 320
    images_per_patient_range: tuple[PositiveInt, PositiveInt] = Field(
        default=(1, 8), description="[low, high] images per patient, duplicates included."
    )
    image_size: Annotated[int, Field(ge=32)] = Field(
        default=128, description="Side of the usual square image."
    )
    mixed_patient_fraction: Fraction = Field(
        default=0.1, description="Share of patients whose images have independently drawn labels."
    )
    n_exact_duplicates: Annotated[int, Field(ge=0)] = 32
    n_near_duplicates: Annotated[int, Field(ge=0)] = 64
    n_cross_patient_duplicates: Annotated[int, Field(ge=0)] = 12
    n_blurry: Annotated[int, Field(ge=0)] = 16
    n_dark: Annotated[int, Field(ge=0)] = 16
    n_overexposed: Annotated[int, Field(ge=0)] = 16
    n_blank: Annotated[int, Field(ge=0)] = 16
    n_odd_size: Annotated[int, Field(ge=0)] = 8
    n_odd_aspect_ratio: Annotated[int, Field(ge=0)] = 8
    n_corrupt: Annotated[int, Field(ge=0)] = 6
    n_not_an_image: Annotated[int, Field(ge=0)] = 4
    flipped_label_fraction: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        default=0.05, description="Share of the original images whose label is flipped (clean images only)."
    )
    n_outliers_per_subtype: Annotated[int, Field(ge=0)] = Field(
        default=10, description="Images that do not belong, per subtype (lateral, CT, photo, document, ...)."
    )
    shortcut_site_fraction: Fraction = Field(
        default=0.6,
        description="Share of the last class's patients sent to the marked site (0 = no shortcut).",
    )

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

    @model_validator(mode="after")
    def _fits(self) -> DemoParams:
        # The exact check (on the drawn image counts) is in pipeline.demo; this one catches
        # combinations that cannot work whatever is drawn.
        n_max = self.n_patients * self.images_per_patient_range[1]
        n_planted = (
            (self.n_exact_duplicates + self.n_near_duplicates + self.n_cross_patient_duplicates) * 2
            + self.n_blurry
            + self.n_dark
            + self.n_overexposed
            + self.n_blank
            + self.n_odd_size
        )
        n_planted += self.n_odd_aspect_ratio + self.n_corrupt + self.n_not_an_image
        if n_planted > n_max:
            raise ValueError(
                f"the planted problems need at least {n_planted} images but n_patients={self.n_patients} "
                f"x images_per_patient_range[1]={self.images_per_patient_range[1]} allows at most {n_max}"
            )
        return self


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
    classes: list[str] | None = Field(
        default=None,
        description="Allowed labels; other labels are rejected as unknown_label. null = any non-empty label.",
    )

    @field_validator("extensions")
    @classmethod
    def _dotted_extensions(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if not (e.startswith(".") and len(e) > 1)]
        if bad or not v:
            raise ValueError(f"expected a non-empty list of extensions like '.png', got {v}")
        return [e.lower() for e in v]

    @field_validator("classes")
    @classmethod
    def _unique_ingest_classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v) or any(not c.strip() for c in v)):
            raise ValueError(f"expected null or a list of unique, non-empty class names, got {v}")
        return v


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
    channel_mismatch_threshold: Fraction = Field(
        default=0.1,
        description="Flag an image whose channel mode (gray / gray stored as RGB / RGB) is this rare "
        "relative to the dataset's most common mode.",
    )
    size_tolerance: Fraction = Field(
        default=0.25, description="Relative size difference from the typical size that is still normal."
    )
    aspect_tolerance: Fraction = Field(
        default=0.25,
        description="Relative aspect-ratio difference from the typical aspect ratio that is still normal.",
    )
    n_contact_sheet: PositiveInt = 24


class DedupParams(Section):
    """Exact and near-duplicate detection."""

    hash_method: Literal["phash", "dhash", "ahash"] = Field(
        default="phash", description="imagededup hash (a column of features.parquet) used for candidates."
    )
    max_distance: Annotated[int, Field(ge=0, le=64)] = Field(
        default=10, description="Hamming radius for candidates (imagededup's default, 10)."
    )
    confirm_similarity: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        default=0.96, description="Least aligned thumbnail correlation that confirms a candidate."
    )
    align_max_shift: Annotated[int, Field(ge=0, le=8)] = Field(
        default=2, description="Largest shift (thumbnail pixels) tried when aligning two thumbnails."
    )
    align_zooms: list[Annotated[float, Field(ge=1.0, le=1.5)]] = Field(
        default_factory=lambda: [1.0, 1.05, 1.1],
        min_length=1,
        description="Magnifications tried when aligning (a crop of an image is a zoom of it).",
    )
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


class OutliersParams(Section):
    """Images that do not belong in the dataset (pipeline/outliers.py)."""

    threshold: Fraction = Field(default=0.1, description="Flag when outlier_score < threshold.")
    robust_z: Annotated[float, Field(gt=0)] = Field(
        default=4.0, description="Robust SDs of atypicality beyond the median that score 0.1."
    )
    max_orientation_images: Annotated[int, Field(ge=16)] = Field(
        default=2000, description="Most images the self-supervised orientation model learns from."
    )
    min_orientation_accuracy: Annotated[float, Field(ge=0.5, le=1.0)] = Field(
        default=0.95,
        description="Judge a rotation/mirror/inversion only if the model tells it from upright this often.",
    )
    n_gallery: PositiveInt = 24


EXCLUDABLE_ISSUES = (*QUALITY_ISSUES, "outlier")


class CurateParams(Section):
    """Exclusion policy."""

    exclude_issues: list[str] = Field(
        default_factory=lambda: ["low_information", "blurry", "dark", "overexposed", "channel_mismatch"],
        description="Quality issues (and 'outlier') that exclude an image.",
    )
    keep_one_per_duplicate_cluster: bool = True
    exclude_label_conflicts: bool = True

    @field_validator("exclude_issues")
    @classmethod
    def _known_issues(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(EXCLUDABLE_ISSUES))
        if unknown:
            raise ValueError(f"unknown issue(s) {unknown}; expected some of {list(EXCLUDABLE_ISSUES)}")
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
            raise ValueError(f"train_fraction + val_fraction + test_fraction must be 1, got {total:.6g}")
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
    """Domain-aware augmentation policy (pipeline/augment.py PRESETS) and batch-level regularization."""

    domain: Literal["chest_xray", "dermoscopy", "histopathology", "fundus", "generic"] = "chest_xray"
    transforms: dict[str, dict | None] | None = Field(
        default=None,
        description=(
            "Replace the preset: {AlbumentationsClassName: {arg: value}}, applied in order; "
            "null = the domain preset, {} = no augmentation. Forbidden transforms are refused."
        ),
    )
    allow_unsafe: bool = Field(
        default=False,
        description="Use transforms the domain forbids (logged as warnings) instead of failing.",
    )
    horizontal_flip: bool | None = Field(
        default=None,
        description=(
            "null = the domain default (off for chest_xray, on otherwise); true adds HorizontalFlip "
            "(for chest_xray with a logged laterality warning); false removes it."
        ),
    )
    mixup_alpha: Annotated[float, Field(ge=0)] = Field(
        default=0.2, description="Mixup lambda ~ Beta(alpha, alpha); 0 = off."
    )
    cutmix_alpha: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="CutMix lambda ~ Beta(alpha, alpha); 0 = off; both > 0: one per batch, p=0.5.",
    )
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.05, description="Soft target = (1 - s) * one_hot + s / n_classes."
    )
    n_preview_images: PositiveInt = 6
    n_preview_variants: PositiveInt = 6


class ModelParams(Section):
    """Network architecture."""

    arch: Literal["small_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b0"] = "small_cnn"
    weights_path: str | None = Field(
        default=None, description="Local file of pretrained weights; never downloaded."
    )
    width: PositiveInt = Field(default=16, description="small_cnn base width (channels 1x,2x,4x,8x).")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2


class LabelIssuesParams(Section):
    """Out-of-fold label-issue finding with cleanlab."""

    n_folds: Annotated[int, Field(ge=2)] = Field(default=5, description="Folds, grouped by group_id.")
    splits: list[Literal["train", "val"]] = Field(
        default_factory=lambda: ["train", "val"], min_length=1, description="Splits audited (never test)."
    )
    auditor: Literal["auto", "cnn", "linear"] = Field(
        default="auto", description="auto = cnn on CUDA or when cheap enough on CPU, else linear."
    )
    action: Literal["flag", "drop"] = Field(
        default="flag", description="drop = flagged train rows are excluded (reason label_issue)."
    )
    cnn_epochs: PositiveInt = Field(default=14, description="Epochs per fold of the cnn auditor.")
    cnn_cpu_budget: Annotated[int, Field(ge=0)] = Field(
        default=80000,
        description="auto on CPU picks cnn when n_images * n_folds * cnn_epochs * (image_size/64)^2 <= this.",
    )
    linear_c: Annotated[float, Field(gt=0)] = Field(
        default=0.01, description="Inverse L2 strength of the linear auditor's logistic regression."
    )
    n_top: PositiveInt = Field(default=24, description="Issues shown in reports/label_issues/top.png.")

    @field_validator("splits")
    @classmethod
    def _unique_splits(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"splits must be unique, got {v}")
        return v


class ShortcutsParams(Section):
    """The shortcut audit (pipeline/shortcuts.py)."""

    n_bins: Annotated[int, Field(ge=2)] = Field(
        default=8, description="Quantile bins of a numeric attribute with more distinct values."
    )
    n_bootstrap: Annotated[int, Field(ge=0)] = Field(
        default=200, description="Group-bootstrap replicates of each score's interval (0 = none, never flag)."
    )
    ci_level: Annotated[float, Field(gt=0, lt=1)] = 0.95
    min_lift: Fraction = Field(
        default=0.1, description="Least (score - chance) / (1 - chance) that is flagged."
    )
    border_fraction: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        default=0.15, description="Width of the frame the border-only auditor sees, per side."
    )
    n_examples: PositiveInt = 12


class TrainParams(Section):
    """CNN training."""

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    class_weights: bool = False
    patience: PositiveInt = 8
    monitor: Literal["val_balanced_accuracy", "val_auroc", "val_loss"] = "val_balanced_accuracy"
    num_workers: Annotated[int, Field(ge=0)] = 0
    amp: bool = True


class EvaluateParams(Section):
    """Test-set evaluation."""

    n_bootstrap: Annotated[int, Field(ge=0)] = Field(
        default=1000, description="Bootstrap replicates (patients resampled); 0 = no intervals."
    )
    ci_level: Annotated[float, Field(gt=0, lt=1)] = 0.95
    n_calibration_bins: Annotated[int, Field(ge=2)] = 10
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    batch_size: PositiveInt = 256
    subgroups: list[str] = Field(
        default_factory=list, description="Labels-table columns whose groups get their own test metrics."
    )
    subgroup_bins: Annotated[int, Field(ge=2)] = Field(
        default=4, description="Quantile bins of a numeric subgroup column with more distinct values."
    )
    subgroup_edges: dict[str, list[float]] = Field(
        default_factory=dict, description="Bin edges per numeric subgroup column (instead of quantiles)."
    )
    min_subgroup_images: PositiveInt = Field(
        default=20, description="Smaller subgroups are reported as too small, without metrics."
    )


class ReportParams(Section):
    """The HTML audit report."""

    n_gallery: PositiveInt = Field(default=24, description="Rows of each long table shown in the report.")


class Params(Section):
    """All of ``params.yaml``."""

    seed: Annotated[int, Field(ge=0)] = 42
    data: DataParams
    executor: ExecutorParams = ExecutorParams()
    demo: DemoParams = DemoParams()
    ingest: IngestParams = IngestParams()
    quality: QualityParams = QualityParams()
    dedup: DedupParams = DedupParams()
    outliers: OutliersParams = OutliersParams()
    curate: CurateParams = CurateParams()
    split: SplitParams = SplitParams()
    normalize: NormalizeParams = NormalizeParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    label_issues: LabelIssuesParams = LabelIssuesParams()
    shortcuts: ShortcutsParams = ShortcutsParams()
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
