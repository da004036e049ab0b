"""Data never enters git: a data root or labels table that git would commit is refused (issue 17 item 3).

Each case is a tiny project folder (a git repository unless said otherwise) holding a dvc.yaml whose
stage writes ``data/demo`` (a cached DVC output, like the real demo stage).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import pipeline.workspace as workspace
from pipeline.errors import InputError
from pipeline.workspace import check_data_stays_out_of_git, find_data_git_would_commit
from stages import validate
from tests.helpers import default_params

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git program to set up repos")

DVC_YAML = "stages:\n  demo:\n    cmd: make-demo\n    outs:\n      - data/demo\n"


def _project(tmp_path: Path, git: bool = True, no_scm: bool = False) -> Path:
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = True\n" if no_scm else "[core]\n")
    (project / "dvc.yaml").write_text(DVC_YAML)
    (project / ".gitignore").write_text("/data/raw/\n")
    for folder in ("data/raw", "data/mine", "data/demo"):
        (project / folder).mkdir(parents=True)
        (project / folder / "a.png").write_bytes(b"png")
        (project / folder / "labels.csv").write_text("image_path,label,patient_id\n")
    if git:
        subprocess.run(["git", "init", "-q", str(project)], check=True)
    return project


def test_a_data_root_git_would_commit_is_refused_with_what_to_do(tmp_path):
    project = _project(tmp_path)
    with pytest.raises(InputError) as err:
        check_data_stays_out_of_git("data/mine", "data/mine/labels.csv", project)
    message = str(err.value)
    assert "data.root 'data/mine'" in message
    assert "dvc add data/mine" in message
    assert "data.labels" not in message, "a table inside the refused root needs no second message"


def test_ignored_dvc_added_dvc_output_and_outside_data_are_fine(tmp_path):
    project = _project(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert (
        find_data_git_would_commit({"data.root": "data/raw", "data.labels": "data/raw/labels.csv"}, project)
        == []
    )
    # data/demo is an output of a dvc.yaml stage: DVC git-ignores it when it writes it, even before
    assert find_data_git_would_commit({"data.root": "data/demo", "data.labels": None}, project) == []
    assert find_data_git_would_commit({"data.root": str(outside), "data.labels": None}, project) == []
    # `dvc add data/mine` writes data/mine.dvc (and a .gitignore entry; the .dvc file alone suffices)
    (project / "data" / "mine.dvc").write_text("outs:\n- path: mine\n")
    assert find_data_git_would_commit({"data.root": "data/mine", "data.labels": None}, project) == []


def test_a_labels_table_git_would_commit_is_refused_even_when_the_root_is_ignored(tmp_path):
    project = _project(tmp_path)
    problems = find_data_git_would_commit(
        {"data.root": "data/raw", "data.labels": "data/mine/labels.csv"}, project
    )
    assert len(problems) == 1 and problems[0].startswith("data.labels 'data/mine/labels.csv'")


def test_no_git_repository_or_dvc_without_git_has_nothing_to_refuse(tmp_path):
    assert (
        find_data_git_would_commit(
            {"data.root": "data/mine", "data.labels": None}, _project(tmp_path / "a", git=False)
        )
        == []
    )
    project = _project(tmp_path / "b", no_scm=True)
    assert find_data_git_would_commit({"data.root": "data/mine", "data.labels": None}, project) == []


def test_without_the_git_program_pygit2_answers_the_same(tmp_path, monkeypatch):
    pytest.importorskip("pygit2")
    project = _project(tmp_path)
    monkeypatch.setattr(workspace.shutil, "which", lambda name: None)
    assert len(find_data_git_would_commit({"data.root": "data/mine", "data.labels": None}, project)) == 1
    assert find_data_git_would_commit({"data.root": "data/raw", "data.labels": None}, project) == []


def test_the_validate_and_ingest_stages_refuse_it(tmp_path, monkeypatch):
    import yaml

    from stages import ingest

    project = _project(tmp_path)
    params = default_params()
    params["data"] = {"root": "data/mine", "labels": "data/mine/labels.csv", "truth": None}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    for main, extra in (
        (validate.main, []),
        (ingest.main, ["--manifest", "m", "--features", "f", "--rejected", "r", "--metrics", "j"]),
    ):
        with pytest.raises(InputError, match="neither git-ignored nor DVC-tracked"):
            main(["--params", "params.yaml", *extra])
    assert not (project / "m").exists()


def test_the_validate_stage_catches_an_unknown_params_section(tmp_path, monkeypatch):
    """Every stage validates params.yaml when it runs; `validate` always runs, so a misspelt section
    (`training:` for `train:`) stops `dvc repro` even when nothing else would rerun."""
    import yaml

    params = default_params()
    params["training"] = {"epochs": 5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"training: Extra inputs are not permitted"):
        validate.main(["--params", "params.yaml"])
    del params["training"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert validate.main(["--params", "params.yaml"]) == 0
