"""`shiftlab demo` end to end: offline, every finding holds, and the report works in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shiftlab import cli

pytestmark = pytest.mark.slow


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory) -> Path:
    """Run the demo once, with no network at all when the machine allows it (unshare -n), else with sockets blocked."""
    out = tmp_path_factory.mktemp("demo") / "report"
    if _unshare_works():
        result = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "shiftlab.cli", "demo", "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr
        assert "report: " in result.stdout
    else:
        original = socket.socket.connect

        def refuse(*args, **kwargs):
            raise AssertionError("the demo tried to open a network connection")

        socket.socket.connect = refuse
        try:
            assert cli.main(["demo", "--out", str(out)]) == 0
        finally:
            socket.socket.connect = original
    return out


def test_outputs_written(demo_output):
    assert {path.name for path in demo_output.iterdir()} == {"report.html", "results.json"}


def test_every_finding_holds(demo_output):
    results = json.loads((demo_output / "results.json").read_text())
    sections = results["sections"]
    assert {
        "edges",
        "single-pixel",
        "translation",
        "mirror",
        "stride",
        "probe-simple-cnn",
        "probe-circular-cnn",
        "variants",
    } <= set(sections)
    findings = [finding for section in sections.values() for finding in section["findings"]]
    assert findings
    failed = [finding["statement"] for finding in findings if finding["holds"] is False]
    assert not failed, failed


def test_numbers_reproduce_the_article(demo_output):
    sections = json.loads((demo_output / "results.json").read_text())["sections"]
    levels = sections["single-pixel"]["data"]["levels"]
    assert levels[2]["shape"] == [2, 2]
    assert levels[2]["positions_a"] == [[0, 0]] and levels[2]["positions_b"] == [[1, 1]]
    assert levels[3]["identical"] is True
    translation = sections["translation"]["data"]["levels"]
    assert translation[0]["aligned_max_abs"] == 0  # equivariance of the edge map, measured directly
    assert all(level["aligned_rel_l2"] == 0 for level in translation)
    stride = sections["stride"]["data"]
    for row, multiple_row in zip(stride["errors"], stride["multiple_of_stride"]):
        for error, multiple in zip(row, multiple_row):
            assert (error < 1e-6) == multiple


def test_circular_cnn_is_exact_at_every_spatial_layer(demo_output):
    summary = json.loads((demo_output / "results.json").read_text())["sections"]["probe-circular-cnn"]["data"][
        "summary"
    ]
    spatial = [row for row in summary if row["stride"]]
    assert spatial and all(row["max_rel_l2"] < 1e-5 for row in spatial)


def test_report_is_self_contained(demo_output):
    html = (demo_output / "report.html").read_text()
    assert "<img" in html
    sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html)
    assert sources
    assert all(source.startswith(("data:image/png;base64,", "#")) for source in sources), [
        s[:40] for s in sources if not s.startswith(("data:", "#"))
    ]
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.browser
def test_report_in_headless_chromium(demo_output):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip(
            "Chromium is not installed (scripts/install-chromium.sh installs it; the README's test command runs it)"
        )
    playwright_api = pytest.importorskip("playwright.sync_api")
    requested: list[str] = []
    console_errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})

            def record(route):
                requested.append(route.request.url)
                if route.request.url.startswith(("file://", "data:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", record)
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.goto((demo_output / "report.html").resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(image => [image.complete, image.naturalWidth, image.naturalHeight])"
            )
            sections = page.evaluate("Array.from(document.querySelectorAll('main section h2')).map(h => h.textContent)")
            shot = Path(os.environ.get("SHIFTLAB_SCREENSHOT_DIR", str(demo_output))) / "report.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    outside = [url for url in requested if not url.startswith(("file://", "data:"))]
    assert not outside, outside
    assert len(images) >= 12
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), images
    assert len(sections) >= 8
    assert not console_errors, console_errors
    assert shot.stat().st_size > 50_000
