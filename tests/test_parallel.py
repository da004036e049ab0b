"""map_chunks: same results, same order, wherever it runs (in-process, process pool, Dask)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.ingest import FileTask, ingest_file
from pipeline.parallel import map_chunks, map_images
from pipeline.params import ExecutorParams


def _images(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(3)
    names = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((16, 8 + i % 5)) * 255).astype(np.uint8)).save(buf, format="PNG")
        data = buf.getvalue() if i % 7 else buf.getvalue()[:40]  # some truncated files
        (root / f"im{i:03d}.png").write_bytes(data)
        names.append(f"im{i:03d}.png")
    return names


def _rows(results) -> list[tuple]:
    return [(r.row["image_id"], r.row["sha256"], r.row["width"], r.row["reason"], r.detail) for r in results]


def test_chunks_are_yielded_in_input_order_process_pool_vs_in_process(tmp_path: Path):
    names = _images(tmp_path, 23)
    tasks = [FileTask(root=str(tmp_path), path=n, label="a", patient_id="p") for n in names]
    local = map_images(ingest_file, tasks, None)
    pool_chunks = list(map_chunks(ingest_file, tasks, ExecutorParams(n_workers=2, chunk_size=4)))
    assert [len(c) for c in pool_chunks] == [4, 4, 4, 4, 4, 3]
    pooled = [r for c in pool_chunks for r in c]
    assert [r.row["path"] for r in pooled] == names
    assert _rows(pooled) == _rows(local)
    assert [r.features for r in pooled] == [r.features for r in local]
    assert sum(r.row["reason"] == "truncated" for r in local) == 4


def test_map_chunks_handles_empty_input():
    assert list(map_chunks(ingest_file, [], ExecutorParams(n_workers=2))) == []


@pytest.mark.slow  # ~15 s on 2 busy cores: starting a LocalCluster with 2 worker processes
def test_dask_local_cluster_gives_identical_results(tmp_path: Path):
    pytest.importorskip("dask.distributed")
    names = _images(tmp_path, 15)
    # has_label=False: decode + hash on the workers without importing the feature code (which
    # pulls in torch through imagededup and would make each fresh Dask worker slow to start)
    tasks = [FileTask(root=str(tmp_path), path=n, has_label=False) for n in names]
    pooled = map_images(ingest_file, tasks, ExecutorParams(kind="process", n_workers=2, chunk_size=4))
    dasked = map_images(ingest_file, tasks, ExecutorParams(kind="dask", n_workers=2, chunk_size=4))
    assert [r.row["path"] for r in dasked] == names
    assert _rows(dasked) == _rows(pooled)
