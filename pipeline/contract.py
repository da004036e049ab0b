"""The data contract (README, "What runs"): column names, final states and the one inclusion rule.

Per-issue columns follow the cleanvision / cleanlab Datalab convention: ``<issue>_score`` in
[0, 1] (lower is worse) and ``is_<issue>_issue`` for the decision. Only the two helpers below
build those names.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pandas as pd

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
