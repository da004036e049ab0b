"""One helper for per-image work: a chunked map with a progress bar, results in input order.

Every per-image stage (ingest, quality, dedup, normalize) runs its work through
:func:`map_chunks`. The same picklable function runs in-process (one worker), in a local
process pool (default) or on a Dask cluster (``executor.kind: dask``), so the result does not
depend on where it ran.

Pool workers die with their parent: each watches its parent process id and exits when it changes
(the parent was killed, even by ``kill -9``, and the worker was re-parented), so no orphan keeps
decoding after an interrupted stage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm.auto import tqdm

from pipeline.errors import InputError
from pipeline.params import ExecutorParams

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def n_workers(executor: ExecutorParams) -> int:
    """Number of worker processes to use (``executor.n_workers`` or the CPU count)."""
    if executor.n_workers is not None:
        return executor.n_workers
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _run_chunk(func: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [func(item) for item in chunk]


_ORPHAN_POLL_S = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: a daemon thread ends this process once its parent is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_ORPHAN_POLL_S)
        os._exit(1)  # the parent died: nobody will read our results

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def map_chunks(
    func: Callable[[T], R],
    items: Sequence[T],
    executor: ExecutorParams | None = None,
    desc: str = "images",
) -> Iterator[list[R]]:
    """Apply ``func`` to every item, yielding results chunk by chunk, in input order.

    Yielding chunks (not one big list) lets callers stream results to disk so memory does not
    grow with the number of images. At most ``2 * workers`` chunks are in flight at once.

    Args:
        func: A picklable (module-level) function of one item. It should not raise for bad
            data: a bad image is a result with a reason, not an exception.
        items: The inputs, e.g. ``(path, options)`` tuples.
        executor: Where to run; ``None`` means in-process.
        desc: Label of the progress bar.

    Yields:
        Lists of results, one per chunk of ``executor.chunk_size`` items, in input order.
    """
    executor = executor or ExecutorParams(n_workers=1)
    size = executor.chunk_size
    chunks = list(_chunks(items, size))
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=None, mininterval=1.0)
    try:
        if executor.kind == "dask":
            yield from _map_dask(func, chunks, executor, bar)
            return
        workers = n_workers(executor)
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                out = _run_chunk(func, chunk)
                bar.update(len(chunk))
                yield out
            return
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            pending: list = []
            it = iter(chunks)
            for chunk in it:
                pending.append((len(chunk), pool.submit(_run_chunk, func, chunk)))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                n, fut = pending.pop(0)
                out = fut.result()
                bar.update(n)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((len(nxt), pool.submit(_run_chunk, func, nxt)))
                yield out
    finally:
        bar.close()


def _map_dask(
    func: Callable[[T], R], chunks: list[Sequence[T]], executor: ExecutorParams, bar: Any
) -> Iterator[list[R]]:
    from dask.distributed import Client, LocalCluster

    cluster = None
    if executor.address:
        client = _connect(executor.address)
    else:
        cluster = LocalCluster(
            n_workers=executor.n_workers or 2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        window = 2 * max(1, len(client.scheduler_info().get("workers", {})) or 1)
        pending: list = []
        it = iter(chunks)
        for chunk in it:
            pending.append((len(chunk), client.submit(_run_chunk, func, list(chunk), pure=False)))
            if len(pending) >= window:
                break
        while pending:
            n, fut = pending.pop(0)
            out = fut.result()
            fut.release()
            bar.update(n)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((len(nxt), client.submit(_run_chunk, func, list(nxt), pure=False)))
            yield out
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(address: str) -> Any:
    """A Dask client of the scheduler at ``address``.

    Raises:
        InputError: Naming ``executor.address`` when the scheduler cannot be reached (a refused
            TCP connection is reported at once rather than after Dask's 30 s of retries).
    """
    from dask.distributed import Client

    host, sep, port = address.removeprefix("tcp://").rpartition(":")
    if address.startswith("tcp://") and sep and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as err:
            raise InputError(
                f"executor.address: cannot reach the Dask scheduler at {address}: {err.strerror or err}"
            ) from err
    try:
        return Client(address)
    except (OSError, TimeoutError) as err:
        raise InputError(
            f"executor.address: cannot connect to the Dask scheduler at {address}: {err}"
        ) from err


def map_images(
    func: Callable[[T], R],
    items: Sequence[T],
    executor: ExecutorParams | None = None,
    desc: str = "images",
) -> list[R]:
    """Like :func:`map_chunks` but returns one flat list (for results that are small per image)."""
    out: list[R] = []
    for chunk in map_chunks(func, items, executor, desc):
        out.extend(chunk)
    return out
