"""Data never enters git: find a data root or labels table that git would commit.

``dvc exp run`` commits every file of the workspace that git does not ignore into the experiment's
git ref, and ``git add -A`` does the same for a commit: a data folder inside the project that is
neither git-ignored nor DVC-tracked ends up in git history (with patient data, a leak). A path is
safe when

* the project is not a git repository, or DVC was set up without git (``dvc init --no-scm``);
* it lies outside the project's git work tree;
* git ignores it (``.gitignore``, ``.git/info/exclude``, ``core.excludesFile``; asked of
  ``git check-ignore``, or of pygit2, DVC's own git library, where the git program is missing);
* DVC tracks it: a ``<path>.dvc`` file (``dvc add``) for it or a folder holding it, or a cached
  output of a ``dvc.yaml`` stage (DVC git-ignores both once it writes them; ``data/demo`` is one).

This is a property of the workspace, not of the data's content, so DVC's change detection cannot
see it: the always-run ``validate`` stage checks it on every ``dvc repro`` / ``dvc exp run``, and
``ingest`` checks it again before it reads a file.
"""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from pipeline.errors import InputError

logger = logging.getLogger(__name__)


def _git_toplevel(project: Path) -> Path | None:
    """The git work tree holding ``project``, or None (no git repository, or no way to ask)."""
    if shutil.which("git"):
        proc = subprocess.run(
            ["git", "-C", str(project), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},  # git's messages in English, to tell the cases apart
        )
        if proc.returncode == 0:
            return Path(proc.stdout.strip()).resolve()
        if "not a git repository" not in proc.stderr:  # e.g. git's "dubious ownership" refusal
            logger.warning("cannot check that the data stays out of git: %s", proc.stderr.strip())
        return None
    try:
        import pygit2
    except ImportError:
        logger.warning("neither git nor pygit2 is available: cannot check that the data stays out of git")
        return None
    found = pygit2.discover_repository(str(project))
    if not found:
        return None
    workdir = pygit2.Repository(found).workdir
    return Path(workdir).resolve() if workdir else None


def _is_git_ignored(top: Path, rel: str) -> bool:
    """Whether git ignores ``rel`` (a path relative to the work tree ``top``; a trailing ``/``
    marks a folder, so that folder-only patterns such as ``/data/raw/`` match before it exists)."""
    if shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(top), "check-ignore", "-q", "--", rel], check=False)
        if proc.returncode not in (0, 1):
            raise InputError(f"git check-ignore {rel!r} failed (exit status {proc.returncode}) in {top}")
        return proc.returncode == 0
    import pygit2

    return bool(pygit2.Repository(str(top)).path_is_ignored(rel))


def _has_no_scm(project: Path) -> bool:
    """DVC set up without git (``dvc init --no-scm`` writes ``core.no_scm = true``)."""
    config = configparser.ConfigParser()
    try:
        config.read(project / ".dvc" / "config", encoding="utf-8")
    except configparser.Error:
        return False
    return config.get("core", "no_scm", fallback="false").strip().lower() in ("true", "1", "yes")


def _dvc_outputs(project: Path) -> list[Path]:
    """Cached outputs of the project's ``dvc.yaml`` stages (literal paths only)."""
    dvc_yaml = project / "dvc.yaml"
    if not dvc_yaml.is_file():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    found = []
    for stage in stages.values():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if "${" not in path and (opts or {}).get("cache", True):
                found.append((project / path).resolve())
    return found


def _is_dvc_tracked(path: Path, top: Path, outputs: list[Path]) -> bool:
    for folder in (path, *path.parents):
        if folder.with_name(folder.name + ".dvc").is_file():
            return True
        if folder == top:
            break
    return any(path == out or path.is_relative_to(out) for out in outputs)


def find_data_git_would_commit(paths: dict[str, str | None], project: Path | None = None) -> list[str]:
    """Which of ``paths`` git would commit (see the module docstring for what is safe).

    Args:
        paths: ``{"data.root": folder, "data.labels": file or None}``; a key ending in ``root``
            names a folder. Relative paths are relative to ``project``.
        project: The project folder (default: the current directory, where DVC runs stages).

    Returns:
        One message per unsafe path, naming the params key, the path and what to do; empty when
        every path is safe.
    """
    project = (project or Path.cwd()).resolve()
    if _has_no_scm(project):
        return []
    top = _git_toplevel(project)
    if top is None:
        return []
    outputs = _dvc_outputs(project)
    problems, unsafe_folders = [], []
    for key, value in paths.items():
        if not value:
            continue
        path = (project / Path(value).expanduser()).resolve()
        if not path.is_relative_to(top) or path == top:
            continue
        if any(path.is_relative_to(folder) for folder in unsafe_folders):
            continue  # a labels table inside an unsafe root: one message is enough
        is_folder = key.endswith("root") or path.is_dir()
        rel = path.relative_to(top).as_posix() + ("/" if is_folder else "")
        if _is_git_ignored(top, rel) or _is_dvc_tracked(path, top, outputs):
            continue
        if is_folder:
            unsafe_folders.append(path)
        add = path.relative_to(project).as_posix() if path.is_relative_to(project) else str(path)
        problems.append(
            f"{key} {value!r} is inside the git work tree {top} and neither git-ignored nor DVC-tracked: "
            f"`git commit` or `dvc exp run` would put it into git history. Version it with DVC "
            f"(`dvc add {add}`, which also git-ignores it), add it to .gitignore, or keep it outside the "
            f"project (data/raw/ is ignored already)"
        )
    return problems


def check_data_stays_out_of_git(root: str, labels: str | None, project: Path | None = None) -> None:
    """Stop when git would commit the data root or the labels table.

    Raises:
        InputError: One of them lies in the project's git work tree, not ignored, not DVC-tracked.
    """
    problems = find_data_git_would_commit({"data.root": root, "data.labels": labels}, project)
    if problems:
        raise InputError("; ".join(problems))
