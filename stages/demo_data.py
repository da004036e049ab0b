"""Stage ``demo_data``: generate the embedded synthetic dataset with planted problems.

Reads: nothing but params.
Writes: ``<out>/images/<patient>/<patient>_<nn>.png|.jpg``, ``<out>/labels.csv``
(image_path,label,patient_id) and ``<out>/truth.json`` (the planted problems).
Params: ``seed``, ``demo.*``.
"""

from __future__ import annotations

import logging

from pipeline.demo import generate_demo, summarize
from stages._cli import run, start

log = logging.getLogger("stages.demo_data")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, "--out")
    truth = generate_demo(args.out, params.demo, params.seed)
    n_files = sum(1 for p in (args.out / "images").rglob("*") if p.is_file())
    log.info(
        "wrote %d files for %d patients to %s (seed %d)",
        n_files,
        params.demo.n_patients,
        args.out,
        params.seed,
    )
    for kind, count in summarize(truth).items():
        log.info("planted %-24s %4d", kind, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
