"""dvclive logging of training curves, confined to files (no DVC experiment, no dvc.yaml edits)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LIVE_METRICS = ("train_loss", "val_loss", "val_balanced_accuracy", "val_auroc", "lr")


def open_live(directory: str | Path) -> Any:
    """A dvclive logger that only writes files under ``directory``.

    ``dvcyaml=None``: dvclive must not edit dvc.yaml (the plots are declared there);
    ``save_dvc_exp=False``: no DVC experiment is created. Curves land in
    ``<directory>/plots/metrics/<name>.tsv`` with a ``step`` column (= epoch).
    """
    import dvclive.live
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    def make() -> Any:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)

    try:
        return make()
    except SCMError:
        # dvclive asks git for the current revision and fails in a repository with no commit
        # yet (a fresh `git init`). We need no revision (no experiments), so log without DVC.
        original = dvclive.live.get_dvc_repo
        dvclive.live.get_dvc_repo = lambda: None
        try:
            return make()
        finally:
            dvclive.live.get_dvc_repo = original


def log_live(live: Any, record: dict[str, float]) -> None:
    """Log one epoch record (undefined metrics, e.g. NaN AUROC, are skipped) and advance the step."""
    for name in LIVE_METRICS:
        value = record.get(name)
        if value is not None and math.isfinite(value):
            live.log_metric(name, value)
    live.next_step()
