"""validate stage: check the whole params.yaml and that the data stays out of git, on every run.

Runs on every ``dvc repro`` / ``dvc exp run`` (``always_changed: true`` in dvc.yaml), first, and
writes nothing, so it reruns no other stage. Every stage validates params.yaml when it runs, but
when nothing else reruns, a mistake (an unknown section such as ``training:``, a typo in a key) would
otherwise pass in silence; and whether git would commit the data is a property of the workspace
that no stage's inputs show DVC.

Reads:  params.yaml (all of it); the project's git and DVC setup (pipeline.workspace).
Params: all (validated); data.root and data.labels (must not be committed by git).
Stops (one ``error:`` line) on an invalid params.yaml or a data root / labels table that git would
commit.
"""

from __future__ import annotations

import logging

from pipeline.workspace import check_data_stays_out_of_git
from stages._cli import run, start

logger = logging.getLogger("stages.validate")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv)
    check_data_stays_out_of_git(params.data.root, params.data.labels)
    logger.info("%s is valid; data.root %s stays out of git", args.params, params.data.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
