"""Contract tests: dvc.yaml and params.yaml agree, and every stage's script exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGE_ORDER = [
    "validate",
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
    "tune",
    "train",
    "evaluate",
    "report",
    "headline",
]


def test_all_stages_declared_in_order():
    assert list(DVC["stages"]) == STAGE_ORDER


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_stage_script_exists_and_is_a_dependency(name):
    stage = DVC["stages"][name]
    script = f"stages/{name}.py"
    assert (ROOT / script).is_file(), f"{script} is missing"
    # bin/python, not a bare `python`: the project's interpreter whichever way dvc was started
    assert (stage["cmd"] + " ").startswith(f"bin/python -m stages.{name} ")
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


def _imported_modules(path: Path) -> set[str]:
    """Project modules (``pipeline/x.py``, ``stages/x.py``) that ``path`` imports anywhere: at the top,
    inside functions, or under ``TYPE_CHECKING``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pipeline import x`` imports the module pipeline/x.py when there is one
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if (
                len(parts) == 2
                and parts[0] in ("pipeline", "stages")
                and (ROOT / f"{parts[0]}/{parts[1]}.py").is_file()
            ):
                found.add(f"{parts[0]}/{parts[1]}.py")
    return found


def import_closure(script: str) -> set[str]:
    """Every project module that running ``script`` can import, transitively (the script included)."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imported_modules(ROOT / path) - seen)
    return seen


def code_deps(name: str) -> list[str]:
    """What ``deps`` must list for stage ``name``: its script and its import closure, in order."""
    closure = import_closure(f"stages/{name}.py")
    return sorted(closure, key=lambda p: (not p.startswith("stages/"), p))


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_stage_code_deps_are_its_import_closure(name):
    """deps list exactly the code the stage runs, so DVC reruns it when any of that code changes
    (and only then): the script, the shared stage helper and every pipeline/ module it imports,
    directly or through other modules, at the top or inside functions."""
    code = {d for d in DVC["stages"][name]["deps"] if d.startswith(("pipeline/", "stages/"))}
    expected = set(code_deps(name))
    assert code == expected, (
        f"stage {name}: dvc.yaml deps lack {sorted(expected - code)} and list {sorted(code - expected)} "
        f"that it does not import"
    )


def test_import_closure_sees_imports_inside_functions():
    """The closure follows imports inside functions (label_issues imports the training loop lazily)."""
    closure = import_closure("stages/label_issues.py")
    assert {"pipeline/train.py", "pipeline/mixup.py", "pipeline/augment.py"} <= closure


def test_module_map_lists_every_module_once():
    modules = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    listed = [*pipeline.STAGE_LOGIC, *pipeline.FOUNDATIONS]
    assert sorted(listed) == sorted(modules), "pipeline/__init__.py's module map is out of date"
    assert set(pipeline.STAGE_LOGIC.values()) <= set(STAGE_ORDER)


@pytest.mark.parametrize("name", sorted(pipeline.FOUNDATIONS))
def test_foundations_import_no_stage_logic(name):
    closure = {Path(p).stem for p in import_closure(f"pipeline/{name}.py")}
    assert not closure & set(pipeline.STAGE_LOGIC), (
        f"foundation pipeline/{name}.py imports stage logic {sorted(closure & set(pipeline.STAGE_LOGIC))}"
    )


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


def test_tests_do_not_read_the_workspace_params():
    """The workspace params.yaml may point at the user's own data; tests build theirs from
    tests.helpers.default_params. Only the tests of the file itself read it."""
    readers = re.compile(r"""(ROOT|REPO|repo)\s*/\s*"params\.yaml"|load_params\(\s*"params\.yaml"\s*\)""")
    offenders = [
        p.name
        for p in sorted((ROOT / "tests").glob("test_*.py"))
        if p.name not in ("test_params.py", "test_contract.py") and readers.search(p.read_text())
    ]
    assert not offenders, f"tests that read the workspace params.yaml: {offenders}"
