"""headline stage: the few numbers ``dvc metrics show`` and ``dvc exp show`` compare.

Reads:  the stages' metrics (``--metrics`` folder: accounting, dedup, outliers, label_issues,
        shortcuts, train, test, subgroups, demo_truth .json; a missing file leaves its numbers out).
Writes: ``--out`` (metrics/headline.json): one flat mapping of ~20 numbers (pipeline.headline), the
        only file dvc.yaml declares as metrics.
Params: none.
"""

from __future__ import annotations

import logging

from pipeline.headline import headline
from pipeline.io import read_json, write_json
from stages._cli import run, start

logger = logging.getLogger("stages.headline")

SOURCES = (
    "accounting",
    "dedup",
    "outliers",
    "label_issues",
    "shortcuts",
    "train",
    "test",
    "subgroups",
    "demo_truth",
)


def main(argv: list[str] | None = None) -> int:
    args, _params = start(__doc__, argv, "--metrics", "--out")
    found = {name: args.metrics / f"{name}.json" for name in SOURCES}
    numbers = headline({name: read_json(path) if path.is_file() else None for name, path in found.items()})
    write_json(numbers, args.out)
    logger.info("%d headline numbers -> %s", len(numbers), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
