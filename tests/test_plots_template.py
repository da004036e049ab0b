"""`dvc plots show` renders with no network: the offline page template (issue 17 item 4)."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "vendor" / "vega" / "offline.html"
NETWORK = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


def _build_module():
    spec = importlib.util.spec_from_file_location(
        "build_template", ROOT / "vendor" / "vega" / "build_template.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Scripts(HTMLParser):
    """The src of every script and link, and the inline script bodies."""

    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.bodies: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.bodies.append("")
        for key in ("src", "href"):
            if tag in ("script", "link", "iframe", "img") and attrs.get(key):
                self.srcs.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.bodies[-1] += data


def _network_refs(page: str) -> list[str]:
    parser = _Scripts()
    parser.feed(page)
    refs = [src for src in parser.srcs if NETWORK.match(src)]
    for body in parser.bodies:  # ES module imports or dynamic imports of a URL
        refs += re.findall(r"""\bimport\s*(?:\(|[^;'"]*from\s*)\s*['"](?:https?:)?//[^'"]+""", body)
    return refs


def test_the_template_inlines_the_pinned_libraries_and_fetches_nothing():
    page = TEMPLATE.read_text(encoding="utf-8")
    assert _network_refs(page) == []
    assert "{plot_divs}" in page
    assert "{scripts}" not in page, "dvc-render would put its CDN <script src> tags there"
    for name, (version, integrity, _build) in _build_module().PINNED.items():
        assert f"/*! {name} {version} " in page and integrity in page
    assert page.count("Redistribution and use in source and binary forms") == 3, "each licence is kept"


def test_dvc_config_uses_the_template_by_default():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """``dvc plots show`` of a tiny plots file in a project with this repository's .dvc/config."""
    project = tmp_path_factory.mktemp("plots")
    assert _dvc(project, "init", "--no-scm", "-q").returncode == 0
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copytree(
        ROOT / "vendor" / "vega", project / "vendor" / "vega", ignore=shutil.ignore_patterns("*.py*")
    )
    (project / "curve.csv").write_text("step,loss\n0,1.0\n1,0.6\n2,0.4\n3,0.3\n")
    proc = _dvc(project, "plots", "show", "curve.csv", "-x", "step", "-y", "loss")
    assert proc.returncode == 0, proc.stderr
    return project / "dvc_plots" / "index.html"


def test_dvc_plots_show_writes_a_page_that_references_no_cdn(plots_page):
    page = plots_page.read_text(encoding="utf-8")
    assert "vegaEmbed(" in page and '"loss"' in page
    assert _network_refs(page) == []
    assert "cdn." not in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_the_page_draws_its_chart_with_the_network_off(plots_page, tmp_path):
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # every host name fails to resolve and any proxy connection is refused: no network
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        plots_page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert 'class="vega-embed' in dom, f"vega-embed did not run:\n{proc.stderr[-2000:]}"
    assert re.search(r"<(canvas|svg)\b", dom), "no chart was drawn"
