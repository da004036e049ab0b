"""Typed, validated parameters: one pydantic model per ``params.yaml`` section.

Every model forbids unknown keys, so a typo in ``params.yaml`` fails at load time with the key
path in the message (``params.yaml: quality.dark_threshold: extra inputs are not permitted``)
instead of being silently ignored. Stage scripts call :func:`load_params` and read only their
own section.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.contract import QUALITY_ISSUES
from pipeline.errors import InputError
from pipeline.labels import label_key

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (``bool``, ``bool | None``, ``Any``, ...)."""
    if annotation is bool or annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in args)
    if origin is Annotated:
        return _accepts_bool(args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_bool(a) for a in args)
    return False


class Section(BaseModel):
    """Base for every params section: unknown keys are errors; numbers must be finite, and a YAML
    boolean is not taken as a number (pydantic would read ``max_pixels: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(v, bool) and field is not None and not _accepts_bool(field.annotation):
            raise ValueError(f"expected {_type_name(field.annotation)}, got the boolean {str(v).lower()}")
        return v


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return "a value of type " + str(annotation).replace("typing.", "")


class DataParams(Section):
    """Where the images and the labels table are."""

    root: str = Field(description="Folder of images; paths in the labels table are relative to it.")
    labels: str | None = Field(
        default=None, description="Labels table (CSV). null = class-per-folder tree under root."
    )
    truth: str | None = Field(
        default=None, description="Ground-truth file of planted problems (demo data only)."
    )
    modality: Literal["auto", "gray", "colour"] = Field(
        default="auto",
        description=(
            "gray (radiographs, CT, MR) or colour (photographs: dermoscopy, fundus, pathology): picks "
            "the per-modality quality checks; auto = inferred from the images (logged and reported)."
        ),
    )

    @field_validator("root")
    @classmethod
    def _not_the_project(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected the folder of images, got an empty path")
        here, root = Path.cwd().resolve(), Path(v).expanduser().resolve()
        if here.is_relative_to(root):
            raise ValueError(
                f"{v!r} is {'the project folder' if here == root else 'a folder that holds the project'} "
                f"({here}): ingest would scan .venv and the pipeline's own outputs; expected the folder of images"
            )
        return v


class ExecutorParams(Section):
    """How per-image work is run: a local process pool or a Dask cluster."""

    kind: Literal["process", "dask"] = "process"
    n_workers: PositiveInt | None = Field(default=None, description="null = number of CPU cores.")
    chunk_size: PositiveInt = 64
    address: str | None = Field(
        default=None, description="Dask scheduler address; null with kind=dask starts a LocalCluster."
    )


DEMO_FINDINGS = {
    "chest_xray": ("normal", "nodule", "effusion", "cardiomegaly"),
    "dermoscopy": ("naevus", "melanoma", "vascular", "keratosis"),
}
"""The ``demo.classes`` names each ``demo.modality`` can draw (pipeline/demo.py ``MODALITIES``)."""


class DemoParams(Section):
    """The embedded synthetic dataset (README, "Stages in detail", ``demo_data``)."""

    modality: Literal["chest_xray", "dermoscopy"] = Field(
        default="chest_xray",
        description="chest_xray: gray radiographs; dermoscopy: RGB skin-lesion photographs.",
    )
    classes: list[
        Literal["normal", "nodule", "effusion", "cardiomegaly", "naevus", "melanoma", "vascular", "keratosis"]
    ] = Field(
        default_factory=lambda: ["normal", "nodule", "effusion"],
        min_length=2,
        description="Classes to draw; each name is a synthetic finding of `modality` (normal = none).",
    )
    class_proportions: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="Relative frequency of each class of `classes` (e.g. [24, 5, 1]); null = equal.",
    )
    n_patients: PositiveInt = 320
    images_per_patient_range: tuple[PositiveInt, PositiveInt] = Field(
        default=(1, 8), description="[low, high] images per patient, duplicates included."
    )
    image_size: Annotated[int, Field(ge=16)] = Field(
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
    def _classes_of_modality(self) -> DemoParams:
        findings = DEMO_FINDINGS[self.modality]
        unknown = [c for c in self.classes if c not in findings]
        if unknown:
            raise ValueError(
                f"classes {unknown} are not findings of modality {self.modality!r}; expected names from "
                f"{list(findings)} (set demo.classes with demo.modality)"
            )
        return self

    @model_validator(mode="after")
    def _proportions_match_classes(self) -> DemoParams:
        if self.class_proportions is not None and len(self.class_proportions) != len(self.classes):
            raise ValueError(
                f"class_proportions has {len(self.class_proportions)} entries but classes has "
                f"{len(self.classes)} ({self.classes}); give one proportion per class"
            )
        return self

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
        description="Allowed labels; other labels are rejected as unknown_label. null = any non-empty label. "
        "Spelling variants of a class (case, surrounding spaces/punctuation) are merged into it.",
    )
    max_seconds_per_file: Annotated[float, Field(gt=0)] | None = Field(
        default=60.0,
        description="Wall-clock budget of the work on one file; past it the file is rejected as timeout. "
        "null = no limit.",
    )
    missing_patient_id: Literal["own_group", "reject"] = Field(
        default="own_group",
        description="An image without patient id: own_group = its own patient (counted, and warned about "
        "in the report); reject = rejected as missing_patient.",
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
        if v is not None:
            keys = [label_key(c) for c in v]
            if len(set(keys)) != len(keys):
                raise ValueError(f"class names must differ by more than case or punctuation, got {v}")
        return v


class QualityParams(Section):
    """Low-quality image detection. Scores are in [0, 1], lower is worse; thresholds on scores.

    One ``<issue>_threshold`` per name of :data:`pipeline.contract.QUALITY_ISSUES` (a test holds
    them equal).
    """

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
    confirm_residual_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.3,
        description=(
            "A candidate is confirmed when 1 - its aligned thumbnail correlation is at most this share "
            "of the pair's misalignment null (how much the images differ from themselves moved by one "
            "thumbnail pixel)."
        ),
    )
    max_colour_difference: Annotated[float, Field(gt=0.0)] = Field(
        default=6.0,
        description=(
            "Colour images: largest RMS CIELAB chroma difference (4x4 grid) of a confirmed pair; "
            "a just-noticeable difference is about 2.3."
        ),
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
    mirror_epochs: Annotated[int, Field(ge=1, le=100)] = Field(
        default=8, description="Training passes of the self-supervised mirror CNN (at least 150 steps)."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        default="auto", description="Device of the mirror CNN."
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

    image_size: Annotated[int, Field(ge=8, le=2048)] | Literal["auto"] = Field(
        default="auto",
        description="Side of the stored square images; auto = from the data's median short side, "
        "capped at 64 px when training runs on the CPU and 256 px on CUDA.",
    )
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

    arch: str = Field(
        default="small_cnn",
        min_length=1,
        description="small_cnn | resnet18 | resnet34 | resnet50 | efficientnet_b0 (torchvision) | a timm "
        "model name (timm:<name> forces timm); checked when the model is built.",
    )
    weights_path: str | None = Field(
        default=None, description="Local file of pretrained weights; never downloaded."
    )
    input_stats: Literal["data", "pretrained"] = Field(
        default="data",
        description="Normalize with the train split's statistics, or with the mean/std the pretrained "
        "backbone expects (needs weights_path).",
    )
    width: PositiveInt = Field(default=16, description="small_cnn base width (channels 1x,2x,4x,8x).")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _stats_need_weights(self) -> ModelParams:
        if self.input_stats == "pretrained" and self.weights_path is None:
            raise ValueError(
                "input_stats: pretrained needs weights_path (a network trained from scratch has no statistics "
                "of its own)"
            )
        return self


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
    min_auditor_lift: Fraction = Field(
        default=0.2,
        description="Below this out-of-fold (balanced accuracy - chance) / (1 - chance) the auditor is called weak.",
    )
    max_class_flag_share: Fraction = Field(
        default=0.5,
        description="A class with more of its audited images flagged than this is flagged wholesale.",
    )
    max_drop_share: Fraction = Field(
        default=0.1,
        description="action: drop refuses to drop more than this share of the audited train images.",
    )
    allow_large_drop: bool = Field(
        default=False, description="Drop even past max_drop_share or with a weak auditor (explicit override)."
    )

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
    class_weights: Literal["auto"] | bool = Field(
        default="auto",
        description='"balanced" loss weights: true, false, or auto = on when the train classes are '
        "unbalanced beyond imbalance_ratio.",
    )
    imbalance_ratio: Annotated[float, Field(ge=1)] = Field(
        default=1.5,
        description="class_weights: auto turns weights on when largest / smallest train class count exceeds this.",
    )
    patience: PositiveInt = 8
    monitor: Literal["val_balanced_accuracy", "val_auroc", "val_loss"] = "val_balanced_accuracy"
    num_workers: Annotated[int, Field(ge=0)] = 0
    amp: bool = True
    finetune: Literal["full", "linear_probe", "freeze_then_unfreeze"] = Field(
        default="full",
        description="full: train everything; linear_probe: train the classifier only; freeze_then_unfreeze: "
        "the classifier for freeze_epochs, then everything.",
    )
    freeze_epochs: Annotated[int, Field(ge=0)] = Field(
        default=0, description="freeze_then_unfreeze: epochs with the backbone frozen."
    )
    backbone_lr_scale: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1.0, description="Backbone learning rate = lr x this (the classifier gets lr)."
    )
    use_tuned: bool = Field(
        default=False, description="Override the searched hyperparameters with the tune stage's best values."
    )


class SearchDim(Section):
    """One dimension of the tune search space: a range (``low``, ``high``, ``log``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = Field(default=False, description="Sample the range on a log scale (learning rates).")
    choices: list[float] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchDim:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"expected low <= high (or choices), got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


# Tunable hyperparameter -> the params section it overrides (an integer when the field is one).
TUNABLE: dict[str, tuple[str, type]] = {
    "lr": ("train", float),
    "weight_decay": ("train", float),
    "batch_size": ("train", int),
    "warmup_epochs": ("train", int),
    "mixup_alpha": ("augment", float),
    "cutmix_alpha": ("augment", float),
    "label_smoothing": ("augment", float),
    "dropout": ("model", float),
    "width": ("model", int),
}


def _default_space() -> dict[str, SearchDim]:
    return {
        "lr": SearchDim(low=5e-4, high=1e-2, log=True),
        "weight_decay": SearchDim(low=1e-5, high=1e-2, log=True),
        "dropout": SearchDim(low=0.0, high=0.5),
        "mixup_alpha": SearchDim(low=0.0, high=0.4),
        "label_smoothing": SearchDim(low=0.0, high=0.15),
        "batch_size": SearchDim(choices=[16, 32, 64]),
    }


class TuneParams(Section):
    """Hyperparameter search with Optuna on the validation split (train reads the result when asked)."""

    n_trials: Annotated[int, Field(ge=0)] = Field(default=0, description="Trial budget; 0 = skip the search.")
    epochs: PositiveInt | None = Field(
        default=None, description="Epochs per trial; null = train.epochs (the best trial then reproduces)."
    )
    prune_after_epochs: Annotated[int, Field(ge=0)] = Field(
        default=4, description="Median pruner: epochs a trial always runs before it can be stopped."
    )
    n_startup_trials: Annotated[int, Field(ge=0)] = Field(
        default=2, description="Median pruner: complete trials before pruning starts."
    )
    space: dict[str, SearchDim] = Field(
        default_factory=_default_space, description="Hyperparameter -> range or choices."
    )

    @field_validator("space")
    @classmethod
    def _known_dims(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        unknown = sorted(set(v) - set(TUNABLE))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown}; expected some of {sorted(TUNABLE)}")
        return v


class EvaluateParams(Section):
    """Test-set evaluation."""

    n_bootstrap: Annotated[int, Field(ge=0)] = Field(
        default=1000, description="Bootstrap replicates (patients resampled); 0 = no intervals."
    )
    ci_level: Annotated[float, Field(gt=0, lt=1)] = 0.95
    n_calibration_bins: Annotated[int, Field(ge=2)] = 10
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    batch_size: PositiveInt = 256
    temperature_scaling: bool = Field(
        default=True, description="Fit a temperature on val and apply it to the test probabilities."
    )
    positive_class: str | None = Field(
        default=None, description="Binary tasks: the positive class (null = the second class, sorted)."
    )
    target_sensitivity: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="Binary tasks: the val sensitivity the operating threshold must reach; null = Youden's J.",
    )
    subgroups: list[str] = Field(
        default_factory=lambda: ["site", "sex", "age"],
        description="Labels-table columns whose groups get their own test metrics (missing ones are noted).",
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

    n_gallery: PositiveInt = Field(
        default=24, description="Label issues and candidate duplicate pairs shown as pictures in the report."
    )


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
    tune: TuneParams = TuneParams()
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
        InputError: On unknown keys, wrong types or impossible values; the message names every
            offending key path, e.g. ``params.yaml: split.train_fraction: ...``.
    """
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise InputError(_format_errors(err, source)) from err


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        InputError: If the file does not exist, is not valid YAML or does not validate (see
            :func:`parse_params`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from err
    return parse_params(raw, source=str(path))
