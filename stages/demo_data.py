"""Stage ``demo_data``: generate the embedded synthetic dataset with planted problems.

Reads: nothing but params.
Writes: ``<out>/images/<patient>/<patient>_<nn>.png|.jpg``, ``<out>/labels.csv``
(image_path,label,patient_id) and ``<out>/truth.json`` (the planted problems).
Params: ``seed``, ``demo.*``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.demo import generate_demo, summarize
from pipeline.params import load_params
from stages._cli import run

log = logging.getLogger("stages.demo_data")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="Dataset folder to (re)write.")
    args = parser.parse_args(argv)

    params = load_params(args.params)
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
