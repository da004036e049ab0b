"""The pipeline's stage scripts (``python -m stages.<name>``), one per dvc.yaml stage.

Importing this package (which ``python -m stages.x`` does before the stage imports torch) makes
idle OpenMP threads sleep instead of spin-waiting (``OMP_WAIT_POLICY=PASSIVE``, unless the
environment already sets it). torch's CPU backend, scikit-learn and OpenCV run their parallel
loops on OpenMP; by default an idle thread spins for a while before it sleeps, which costs nothing
on an idle machine but, when other jobs share the cores, burns the share the working threads
need: bench/cpu_contention.py measured CPU training next to 4 busy processes on 2 cores at 3x the
CPU time and 2.8x the fair-share slowdown with spinning, 1.1x with passive waits (README, *Scaling
up*). libgomp reads the variable once, when it is loaded, so it must be set before the first
import of torch / sklearn / cv2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
