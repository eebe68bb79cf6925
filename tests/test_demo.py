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


def test_the_probes_shift_modes_are_the_ones_auto_chooses_and_the_words_say(demo_output):
    sections = json.loads((demo_output / "results.json").read_text())["sections"]
    typical = sections["probe-simple-cnn"]["data"]["protocol"]
    exact = sections["probe-circular-cnn"]["data"]["protocol"]
    assert typical["mode"] == "crop" and typical["mode_reason"].startswith("auto: 4 layers pad with zeros (features.0")
    assert exact["mode"] == "circular" and exact["mode_reason"].startswith("auto: every padding is circular")
    html = (demo_output / "report.html").read_text()
    assert "mode auto, chooses it because the network pads with zeros" in html
    assert (
        "Protocol: crop shifts (0, 0), (0, 1)" in html and "(mode auto: 4 layers pad with zeros (features.0, " in html
    )


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


EXPLORER_SECTIONS = ("single-pixel", "translation", "stride", "probe-simple-cnn", "probe-circular-cnn")


def test_explorer_numbers_in_the_json(demo_output):
    sections = json.loads((demo_output / "results.json").read_text())["sections"]
    for key in EXPLORER_SECTIONS:
        assert len(sections[key]["explorers"]) == 1, key
    # The edge map follows the cat at every shift; each pooled map only at multiples of its stride.
    layers = {layer["layer"]: layer for layer in sections["translation"]["explorers"][0]["layers"]}
    assert all(row["rel_l2"] < 1e-6 for row in layers["edges"]["rows"])
    for name in ("pool1", "pool2", "pool3"):
        for row in layers[name]["rows"]:
            assert (row["rel_l2"] < 1e-6) == row["multiple"], (name, row["dx"], row["rel_l2"])
    # A probe section's explorer shows the section's own probe rows.
    probe = sections["probe-simple-cnn"]
    rows = {(row["layer"], row["dy"], row["dx"]): row for row in probe["data"]["rows"]}
    for layer in probe["explorers"][0]["layers"]:
        for row in layer["rows"]:
            assert row["rel_l2"] == rows[layer["layer"], row["dy"], row["dx"]]["rel_l2"]


def _launch(playwright_api, browser_path):
    return playwright_api.chromium.launch(
        executable_path=browser_path,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )


def _expect_shown(page, root, section: dict, explorer: dict, layer: int, shift: int) -> None:
    """The numbers the page shows for this layer and shift are the JSON's, digit for digit."""
    from shiftlab._format import format_error

    row = explorer["layers"][layer]["rows"][shift]
    mine = explorer["layers"][layer]["image_errors"][shift]
    shown = root.locator('[data-field="rel_l2"]')
    assert shown.text_content() == format_error(row["rel_l2"]), (explorer["layers"][layer]["layer"], shift)
    assert float(shown.get_attribute("data-value")) == row["rel_l2"]
    assert root.locator('[data-field="shift"]').text_content() == f"({row['dy']:g}, {row['dx']:g})"
    per_image = root.locator('[data-field="image_rel_l2"]')
    if explorer["images"] > 1:
        assert per_image.text_content() == format_error(mine["rel_l2"])
    else:
        assert per_image.count() == 0  # one image: the probe's number is the image's, shown once
    if "rows" in section["data"]:  # a probe section: the same number in its own table of rows
        name = explorer["layers"][layer]["layer"]
        (match,) = [
            r for r in section["data"]["rows"] if (r["layer"], r["dy"], r["dx"]) == (name, row["dy"], row["dx"])
        ]
        assert float(shown.get_attribute("data-value")) == match["rel_l2"]


