"""Stratified, group-level train/val/test split (the ``split`` stage; README, "Stages in detail").

The unit of assignment is the *leakage group*: ``group_id`` from curation (patients joined by
near-duplicate links). As a safety net the units are the connected components of ``group_id``
and ``patient_id`` (and any extra link column, e.g. a duplicate ``cluster_id``;
:func:`pipeline.graph.key_components`), so a patient can never straddle two splits even if an
upstream table is inconsistent.

Algorithm (deterministic for a given seed, independent of row order):

1. Count images per (unit, class). Classes with fewer units than there are non-empty splits
   cannot be stratified: :func:`assign_splits` raises a ``ValueError`` naming the class.
2. Greedy: units largest first (ties broken by a seeded permutation) go to the split whose cost
   drops the most. The cost is ``sum_s [sum_c (n_sc - T_sc)^2 + (n_s - T_s)^2] / T_s^2`` with
   targets ``T_sc = fraction_s * n_c``: the squared deviation of class proportions and of split
   size, relative to each split's target, so small splits (val) are held as tightly as large ones.
3. Local search: single-unit moves and pairwise swaps between splits that lower the cost,
   until no improvement (a bounded number of passes).

:func:`check_no_leakage` is an independent check (it does not reuse any of the above) that no
``group_id``, ``patient_id`` or duplicate cluster appears in two splits and that every row is
assigned exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.contract import SPLITS, require_columns
from pipeline.errors import InputError
from pipeline.graph import key_components

log = logging.getLogger(__name__)

SPLIT_INPUT_COLUMNS = ("image_id", "label", "group_id", "patient_id")
_MAX_PASSES = 10
_SWAP_CANDIDATES = 64
_SIZE_WEIGHT = 0.25
_RESTART_BUDGET = 2_000  # restarts * units
_MAX_RESTARTS = 4


def fractions_from_params(params: object) -> dict[str, float]:
    """``{"train": .., "val": .., "test": ..}`` from a ``SplitParams`` section."""
    return {s: float(getattr(params, f"{s}_fraction")) for s in SPLITS}


def _validate_fractions(fractions: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise InputError(f"split fractions: unknown split(s) {unknown}; expected keys {list(SPLITS)}")
    frac = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-6:
        raise InputError(
            f"split fractions must be >= 0 and sum to 1, got {dict(zip(SPLITS, frac.tolist(), strict=True))}"
        )
    if frac[0] <= 0:
        raise InputError("split fractions: train fraction must be > 0")
    return frac


def _validate_table(table: pd.DataFrame, link_columns: Sequence[str]) -> None:
    require_columns(table, [*SPLIT_INPUT_COLUMNS, *link_columns], "split input")
    for col in ("image_id", "label", "group_id"):
        bad = table[col].isna()
        if bad.any():
            raise ValueError(
                f"split input: column '{col}' is empty for image_id(s) {table.loc[bad, 'image_id'].head(5).tolist()}"
            )
    dup = table["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"split input: duplicate image_id(s) {table.loc[dup, 'image_id'].head(5).tolist()}")


def leakage_units(
    table: pd.DataFrame, link_columns: Sequence[str] = ("group_id", "patient_id")
) -> np.ndarray:
    """Connected components of rows that share a value in any of ``link_columns``.

    Args:
        table: Rows to group. Null or empty values in a link column link nothing.
        link_columns: Columns whose equal values must stay together.

    Returns:
        int64 array (len(table),): unit index per row, numbered by the smallest ``image_id`` in
        the unit, so the numbering does not depend on row order.
    """
    if not link_columns:
        comp = np.arange(len(table))
    else:
        comp = key_components(*(table[col] for col in link_columns))
    # Renumber components by their smallest image_id: row-order independent.
    first_id = pd.Series(table["image_id"].astype(str).to_numpy()).groupby(comp).min()
    order = {c: i for i, c in enumerate(first_id.sort_values(kind="stable").index)}
    return np.array([order[c] for c in comp], dtype=np.int64)


class _Cost:
    """Cost of an assignment, kept incrementally as class counts per split.

    ``f(split) = sum_c (n_sc / n_s - p_c)^2 + SIZE_WEIGHT * ((n_s - T_s) / T_s)^2``: the squared
    deviation of the split's class proportions from the whole dataset's (what the balance
    metric measures) plus its relative size deviation. An empty non-empty-target split costs 1 per
    class. The greedy phase, where proportions of near-empty splits mean little, uses the
    quadratic count-space surrogate ``sum_c (n_sc - T_sc)^2 + (n_s - T_s)^2`` over ``T_s^2``.
    """

    def __init__(self, counts: np.ndarray, frac: np.ndarray) -> None:
        self.counts = counts.astype(np.float64)  # (U, C)
        n_c = self.counts.sum(axis=0)
        self.p = n_c / n_c.sum()  # (C,)
        self.active = np.flatnonzero(frac > 0)
        self.target_sc = frac[:, None] * n_c[None, :]  # (S, C)
        self.target_s = frac * n_c.sum()  # (S,)
        self.inv_t = np.zeros_like(frac)
        self.inv_t[self.active] = 1.0 / np.maximum(self.target_s[self.active], 1e-9)
        self.is_active = frac > 0
        self.n_sc = np.zeros_like(self.target_sc)

    def greedy_delta(self, g: np.ndarray) -> np.ndarray:
        """Surrogate cost change of adding class counts ``g`` (C,) to each split -> (S,)."""
        d_sc = self.n_sc - self.target_sc
        d_s = d_sc.sum(axis=1)
        gs = g.sum()
        per = (2 * d_sc * g + g * g).sum(axis=1) + 2 * d_s * gs + gs * gs
        return per * self.inv_t**2

    def f(self, rows: np.ndarray, s: np.ndarray | int) -> np.ndarray:
        """Cost of splits ``s`` holding class counts ``rows`` (..., C)."""
        n = rows.sum(axis=-1)
        safe = np.where(n > 0, n, 1.0)
        prop = ((rows / safe[..., None] - self.p) ** 2).sum(axis=-1)
        prop = np.where(n > 0, prop, float(len(self.p)))
        size = ((n - self.target_s[s]) * self.inv_t[s]) ** 2
        return np.where(self.is_active[s], prop + _SIZE_WEIGHT * size, np.where(n > 0, np.inf, 0.0))

    def total(self) -> float:
        return float(self.f(self.n_sc, np.arange(len(self.n_sc))).sum())


def _greedy(cost: _Cost, order: np.ndarray) -> np.ndarray:
    assign = np.full(len(cost.counts), -1, dtype=np.int64)
    for u in order:
        g = cost.counts[u]
        delta = cost.greedy_delta(g)[cost.active]
        s = int(cost.active[int(np.argmin(delta))])
        assign[u] = s
        cost.n_sc[s] += g
    return assign


def _improve(cost: _Cost, assign: np.ndarray, rng: np.random.Generator) -> int:
    """Moves and swaps that lower the exact cost, until none does. Returns the number of changes."""
    counts = cost.counts
    splits = np.arange(len(cost.n_sc))
    n_changes = 0
    for _ in range(_MAX_PASSES):
        changed = 0
        start_cost = cost.total()
        for u in rng.permutation(len(assign)):
            a = assign[u]
            g = counts[u]
            f_now = cost.f(cost.n_sc, splits)
            # Move u from a to every other split b.
            new_a = cost.f(cost.n_sc[a] - g, a)
            new_b = cost.f(cost.n_sc + g, splits)
            delta = new_a - f_now[a] + new_b - f_now
            delta[a] = np.inf
            delta[~cost.is_active] = np.inf
            b = int(np.argmin(delta))
            best_move = delta[b]
            # Swap u with a unit v in another split.
            others = np.flatnonzero(assign != a)
            if len(others) > _SWAP_CANDIDATES:
                others = rng.choice(others, size=_SWAP_CANDIDATES, replace=False)
            best_swap, v = np.inf, -1
            if len(others):
                diff = counts[others] - g  # what split a gains
                bv = assign[others]
                sw = cost.f(cost.n_sc[a] + diff, a) - f_now[a] + cost.f(cost.n_sc[bv] - diff, bv) - f_now[bv]
                k = int(np.argmin(sw))
                best_swap, v = sw[k], int(others[k])
            if min(best_move, best_swap) >= -1e-12:
                continue
            if best_move <= best_swap:
                cost.n_sc[a] -= g
                cost.n_sc[b] += g
                assign[u] = b
            else:
                bv = assign[v]
                diff = counts[v] - g
                cost.n_sc[a] += diff
                cost.n_sc[bv] -= diff
                assign[u], assign[v] = bv, a
            changed += 1
        n_changes += changed
        # Stop when a pass no longer pays: nothing changed or < 1% improvement.
        if changed == 0 or cost.total() > 0.99 * start_cost:
            break
    return n_changes


# Long on purpose: one algorithm in order (leakage units, per-unit class counts, the feasibility check,
# seeded restarts of greedy placement plus moves/swaps, the best kept); the steps share those counts
# and the pieces that stand alone (_greedy, _improve, _Cost) already are functions.
def assign_splits(
    table: pd.DataFrame,
    fractions: Mapping[str, float],
    seed: int,
    link_columns: Sequence[str] = ("group_id", "patient_id"),
) -> pd.DataFrame:
    """Assign every row to train/val/test, stratified by label, whole leakage groups at a time.

    Args:
        table: Included images, one row each, with columns ``image_id, label, group_id,
            patient_id`` (plus any ``link_columns``). A patient may have images of several labels.
        fractions: Target fraction of *images* per split, e.g. ``{"train": 0.7, "val": 0.1,
            "test": 0.2}``; must sum to 1; train > 0. A split with fraction 0 stays empty.
        seed: Seed of the tie-breaking permutation and of swap sampling (same seed, same split).
        link_columns: Columns whose equal values must end in the same split (connected
            components over all of them are the units of assignment).

    Returns:
        DataFrame with ``image_id`` and ``split`` (str in ``SPLITS``), aligned with ``table``'s
        index and row order.

    Raises:
        ValueError: Missing columns, null labels/groups or duplicate ``image_id``; bad
            fractions; or a class present in fewer leakage groups than there are non-empty
            splits (the message names the class and its group count).
    """
    frac = _validate_fractions(fractions)
    _validate_table(table, link_columns)
    if len(table) == 0:
        return pd.DataFrame({"image_id": pd.Series([], dtype=str), "split": pd.Series([], dtype=str)})

    units = leakage_units(table, link_columns)
    n_units = int(units.max()) + 1
    n_groups = table["group_id"].nunique()
    if n_units < n_groups:
        log.warning(
            "%d group_id values collapse into %d leakage units via %s: upstream groups do not contain "
            "every patient/cluster; they are kept together here",
            n_groups,
            n_units,
            list(link_columns),
        )
    classes, label_codes = np.unique(table["label"].astype(str).to_numpy(), return_inverse=True)
    counts = np.zeros((n_units, len(classes)), dtype=np.int64)
    np.add.at(counts, (units, label_codes), 1)

    active = np.flatnonzero(frac > 0)
    units_per_class = (counts > 0).sum(axis=0)
    too_few = [(c, int(k)) for c, k in zip(classes, units_per_class, strict=True) if k < len(active)]
    if too_few:
        names = ", ".join(f"'{c}' ({k} group{'s' if k != 1 else ''})" for c, k in too_few)
        raise InputError(
            f"cannot stratify by label: class {names} must appear in at least {len(active)} leakage groups "
            f"(one per non-empty split {[SPLITS[i] for i in active]}); collect more patients for it, drop it "
            "from the labels table, or set split.val_fraction: 0"
        )

    sizes = counts.sum(axis=1)
    smallest_target = frac[active].min() * sizes.sum()
    big = np.flatnonzero(sizes > smallest_target)
    if len(big):
        log.warning(
            "%d leakage group(s) are larger than the smallest split target (%.0f images; largest group %d "
            "images); they go to the larger splits",
            len(big),
            smallest_target,
            int(sizes.max()),
        )

    # Several seeded restarts (as many as a fixed budget of unit visits allows); keep the best.
    rng = np.random.default_rng(seed)
    n_restarts = int(np.clip(_RESTART_BUDGET // n_units, 1, _MAX_RESTARTS))
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_restarts):
        order = rng.permutation(n_units)
        order = order[np.argsort(-sizes[order], kind="stable")]
        cost = _Cost(counts, frac)
        assign = _greedy(cost, order)
        greedy_cost = cost.total()
        n_changes = _improve(cost, assign, rng)
        log.debug(
            "restart: cost %.4g after greedy, %.4g after %d moves/swaps", greedy_cost, cost.total(), n_changes
        )
        if best is None or cost.total() < best[0] - 1e-12:
            best = (cost.total(), assign.copy())
    assert best is not None
    log.info(
        "split %d images in %d leakage units: best cost %.4g of %d restart(s)",
        len(table),
        n_units,
        best[0],
        n_restarts,
    )
    assign = best[1]
    split_names = np.array(SPLITS, dtype=object)[assign[units]]
    return pd.DataFrame({"image_id": table["image_id"].to_numpy(), "split": split_names}, index=table.index)


def check_no_leakage(
    assignment: pd.DataFrame,
    table: pd.DataFrame,
    duplicates: pd.DataFrame | None = None,
) -> dict[str, int]:
    """Independent check of a split: every row once, no group, patient or duplicate cluster in two splits.

    Args:
        assignment: ``image_id, split``.
        table: The rows that had to be split: ``image_id, group_id, patient_id``.
        duplicates: Optional ``image_id, cluster_id`` (rows not in ``assignment`` are ignored:
            excluded duplicates have no split).

    Returns:
        ``{"leaking_groups": 0, "leaking_patients": 0, "leaking_clusters": 0}`` on success.

    Raises:
        ValueError: Naming the missing/extra/repeated image ids or the leaking keys and their splits.
    """
    ids = assignment["image_id"].astype(str)
    repeated = ids[ids.duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"split check: image_id(s) assigned more than once: {repeated[:10]}")
    bad_split = ~assignment["split"].isin(SPLITS)
    if bad_split.any():
        raise ValueError(
            f"split check: invalid split value(s) {sorted(assignment.loc[bad_split, 'split'].astype(str).unique())[:5]}; "
            f"expected one of {list(SPLITS)}"
        )
    expected = set(table["image_id"].astype(str))
    got = set(ids)
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ValueError(
            f"split check: {len(missing)} included image(s) without a split (e.g. {missing[:5]}), "
            f"{len(extra)} assigned image(s) not in the included table (e.g. {extra[:5]})"
        )
    merged = (
        table[["image_id", "group_id", "patient_id"]]
        .astype({"image_id": str})
        .merge(assignment.astype({"image_id": str}), on="image_id", how="inner", validate="one_to_one")
    )
    keys = {"leaking_groups": (merged, "group_id"), "leaking_patients": (merged, "patient_id")}
    if duplicates is not None and len(duplicates):
        dup = duplicates[["image_id", "cluster_id"]].dropna().astype({"image_id": str})
        keys["leaking_clusters"] = (
            dup.merge(assignment.astype({"image_id": str}), on="image_id"),
            "cluster_id",
        )
    result = {"leaking_groups": 0, "leaking_patients": 0, "leaking_clusters": 0}
    problems = []
    for name, (df, col) in keys.items():
        n_splits = df.dropna(subset=[col]).groupby(col)["split"].nunique()
        leaking = n_splits[n_splits > 1]
        result[name] = len(leaking)
        for key in leaking.index[:5]:
            where = sorted(df.loc[df[col] == key, "split"].unique())
            problems.append(f"{col} {key!r} in splits {where}")
    if problems:
        raise ValueError(f"split check: leakage across splits ({result}): " + "; ".join(problems))
    return result


def class_proportions(
    labels: pd.Series, splits: pd.Series, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Class proportions per split: DataFrame (split x class), rows sum to 1 (empty splits: NaN)."""
    ct = pd.crosstab(splits.astype(str).to_numpy(), labels.astype(str).to_numpy())
    if classes is not None:
        ct = ct.reindex(columns=list(classes), fill_value=0)
    return ct.div(ct.sum(axis=1), axis=0)


