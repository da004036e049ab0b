"""pipeline.contract helpers: the one missing-columns check and its message."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.contract import require_columns
from pipeline.errors import InputError


def test_present_columns_pass() -> None:
    require_columns(pd.DataFrame(columns=["image_id", "label"]), ["label", "image_id"], "manifest")
    require_columns(pd.DataFrame(), [], "empty")


def test_missing_columns_are_named_in_order_with_the_table_and_what_it_has() -> None:
    table = pd.DataFrame(columns=["image_id", "width"])
    with pytest.raises(InputError) as err:
        require_columns(table, ["image_id", "status", "height"], "manifest.parquet", hint="needed by dedup")
    assert str(err.value) == (
        "manifest.parquet: missing column(s) ['status', 'height']; needed by dedup; got ['image_id', 'width']"
    )
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working
