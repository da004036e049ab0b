"""Connected components of rows linked by a shared key or by given pairs.

Three stages need the same idea: dedup joins rows with the same file or pixel hash and confirmed
near-duplicate pairs into clusters, curate joins rows of one patient or one duplicate cluster into
leakage groups, split joins rows sharing any link column into units of assignment. All three are
connected components of an undirected graph whose nodes are table rows.

A key that is null (None, NaN, ``pd.NA``) or the empty string links nothing: an unknown patient
or an image in no cluster is not one group with every other unknown.

Component labels are scipy's: numbered in the order of each component's smallest row, so two edge
lists with the same components give the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _key_codes(keys: pd.Series | np.ndarray | Sequence) -> np.ndarray:
    """int64 code per row: rows whose keys are equal as strings share a code; null or ``""`` get -1."""
    values = pd.Series(np.asarray(keys, dtype=object))
    text = values.astype(str)
    text = text.where(values.notna() & (text != ""), None)
    return pd.factorize(text, use_na_sentinel=True)[0].astype(np.int64)


def links_sharing_key(keys: pd.Series | np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Edges chaining the rows that share a non-empty key.

    The rows of one key are linked in row order, each to the next (a chain of ``k - 1`` edges for
    ``k`` rows, not all ``k * (k - 1) / 2`` pairs): the components are the same and the edge list
    stays linear in the number of rows.

    Args:
        keys: One key per row (str or anything ``astype(str)`` names); null or ``""`` = no key.

    Returns:
        Two int64 arrays ``(i, j)`` of row positions, ``i < j``, grouped by key, each group in
        row order.
    """
    codes = _key_codes(keys)
    idx = np.flatnonzero(codes >= 0)
    order = idx[np.argsort(codes[idx], kind="stable")]
    same = codes[order[1:]] == codes[order[:-1]]
    return order[:-1][same].astype(np.int64), order[1:][same].astype(np.int64)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes given undirected edges ``(i[k], j[k])``.

    Args:
        n: Number of nodes (rows).
        i, j: Edge end points, int arrays of one length with values in ``[0, n)``.

    Returns:
        int32 array (n,): labels ``0 .. n_components - 1``, numbered in the order of each
        component's smallest node.
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    graph = coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def key_components(*keys: pd.Series | np.ndarray | Sequence) -> np.ndarray:
    """Components of rows that share a non-empty value in any of ``keys``.

    Args:
        *keys: Key columns of one length (e.g. ``patient_id`` and ``cluster_id``); null or
            ``""`` values link nothing.

    Returns:
        Labels as :func:`components` returns them.

    Raises:
        ValueError: If the key columns differ in length.
    """
    lengths = {len(k) for k in keys}
    if len(lengths) > 1:
        raise ValueError(f"key_components: key columns of different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    edges = [links_sharing_key(k) for k in keys]
    i = np.concatenate([e[0] for e in edges]) if edges else np.empty(0, np.int64)
    j = np.concatenate([e[1] for e in edges]) if edges else np.empty(0, np.int64)
    return components(n, i, j)
