"""End to end: `dvc repro` on a tiny demo dataset in a temporary copy of the project.

- the first `dvc repro` runs every stage and the accounting adds up;
- a second `dvc repro` runs none but `validate` (always run: it checks params.yaml and the data's place in git);
- changing one augmentation param reruns only `augment` and the stages after it;
- two clean runs with the same seed give byte-identical manifest, features, quality and split
  tables and processed arrays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.report import SECTIONS
from tests.helpers import default_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "demo": {
        "n_patients": 36,
        "n_exact_duplicates": 3,
        "n_near_duplicates": 4,
        "n_cross_patient_duplicates": 2,
        "n_blurry": 2,
        "n_dark": 2,
        "n_overexposed": 2,
        "n_blank": 2,
        "n_odd_size": 2,
        "n_corrupt": 2,
        "n_not_an_image": 1,
        "n_outliers_per_subtype": 1,
    },
    "executor": {"n_workers": 1},
    "normalize": {"image_size": 32},
    "augment": {"n_preview_images": 2, "n_preview_variants": 2},
    "model": {"width": 8},
    "label_issues": {"n_folds": 2, "auditor": "linear"},
    "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
    "evaluate": {"n_bootstrap": 20},
}


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def _make_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("pipeline", "stages", "bin"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    params = default_params()
    (dest / "params.yaml").write_text(yaml.safe_dump(_deep_update(params, TINY), sort_keys=False))
    env = _env()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dest, check=True, env=env)
    return dest


def _env() -> dict:
    env = dict(os.environ)
    # `python` and `dvc` in dvc.yaml commands must be this interpreter's.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "t")
    env.setdefault("GIT_AUTHOR_EMAIL", "t@example.org")
    return env


def _repro(project: Path, *targets: str) -> list[str]:
    """Run `dvc repro`; return the names of the stages that ran."""
    proc = subprocess.run(
        ["dvc", "repro", *targets], cwd=project, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return _make_project(tmp_path_factory.mktemp("e2e") / "a")


def test_repro_runs_every_stage_then_none(project):
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    ran = _repro(project)
    assert ran == list(dvc["stages"])
    acc = yaml.safe_load((project / "metrics/accounting.json").read_text())
    total = (
        acc["n_rejected"] + sum(acc["n_excluded"].values()) + acc["n_train"] + acc["n_val"] + acc["n_test"]
    )
    assert total == acc["n_files"]
    page = (project / "reports/audit.html").read_text(encoding="utf-8")
    for section_id, _ in SECTIONS:
        assert f'<section id="{section_id}">' in page
    assert "Nothing to show" not in page, "every stage's output should reach the report"
    assert page.count("data:image/png;base64,") >= 8
    # only `validate` (always_changed: it checks params.yaml and the data's place in git) runs again
    assert _repro(project) == ["validate"]


def test_augment_param_reruns_only_augment_and_after(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["augment"]["n_preview_variants"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _repro(project)
    assert ran[:2] == ["validate", "augment"]
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    before = set(stages[1 : stages.index("augment")])
    assert not before & set(ran), f"stages before augment reran: {sorted(before & set(ran))}"


def test_two_clean_runs_are_byte_identical(project, tmp_path):
    other = _make_project(tmp_path / "b")
    _repro(other, "normalize")
    a = project
    tables = ("manifest", "features", "quality", "splits")
    files = [f"data/interim/{t}.parquet" for t in tables] + [
        f"data/processed/{s}.npy" for s in ("train", "val", "test")
    ]
    for f in files:
        assert (a / f).read_bytes() == (other / f).read_bytes(), f"{f} differs between two clean runs"
