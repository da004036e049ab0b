"""Rules for class labels as real tables write them (README "Labels table").

* Missing values: an empty label or one of :data:`MISSING_VALUES` (``NA``, ``N/A``, ``null``,
  ``nan``, any case) is no label (``unknown_label`` at ingest); the same values in ``patient_id``
  mean no patient id.
* Spelling variants: labels that differ only in case or in surrounding whitespace/punctuation
  (``Normal``, ``normal``, ``normal.``) are one class written several ways. They stop ingest with
  the variants listed, unless ``ingest.classes`` names the canonical spelling: then every variant
  is merged into it.
* At least two classes: a classifier needs two; a table with one stops ingest (and split) with
  the file and the classes found, not eight stages later inside scikit-learn.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence

from pipeline.errors import InputError

MISSING_VALUES = frozenset({"", "nan", "na", "n/a", "null"})
_STRIP = string.whitespace + string.punctuation


def is_missing(value: str) -> bool:
    """Whether a table value counts as empty (see :data:`MISSING_VALUES`)."""
    return value.strip().lower() in MISSING_VALUES


def label_key(label: str) -> str:
    """The spelling-insensitive key of a label: case-folded, surrounding whitespace/punctuation cut."""
    return label.strip(_STRIP).casefold()


def resolve_label_variants(
    labels: Iterable[str], classes: Sequence[str] | None, source: str
) -> dict[str, str]:
    """Map each spelling variant of a label to its canonical spelling.

    Args:
        labels: The labels as written (missing values are ignored).
        classes: ``ingest.classes`` (canonical spellings) or None.
        source: Where the labels come from, for the message (the table's path).

    Returns:
        ``{variant: canonical}`` for every label that must be rewritten (empty when none).

    Raises:
        InputError: When labels differ only in case or surrounding whitespace/punctuation and
            ``ingest.classes`` does not name one spelling for them; the message lists the variants
            with their counts.
    """
    counts = Counter(lab for lab in labels if not is_missing(lab))
    by_key: dict[str, list[str]] = {}
    for lab in sorted(counts):
        by_key.setdefault(label_key(lab), []).append(lab)
    canonical = {label_key(c): c for c in classes or ()}
    mapping, clashes = {}, []
    for key, variants in by_key.items():
        if key in canonical:
            mapping.update({v: canonical[key] for v in variants if v != canonical[key]})
        elif len(variants) > 1:
            clashes.append(", ".join(f"{v!r} ({counts[v]} images)" for v in variants))
    if clashes:
        raise InputError(
            f"{source}: labels that differ only in case or surrounding spaces/punctuation would become "
            f"separate classes: {'; '.join(clashes)}. Fix the table, or name the spelling to keep in "
            "ingest.classes (every variant is then merged into it)"
        )
    return mapping


def check_two_classes(counts: dict[str, int], source: str, what: str) -> None:
    """Stop when fewer than two classes are present.

    Args:
        counts: ``{label: number of images}``.
        source: The file the labels come from.
        what: Which images were counted (e.g. ``"readable images"``).

    Raises:
        InputError: Naming the file and the classes found.
    """
    if len(counts) < 2:
        found = dict(sorted(counts.items())) or "none"
        raise InputError(
            f"{source}: a classifier needs at least 2 classes, but the {what} have {len(counts)}: {found}"
        )
