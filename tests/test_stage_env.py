"""A stage process makes idle OpenMP threads sleep (fair share of a busy machine, issue 17 item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import os, stages, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def _probe(extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(extra, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_stage_package_sets_passive_waits_before_torch_loads():
    assert _probe({}) == "PASSIVE"


def test_a_users_wait_policy_is_kept():
    assert _probe({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_every_stage_command_runs_a_module_of_the_stages_package():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert f"-m stages.{name}" in stage["cmd"], name