def max_abs_deviation(labels: pd.Series, splits: pd.Series) -> dict[str, float]:
    """Per split, the largest |class proportion in split - class proportion overall|."""
    labels = labels.astype(str).reset_index(drop=True)
    splits = splits.astype(str).reset_index(drop=True)
    overall = labels.value_counts(normalize=True)
    props = class_proportions(labels, splits, classes=overall.index.tolist())
    return {s: float((props.loc[s] - overall).abs().max()) for s in props.index}


def split_metrics(table: pd.DataFrame, assignment: pd.DataFrame, fractions: Mapping[str, float]) -> dict:
    """Balance report of a split (``metrics/split.json`` content, without the leakage counts).

    Args:
        table: ``image_id, label, group_id, patient_id`` of the split rows.
        assignment: ``image_id, split``.
        fractions: The target fractions.

    Returns:
        ``{"n_images", "classes", "class_proportions", "max_abs_deviation", "splits": {split:
        {"images", "fraction", "target_fraction", "patients", "groups", "class_counts",
        "class_proportions", "max_abs_deviation"}}}``.
    """
    df = table.astype({"image_id": str}).merge(
        assignment.astype({"image_id": str}), on="image_id", validate="one_to_one"
    )
    labels = df["label"].astype(str)
    classes = sorted(labels.unique())
    overall = labels.value_counts(normalize=True).reindex(classes)
    dev = max_abs_deviation(labels, df["split"])
    n = len(df)
    splits_out = {}
    for s in SPLITS:
        part = df[df["split"] == s]
        counts = part["label"].astype(str).value_counts().reindex(classes, fill_value=0)
        splits_out[s] = {
            "images": len(part),
            "fraction": len(part) / n if n else 0.0,
            "target_fraction": float(fractions.get(s, 0.0)),
            "patients": int(part["patient_id"].nunique()),
            "groups": int(part["group_id"].nunique()),
            "class_counts": {c: int(k) for c, k in counts.items()},
            "class_proportions": {c: (float(k) / len(part) if len(part) else 0.0) for c, k in counts.items()},
            "max_abs_deviation": dev.get(s, 0.0),
        }
    return {
        "n_images": n,
        "classes": classes,
        "class_proportions": {c: float(p) for c, p in overall.items()},
        "max_abs_deviation": max(dev.values()) if dev else 0.0,
        "splits": splits_out,
    }


