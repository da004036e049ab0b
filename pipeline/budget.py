"""A wall-clock budget for the work on one file (``ingest.max_seconds_per_file``).

:func:`time_budget` arms ``SIGALRM`` for the duration of a ``with`` block; when it fires, the
signal handler raises :class:`FileTimeout` in the worker, the file is rejected as ``timeout`` and
the run goes on. The exception is a ``BaseException`` (like ``KeyboardInterrupt``) so that the
decoders' own ``except Exception`` clauses, which turn library errors into ``unreadable``, do not
swallow it.

Limits: Python delivers the signal between bytecodes, so it interrupts Python-level loops (Pillow
walking TIFF frames or reading a file block by block, pydicom's RLE decoder) but a single native
call (one ``cv2.imdecode``, bounded by ``max_pixels``) finishes first. Signals reach only the main
thread: elsewhere (Dask runs tasks in threads) the budget is checked when the work ends, so an
over-budget file is still rejected, only not interrupted.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class FileTimeout(BaseException):
    """The work on one file ran past its budget (a ``BaseException``: see the module docstring)."""


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Raise :class:`FileTimeout` in the block once ``seconds`` of wall-clock time have passed.

    Args:
        seconds: The budget; ``None`` means unlimited.

    Raises:
        FileTimeout: When the budget runs out (inside the block, or at its end where no signal
            can be used).
    """
    if seconds is None:
        yield
        return
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        start = time.monotonic()
        yield
        if time.monotonic() - start > seconds:
            raise FileTimeout(f"took more than {seconds:g} s")
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise FileTimeout(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
