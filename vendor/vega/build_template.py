"""Rebuild vendor/vega/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

``dvc plots show`` fills an HTML template; its default page loads vega from a CDN, so on a machine
without internet (a hospital network) the page stays blank. ``.dvc/config`` points
``plots.html_template`` at the page this script writes, which carries the three libraries inline
and no ``{scripts}`` placeholder (where dvc-render would put its CDN ``<script src>`` tags), so the
page renders offline.

The versions are pinned below with the npm registry's integrity hashes (sha512, checked before
anything is used); they are the newest of the major versions dvc-render targets (it loads
vega@5.20.2, vega-lite@5.2.0 and vega-embed@6.18.2 and emits vega-lite v5 specs). Each library
keeps its licence (all three are BSD-3-Clause) in a comment ahead of its code.

Usage (needs the npm registry once; ``--tarballs DIR`` reads already downloaded ``<name>-<version>.tgz``):
    python vendor/vega/build_template.py [--tarballs DIR] [--out vendor/vega/offline.html]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (version, npm integrity, the UMD build inside the package); load order matters
PINNED = {
    "vega": (
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "build/vega.min.js",
    ),
    "vega-lite": (
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "build/vega-embed.min.js",
    ),
}

# The vega npm package ships no LICENSE file (its package.json says BSD-3-Clause); this is the
# notice of the vega repository (github.com/vega/vega, LICENSE), the same BSD-3 text as vega-lite's.
VEGA_NOTICE = "Copyright (c) 2015-2023, University of Washington Interactive Data Lab\nAll rights reserved."

# the page dvc-render fills: {plot_divs} and {refresh_tag} are its placeholders
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Built by vendor/vega/build_template.py: vega, vega-lite and vega-embed inline, nothing
         fetched from the network. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(name: str, version: str, integrity: str, tarballs: Path | None) -> bytes:
    """The package tarball, from ``tarballs`` or the npm registry, checked against ``integrity``."""
    filename = f"{name}-{version}.tgz"
    if tarballs is not None and (tarballs / filename).is_file():
        data = (tarballs / filename).read_bytes()
    else:
        url = f"https://registry.npmjs.org/{name}/-/{filename}"
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (a fixed https URL)
            data = response.read()
    algo, expected = integrity.split("-", 1)
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != expected:
        raise SystemExit(f"{filename}: integrity {algo}-{got} is not the pinned {integrity}")
    return data


def _member(archive: tarfile.TarFile, path: str) -> str | None:
    try:
        member = archive.extractfile(f"package/{path}")
    except KeyError:
        return None
    return member.read().decode("utf-8") if member else None


def script_block(name: str, version: str, integrity: str, tarball: bytes) -> str:
    """One ``<script>`` element: the licence comment, then the library's minified build."""
    build = PINNED[name][2]
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        code = _member(archive, build)
        licence = _member(archive, "LICENSE")
        package = json.loads(_member(archive, "package.json") or "{}")
    if code is None:
        raise SystemExit(f"{name}@{version}: the package has no {build}")
    if licence is None:
        licence = VEGA_NOTICE + "\n\n" + _bsd3_conditions()
    if "</script" in code.lower() or "*/" in licence:
        raise SystemExit(f"{name}@{version}: cannot be inlined safely (holds </script or */)")
    bundled = ", ".join(sorted(package.get("dependencies", {})))
    header = (
        f"/*! {name} {version} ({build}) | licence: {package.get('license', '?')} | npm {integrity}\n"
        f" * Bundles its npm dependencies ({bundled}), each under its own licence.\n *\n"
        + "".join(f" * {line}".rstrip() + "\n" for line in licence.strip().splitlines())
        + " */"
    )
    return f'    <script type="text/javascript">\n{header}\n{code.strip()}\n    </script>'


def _bsd3_conditions() -> str:
    """The conditions and disclaimer of vega-lite's LICENSE (after its copyright lines)."""
    with tarfile.open(fileobj=io.BytesIO(_TARBALLS["vega-lite"]), mode="r:gz") as archive:
        text = _member(archive, "LICENSE") or ""
    return text.split("All rights reserved.", 1)[1].strip()


_TARBALLS: dict[str, bytes] = {}


def build(tarballs: Path | None) -> str:
    """The whole page."""
    for name, (version, integrity, _) in PINNED.items():
        _TARBALLS[name] = fetch(name, version, integrity, tarballs)
    blocks = [script_block(name, v, i, _TARBALLS[name]) for name, (v, i, _) in PINNED.items()]
    return PAGE.format(scripts="\n".join(blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarballs", type=Path, default=None, help="folder of downloaded <name>-<version>.tgz")
    ap.add_argument("--out", type=Path, default=HERE / "offline.html")
    args = ap.parse_args()
    page = build(args.tarballs)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(page):,} bytes)")


if __name__ == "__main__":
    main()
