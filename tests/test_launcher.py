"""bin/python, the interpreter of every stage command, whichever way dvc was started (issue 17 item 1).

A fake ``python3`` that lacks the project's dependencies stands first on PATH, as the system
interpreter does when ``.venv/bin/dvc`` runs without the venv activated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="bin/python is a POSIX sh script"),
    pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the tests link to the virtualenv they run in"),
]

PRINT_PYTHON = ["-c", "import sys; print(sys.executable)"]


def _copy_launcher(project: Path) -> Path:
    (project / "bin").mkdir(parents=True)
    shutil.copy2(ROOT / "bin" / "python", project / "bin" / "python")
    return project / "bin" / "python"


def _link_env(where: Path) -> Path:
    """``where`` becomes (a link to) the virtualenv running the tests; returns its bin/python."""
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(sys.prefix, target_is_directory=True)
    return where / "bin" / "python"


def _bare_env(tmp_path: Path, **extra: str) -> dict:
    """PATH = a folder whose python3 and python lack every dependency, then the system folders."""
    fake = tmp_path / "fake_bin"
    fake.mkdir(exist_ok=True)
    for name in ("python3", "python"):
        (fake / name).write_text("#!/bin/sh\nexit 1\n")
        (fake / name).chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "MEDCURATE_PYTHON")
    }
    env["PATH"] = f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env.update(extra)
    return env


def _run(launcher: Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(launcher), *PRINT_PYTHON], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_project_venv_is_used_when_path_has_the_wrong_python(tmp_path):
    project = tmp_path / "project"
    launcher = _copy_launcher(project)
    venv_python = _link_env(project / ".venv")
    proc = _run(launcher, _bare_env(tmp_path), project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(venv_python)


def test_a_dvc_exp_run_temp_copy_uses_the_projects_venv(tmp_path):
    project = tmp_path / "project"
    venv_python = _link_env(project / ".venv")
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    launcher = _copy_launcher(copy)
    proc = _run(launcher, _bare_env(tmp_path), copy)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(venv_python)


def test_an_activated_environment_or_medcurate_python_comes_first(tmp_path):
    project = tmp_path / "project"
    launcher = _copy_launcher(project)
    env_dir = tmp_path / "conda_env"
    env_python = _link_env(env_dir)
    proc = _run(launcher, _bare_env(tmp_path, CONDA_PREFIX=str(env_dir)), project)
    assert proc.stdout.strip() == str(env_python), proc.stderr
    proc = _run(
        launcher, _bare_env(tmp_path, CONDA_PREFIX=str(env_dir), MEDCURATE_PYTHON=sys.executable), project
    )
    assert proc.stdout.strip() == sys.executable, proc.stderr


def test_an_environment_without_the_dependencies_is_passed_over(tmp_path):
    """conda's base environment, activated in every shell, lacks them: the project's .venv runs."""
    project = tmp_path / "project"
    launcher = _copy_launcher(project)
    venv_python = _link_env(project / ".venv")
    base = tmp_path / "base_env"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # lacks everything
    (base / "bin" / "python").chmod(0o755)
    proc = _run(launcher, _bare_env(tmp_path, CONDA_PREFIX=str(base)), project)
    assert proc.stdout.strip() == str(venv_python), proc.stderr


def test_no_usable_python_is_one_error_line_that_says_what_to_do(tmp_path):
    project = tmp_path / "project"
    launcher = _copy_launcher(project)
    proc = _run(launcher, _bare_env(tmp_path), project)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: no Python environment with medcurate's dependencies"
    )
    assert "make repro" in lines[0] and "MEDCURATE_PYTHON" in lines[0]
    assert "python3 (lacks the project's dependencies)" in lines[0]
