"""The data contract (README, "What runs"): column names, issue names, final states and the one
inclusion rule.

Per-issue columns follow the cleanvision / cleanlab Datalab convention: ``<issue>_score`` in
[0, 1] (lower is worse) and ``is_<issue>_issue`` for the decision. Only the two helpers below
build those names, and :data:`QUALITY_ISSUES` is the one list of issue names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

import pandas as pd

from pipeline.errors import InputError

MANIFEST_COLUMNS = [
    "image_id",
    "path",
    "label",
    "patient_id",
    "sha256",
    "width",
    "height",
    "channels",
    "bit_depth",
    "format",
    "status",
    "reason",
]

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
"""The quality issue names, in their one fixed order (columns of quality.parquet, the ``+``-joined
``low_quality:`` reasons). ``pipeline.quality.CHECKS``, the ``quality.<issue>_threshold`` params and
the ``curate.exclude_issues`` values are checked against it (``tests/test_quality.py``)."""

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
SPLITS = ("train", "val", "test")
FINAL_STATES = (*SPLITS, "excluded")


def score_col(issue: str) -> str:
    """Column holding the score of ``issue`` in [0, 1], lower is worse."""
    return f"{issue}_score"


def flag_col(issue: str) -> str:
    """Boolean column saying whether the image has ``issue``."""
    return f"is_{issue}_issue"


def image_id_for(rel_path: str) -> str:
    """Stable image id: the POSIX relative path of the file under the data root.

    Derived from the path only, so it does not depend on scan order or on the file contents.
    """
    return PurePosixPath(rel_path).as_posix()


def included(curated: pd.DataFrame) -> pd.Series:
    """The one rule that decides which rows go on past curation.

    Args:
        curated: The curated table (``image_id, included, reason, group_id``).

    Returns:
        Boolean mask aligned with ``curated``.
    """
    return curated["included"].astype(bool)


def require_columns(table: pd.DataFrame, columns: Iterable[str], where: str, hint: str = "") -> None:
    """Check that ``table`` has every column in ``columns``.

    Args:
        table: The table read from a file or handed over by a stage.
        columns: The column names needed.
        where: What the table is, for the message (``"quality.parquet"``, ``"manifest"``).
        hint: Optional context for the message (which params key asked for the columns).

    Raises:
        InputError: ``"<where>: missing column(s) [...]; <hint>; got [...]"``: the missing columns in
            the order asked, and the columns the table has.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        context = f"; {hint}" if hint else ""
        raise InputError(f"{where}: missing column(s) {missing}{context}; got {list(table.columns)}")
