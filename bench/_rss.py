"""Peak resident memory of a command, for the memory benchmarks (not a benchmark itself).

:func:`run_with_peak_rss` runs the command through a tiny wrapper process that reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest resident set of the command and of
every process it waited for (pool workers included), each taken alone (Linux semantics).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


def run_with_peak_rss(cmd: list[str], what: str) -> tuple[float, float]:
    """Run ``cmd`` from the repo root; returns (peak RSS in MiB, wall seconds).

    Raises:
        SystemExit: When the command fails (its last stderr lines are shown, named by ``what``).
    """
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, wall
