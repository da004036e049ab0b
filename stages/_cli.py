"""Shared entry point of the stage scripts: user errors end in one clear line, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

# Errors our code raises for bad configuration or bad input (bad params, a bad labels table, a
# missing folder). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def run(main: Callable[[], int]) -> int:
    """Call a stage's ``main``; report a user error as ``error: <message>`` and exit status 2.

    Set ``MEDCURATE_DEBUG=1`` to see the full traceback as well.
    """
    try:
        return main()
    except USER_ERRORS as err:
        if os.environ.get("MEDCURATE_DEBUG"):
            raise
        logging.getLogger("stages").debug("stage failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
