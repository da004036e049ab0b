"""What every stage script shares: its command line, params loading, and how errors end.

A stage script is ``main(argv=None)``: ``args, params = start(__doc__, argv, "--manifest", ...)``,
read its inputs, call one ``pipeline`` function, write its outputs; ``raise SystemExit(run(main))``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import InputError
from pipeline.params import Params, load_params


def start(
    doc: str, argv: list[str] | None, *required: str, optional: tuple[str, ...] = ()
) -> tuple[argparse.Namespace, Params]:
    """Set up logging, parse the stage's path arguments and load its params.

    Args:
        doc: The stage's module docstring (its first line is the ``--help`` description).
        argv: The arguments (None: ``sys.argv[1:]``).
        required: Flags of required path arguments (``"--manifest"``, ...).
        optional: Flags of optional path arguments (default None).

    Returns:
        ``(args, params)``: every flag as a ``Path`` (``args.params`` too), and the validated params.

    Raises:
        InputError: params.yaml is missing or does not validate.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    for flag in required:
        ap.add_argument(flag, type=Path, required=True)
    for flag in optional:
        ap.add_argument(flag, type=Path, default=None)
    args = ap.parse_args(argv)
    return args, load_params(args.params)


def run(main: Callable[[], int]) -> int:
    """Call a stage's ``main``; report an :class:`InputError` as ``error: <message>``, exit status 2.

    Any other exception is a bug and keeps its traceback. Set ``MEDCURATE_DEBUG=1`` to see the
    traceback of an ``InputError`` too.
    """
    try:
        return main()
    except InputError as err:
        if os.environ.get("MEDCURATE_DEBUG"):
            raise
        logging.getLogger("stages").debug("stage failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
