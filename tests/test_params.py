"""params.yaml validates, and bad params fail at load with the key path in the message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.params import load_params, parse_params
from tests.helpers import default_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return default_params()


def test_params_yaml_validates():
    """The workspace params.yaml (the shipped one, or the user's) validates."""
    params = load_params(ROOT / "params.yaml")
    assert (
        abs(params.split.train_fraction + params.split.val_fraction + params.split.test_fraction - 1) < 1e-9
    )


def test_params_yaml_is_complete():
    """Every field of every section is written out, so DVC tracks exactly what runs."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    for name, section in params:
        if isinstance(section, BaseModel):
            missing = sorted(set(type(section).model_fields) - set(raw.get(name) or {}))
            assert not missing, f"params.yaml section {name!r} lacks keys {missing}"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("quality", "dark_treshold"), 0.1, "quality.dark_treshold: Extra inputs are not permitted"),
        (("split", "train_fraction"), "lots", "split.train_fraction: Input should be a valid number"),
        (
            ("split", "train_fraction"),
            0.9,
            "split: Value error, train_fraction + val_fraction + test_fraction must be 1",
        ),
        (("dedup", "max_distance"), 65, "dedup.max_distance: Input should be less than or equal to 64"),
        (("normalize", "mode"), "zscore", "normalize.mode: Input should be"),
        (
            ("curate", "exclude_issues"),
            ["blurry", "fuzzy"],
            "curate.exclude_issues: Value error, unknown issue(s) ['fuzzy']",
        ),
        (("seed",), "x", "seed: Input should be a valid integer"),
    ],
)
def test_bad_params_name_the_key(raw, path, value, expected):
    bad = copy.deepcopy(raw)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError) as err:
        parse_params(bad, source="params.yaml")
    assert f"params.yaml: {expected}" in str(err.value)


def test_unknown_section_and_missing_data(raw):
    bad = copy.deepcopy(raw)
    bad["trian"] = {}
    del bad["data"]
    with pytest.raises(ValueError) as err:
        parse_params(bad, source="p.yaml")
    assert "p.yaml: trian: Extra inputs are not permitted" in str(err.value)
    assert "p.yaml: data: Field required" in str(err.value)


def test_not_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(bad)


def test_the_shipped_params_yaml_is_the_defaults():
    """params.yaml as committed equals the models' defaults on the demo data, so the README's default
    column, the code and the file agree (the workspace copy may point at the user's own data)."""
    import subprocess

    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip("not a git checkout with a committed params.yaml")
    assert parse_params(yaml.safe_load(shown.stdout)) == parse_params(default_params())
