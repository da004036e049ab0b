"""Compare the outputs of two pipeline runs (e.g. before and after a refactoring that must change nothing).

Usage: ``python bench/_compare_runs.py RUN_A RUN_B`` where each is a project folder after ``dvc repro``.
Prints one line per output: tables, arrays, reports and augmentation files byte for byte, the model's tensors
one by one, ``metrics/*.json`` apart from timing fields; for features/quality tables that differ, which
columns differ and by how much. Exit status 0 when everything is identical.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch

PATTERNS = (
    "data/interim/*.parquet",
    "data/processed/*",
    "reports/*.csv",
    "reports/**/*.csv",
    "reports/**/*.png",
    "models/augment/*",
)
TIMING = ("seconds", "time", "elapsed", "duration", "per_second")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _column_diffs(a: Path, b: Path) -> None:
    ta, tb = pd.read_parquet(a), pd.read_parquet(b)
    if list(ta.columns) != list(tb.columns) or len(ta) != len(tb):
        print(f"      {a.name}: columns or row counts differ")
        return
    for col in (c for c in ta.columns if not ta[c].equals(tb[c])):
        try:
            d = (ta[col].astype(float) - tb[col].astype(float)).abs()
            print(
                f"      {a.name}: {col} differs in {(d > 0).sum()} of {len(ta)} rows, max |diff| {d.max():.2e}"
            )
        except (TypeError, ValueError):
            print(f"      {a.name}: {col} differs ({(ta[col] != tb[col]).sum()} rows)")


def main(argv: list[str]) -> int:
    a, b = Path(argv[0]), Path(argv[1])
    ok = True
    for pattern in PATTERNS:
        fa = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
        fb = sorted(p.relative_to(b) for p in b.glob(pattern) if p.is_file())
        for rel in sorted(set(fa) ^ set(fb)):
            print(f"ONLY IN ONE  {rel}")
            ok = False
        for rel in sorted(set(fa) & set(fb)):
            same = _sha(a / rel) == _sha(b / rel)
            print(f"{'same ' if same else 'DIFF '}        {rel}")
            if not same and rel.suffix == ".parquet":
                _column_diffs(a / rel, b / rel)
            ok &= same
    sa = torch.load(a / "models/model.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "models/model.pt", weights_only=True)["state_dict"]
    same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    print(f"{'same ' if same else 'DIFF '}        models/model.pt ({len(sa)} tensors compared)")
    ok &= same
    for path in sorted((a / "metrics").glob("*.json")):
        other = b / "metrics" / path.name
        same = other.is_file() and _strip(json.loads(path.read_text())) == _strip(
            json.loads(other.read_text())
        )
        print(f"{'same ' if same else 'DIFF '}        metrics/{path.name} (timing fields aside)")
        ok &= same
    print("ALL IDENTICAL" if ok else "SOME DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
