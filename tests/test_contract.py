"""Contract tests: dvc.yaml and params.yaml agree, and every stage's script exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGE_ORDER = [
    "demo_data",
    "ingest",
    "quality",
    "dedup",
    "outliers",
    "curate",
    "split",
    "normalize",
    "augment",
    "label_issues",
    "shortcuts",
    "accounting",
    "train",
    "evaluate",
    "report",
]


def test_all_stages_declared_in_order():
    assert list(DVC["stages"]) == STAGE_ORDER


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_stage_script_exists_and_is_a_dependency(name):
    stage = DVC["stages"][name]
    script = f"stages/{name}.py"
    assert (ROOT / script).is_file(), f"{script} is missing"
    assert f"python -m stages.{name} " in stage["cmd"] + " "
    assert script in stage["deps"], f"stage {name} does not depend on its own script"
    for dep in stage["deps"]:
        if dep.startswith("pipeline/"):
            assert (ROOT / dep).is_file(), f"stage {name} depends on missing module {dep}"


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_stage_params_exist(name):
    for key in DVC["stages"][name].get("params", []):
        node = PARAMS
        for part in key.split("."):
            assert part in node, f"stage {name} tracks params key {key!r} that params.yaml lacks"
            node = node[part]


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_stage_imports_only_modules_it_depends_on(name):
    """A stage that imports pipeline.X must list pipeline/X.py in deps, so DVC reruns it."""
    text = (ROOT / f"stages/{name}.py").read_text()
    imported = set(re.findall(r"from pipeline\.(\w+) import|import pipeline\.(\w+)", text))
    modules = {a or b for a, b in imported} - {"params", "io", "contract"}
    deps = set(DVC["stages"][name]["deps"])
    missing = sorted(m for m in modules if f"pipeline/{m}.py" not in deps)
    assert not missing, f"stage {name} imports {missing} but dvc.yaml deps lack them"


def test_every_params_section_is_modelled():
    assert set(PARAMS) <= set(Params.model_fields)


def test_readme_documents_every_params_key():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for section, body in PARAMS.items():
        keys = body if isinstance(body, dict) else {section: body}
        for key in keys:
            if f"`{key}`" not in readme and f"`{section}.{key}`" not in readme:
                missing.append(f"{section}.{key}" if isinstance(body, dict) else key)
    assert not missing, f"README.md does not document params keys {missing}"


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#")[0].strip() for line in quick.split("```bash", 1)[1].split("```", 1)[0].splitlines()
    ]
    assert [c for c in commands if c] == ["make repro", "make test"]