@pytest.mark.browser
def test_explorers_in_headless_chromium(demo_output):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip(
            "Chromium is not installed (scripts/install-chromium.sh installs it; the README's test command runs it)"
        )
    playwright_api = pytest.importorskip("playwright.sync_api")
    sections = json.loads((demo_output / "results.json").read_text())["sections"]
    shots = Path(os.environ.get("SHIFTLAB_SCREENSHOT_DIR", str(demo_output)))
    shots.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    console_errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = _launch(playwright, browser_path)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", lambda route: (requested.append(route.request.url), route.continue_()))
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            page.goto((demo_output / "report.html").resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.explorer')).every(e => e.dataset.ready === 'true')",
                timeout=30_000,
            )
            assert page.locator(".explorer").count() == len(EXPLORER_SECTIONS)
            from shiftlab._format import format_error, format_number

            values = [0.0, 1.0, 0.5, -0.25, 1e-7, 3e-9, 1.234e-4, 0.99995, 12345.6, 123.456, 2.5e17, 0.30949999]
            values += [9.99e-6, 1e-5, 1.0001e-5, 5.73e-8]  # around the rounding level of format_error
            for name, python in (("formatNumber", format_number), ("formatError", format_error)):
                formatted = page.evaluate(
                    f"(values) => values.map(v => document.querySelector('.explorer').shiftlabExplorer.{name}(v))",
                    values,
                )
                assert formatted == [python(value) for value in values], name
            for key in EXPLORER_SECTIONS:
                section, explorer = sections[key], sections[key]["explorers"][0]
                root = page.locator(f"#explorer-{key}-0")
                layers = len(explorer["layers"])
                assert root.locator(".explorer-layer option").count() == layers
                assert root.locator("label", has_text="Layer").locator("select").count() == 1  # labelled controls
                _expect_shown(page, root, section, explorer, 0, 0)
                # the slider, with the keyboard
                root.locator(".explorer-slider").focus()
                for _ in range(3):
                    page.keyboard.press("ArrowRight")
                _expect_shown(page, root, section, explorer, 0, 3)
                # another layer keeps the shift
                root.locator(".explorer-layer").select_option(str(layers - 1))
                _expect_shown(page, root, section, explorer, layers - 1, 3)
                root.locator(".explorer-slider").focus()
                page.keyboard.press("ArrowLeft")
                layer = int(root.locator(".explorer-layer").input_value())
                _expect_shown(page, root, section, explorer, layer, 2)
                grid = explorer["shifts"]
                columns = len({dx for _, dx in grid})
                if len(grid) > columns:  # a 2-D pad: the arrow keys move down and right
                    root.locator('.pad-cell[aria-checked="true"]').focus()
                    page.keyboard.press("ArrowDown")
                    page.keyboard.press("ArrowRight")
                    _expect_shown(page, root, section, explorer, layer, 2 + columns + 1)
                    assert root.locator(".explorer-slider").input_value() == str(2 + columns + 1)
                drawn = page.evaluate(
                    """(id) => Array.from(document.querySelectorAll('#' + id + ' canvas')).map(canvas => {
                        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                        let lit = 0;
                        for (let i = 0; i < data.length; i += 4) lit += data[i] + data[i + 1] + data[i + 2] > 0;
                        return [canvas.width, canvas.height, lit];
                    })""",
                    f"explorer-{key}-0",
                )
                assert len(drawn) == 4 and all(width > 0 and height > 0 and lit > 0 for width, height, lit in drawn)
            # Screenshots for the docs: the cat on the canvas at pool3 (laptop), simple_cnn on a phone.
            translation = page.locator("#explorer-translation-0")
            translation.locator(".explorer-layer").select_option("3")
            translation.locator(".explorer-slider").fill("3")
            translation.locator(".explorer-slider").dispatch_event("input")
            translation.screenshot(path=str(shots / "explorer-laptop.png"))
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            phone.on(
                "console", lambda message: console_errors.append(message.text) if message.type == "error" else None
            )
            phone.goto((demo_output / "report.html").resolve().as_uri(), wait_until="load")
            phone.wait_for_function("document.querySelector('#explorer-probe-simple-cnn-0').dataset.ready === 'true'")
            small = phone.locator("#explorer-probe-simple-cnn-0")
            small.locator(".explorer-layer").select_option("1")
            small.locator(".pad-cell").nth(6).click()
            _expect_shown(
                phone, small, sections["probe-simple-cnn"], sections["probe-simple-cnn"]["explorers"][0], 1, 6
            )
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
            small.screenshot(path=str(shots / "explorer-phone.png"))
        finally:
            browser.close()
    outside = [url for url in requested if not url.startswith("file://")]
    assert not outside, outside
    assert len(requested) == 1  # the page itself: every frame, style and script is inside it
    assert not console_errors, console_errors
