"""DVC experiments, the way their users run them (issue 17 items 1, 2, 3 and 5), end to end.

In a temporary git + DVC copy of the project, on a tiny demo, dvc is started as ``.venv/bin/dvc``
with no virtualenv on PATH (the system ``python`` is not the project's):

- two ``dvc exp run -S seed=...`` both run every stage (bin/python finds the project's .venv);
- ``dvc exp show --json`` holds real test metrics for both, from the one small headline file;
- neither experiment's git commit holds an image or any other DVC-cached output: data never enters git;
- an unknown top-level params section stops ``dvc repro`` even though no other stage reruns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import default_params
from tests.test_end_to_end import TINY, _deep_update

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.name == "nt", reason="stage commands use the POSIX sh launcher bin/python"),
    pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the virtualenv the project runs in"),
    pytest.mark.skipif(shutil.which("git") is None, reason="experiments need git"),
]

# the tiny end-to-end params, cheaper still: one epoch, a linear label auditor, few bootstraps
TINIER = {
    "train": {"epochs": 1},
    "shortcuts": {"n_bootstrap": 20},
    "outliers": {"max_orientation_images": 16},
}


def _env() -> dict:
    """The system folders only on PATH (no virtualenv), as in a shell that never activated one."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "MEDCURATE_PYTHON")
    }
    env.update(
        PATH=f"/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    return env


def _run(project: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("exp") / "project"
    dest.mkdir()
    for name in ("pipeline", "stages", "bin"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    params = _deep_update(_deep_update(default_params(), TINY), TINIER)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # `make` creates .venv; here it is the virtualenv running the tests
    (dest / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    dvc = str(dest / ".venv" / "bin" / "dvc")
    _run(dest, "git", "init", "-q")
    _run(dest, dvc, "init", "-q")
    _run(dest, dvc, "config", "core.analytics", "false")
    _run(dest, "git", "add", "-A")
    _run(dest, "git", "commit", "-q", "-m", "baseline")
    return dest


def test_two_experiments_compare_real_test_metrics_and_commit_no_data(project):
    dvc = str(project / ".venv" / "bin" / "dvc")
    for seed in (1, 2):
        _run(project, dvc, "exp", "run", "-n", f"seed{seed}", "-S", f"seed={seed}")
    shown = json.loads(_run(project, dvc, "exp", "show", "--json").stdout)
    experiments = {}
    for baseline in shown:
        for run in baseline.get("experiments") or []:
            for rev in run.get("revs") or []:
                if rev.get("name"):
                    experiments[rev["name"]] = rev["data"]
    assert {"seed1", "seed2"} <= set(experiments), f"experiments found: {sorted(experiments)}"
    for name in ("seed1", "seed2"):
        data = experiments[name]
        assert data["params"]["params.yaml"]["data"]["seed"] == int(name[-1])
        numbers = data["metrics"]["metrics/headline.json"]["data"]
        assert 0.0 <= numbers["test_balanced_accuracy"] <= 1.0
        assert numbers["n_train"] > 0 and numbers["n_files"] > 0
        assert len(numbers) <= 30, "the headline stays small"
    assert experiments["seed1"]["metrics"] != experiments["seed2"]["metrics"], "two seeds, two results"
    diff = json.loads(_run(project, dvc, "exp", "diff", "seed1", "seed2", "--json").stdout)
    assert "test_balanced_accuracy" in diff["metrics"]["metrics/headline.json"]

    # each experiment's commit holds the code, params, dvc.lock and the small git-tracked outputs
    # (metrics, plot tables), never an image or another cached output
    for name in ("seed1", "seed2"):
        ref = _run(
            project, "git", "for-each-ref", "--format=%(refname)", f"refs/exps/**/{name}"
        ).stdout.split()
        assert ref, f"no git ref for {name}"
        files = _run(project, "git", "ls-tree", "-r", "--name-only", ref[0]).stdout.split()
        assert {"dvc.lock", "metrics/headline.json", "metrics/test.json", "plots/roc.csv"} <= set(files)
        leaked = [
            f
            for f in files
            if f.startswith(("data/", "models/", "reports/")) and not f.endswith(".gitignore")
        ]
        assert leaked == [], f"{name} committed outputs or data into git: {leaked[:5]}"


def test_an_unknown_params_section_stops_repro_when_nothing_else_reruns(project):
    dvc = str(project / ".venv" / "bin" / "dvc")
    _run(project, dvc, "repro")  # the workspace is up to date: only `validate` runs
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["training"] = {"epochs": 5}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _run(project, dvc, "repro", check=False)
    assert proc.returncode != 0
    assert "training" in proc.stderr and "Extra inputs are not permitted" in proc.stderr
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")]
    assert ran == ["validate"]