def balance_table(table: pd.DataFrame, assignment: pd.DataFrame) -> pd.DataFrame:
    """Class x split counts in long form (``label, split, n_images, split_label``), every pair present."""
    df = table[["image_id", "label"]].astype(str).merge(assignment.astype({"image_id": str}), on="image_id")
    classes = sorted(df["label"].unique())
    idx = pd.MultiIndex.from_product([classes, list(SPLITS)], names=["label", "split"])
    counts = df.groupby(["label", "split"]).size().reindex(idx, fill_value=0)
    out = counts.rename("n_images").reset_index()
    # One bar per (split, class) in `dvc plots show` (its bar template has no grouping).
    out["split_label"] = out["split"] + "/" + out["label"]
    return out


def sgkf_splits(
    table: pd.DataFrame, fractions: Mapping[str, float], seed: int, n_folds: int = 10
) -> pd.DataFrame:
    """Baseline: a train/val/test split derived from scikit-learn's ``StratifiedGroupKFold``.

    The data is cut into ``n_folds`` stratified group folds; whole folds are given to test and
    val (``round(fraction * n_folds)`` folds each, at least one when the fraction is > 0) and the
    rest to train. Used by tests and ``bench/split_balance.py`` to show that
    :func:`assign_splits` balances classes at least as well.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    frac = _validate_fractions(fractions)
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(table), dtype=np.int64)
    for k, (_, test_idx) in enumerate(
        sgkf.split(np.zeros(len(table)), table["label"].astype(str), table["group_id"].astype(str))
    ):
        fold[test_idx] = k
    n_test = max(1, round(frac[2] * n_folds))
    n_val = max(1, round(frac[1] * n_folds)) if frac[1] > 0 else 0
    split = np.full(len(table), "train", dtype=object)
    split[fold < n_test] = "test"
    split[(fold >= n_test) & (fold < n_test + n_val)] = "val"
    return pd.DataFrame({"image_id": table["image_id"].to_numpy(), "split": split}, index=table.index)
