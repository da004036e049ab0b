"""pipeline.graph: components of rows linked by shared keys equal a brute-force union-find."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.graph import components, key_components, links_sharing_key


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


def _brute_force(keys: list[list[object]]) -> set[frozenset[int]]:
    """Rows joined when any key column holds the same non-empty value (union-find by hand)."""
    n = len(keys[0])
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for col in keys:
        for a in range(n):
            for b in range(a + 1, n):
                if col[a] not in (None, "") and col[a] == col[b]:
                    parent[find(a)] = find(b)
    roots = np.array([find(x) for x in range(n)])
    return _partition(roots)


keys_strategy = st.lists(st.sampled_from(["a", "b", "c", "d", "", None]), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_key_components_equal_brute_force(data) -> None:
    first = data.draw(keys_strategy)
    n_cols = data.draw(st.integers(1, 3))
    cols = [first] + [
        data.draw(st.lists(st.sampled_from(["x", "y", "", None]), min_size=len(first), max_size=len(first)))
        for _ in range(n_cols - 1)
    ]
    labels = key_components(*cols)
    assert _partition(labels) == _brute_force(cols)
    # numbered in the order of each component's smallest row
    first_rows = [int(np.flatnonzero(labels == c)[0]) for c in range(labels.max() + 1)]
    assert first_rows == sorted(first_rows)


def test_empty_and_null_keys_link_nothing() -> None:
    keys = pd.Series(["p1", "", None, np.nan, "", "p1", pd.NA], dtype=object)
    i, j = links_sharing_key(keys)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 5)]
    labels = key_components(keys)
    assert labels[0] == labels[5]
    assert len(set(labels[[1, 2, 3, 4, 6]].tolist())) == 5  # each unknown stays alone


def test_links_chain_each_key_in_row_order() -> None:
    i, j = links_sharing_key(np.array(["k", "m", "k", "k", "m"], dtype=object))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2), (1, 4), (2, 3)]
    assert (i < j).all()


def test_keys_are_compared_as_strings() -> None:
    labels = key_components(pd.Series([1, "1", 2.5, "2.5"], dtype=object))
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


def test_components_of_pairs() -> None:
    labels = components(6, np.array([0, 4, 3]), np.array([4, 2, 5]))
    assert labels.tolist() == [0, 1, 0, 2, 0, 2]
    assert components(3, np.empty(0, np.int64), np.empty(0, np.int64)).tolist() == [0, 1, 2]


def test_key_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"different lengths \[2, 3\]"):
        key_components(["a", "b"], ["a", "b", "c"])
