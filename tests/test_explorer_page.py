"""One explorer page in headless Chromium, built in-process from a small network: the pad follows the shifts' grid
whatever their order, the keyboard moves it, the numbers are the JSON's, and a phone-width window holds it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from nets import pooled_net

from shiftlab._format import format_error
from shiftlab.probing.explore import Screen, explorer_data
from shiftlab.report.html import write_report
from shiftlab.report.sections import Section

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# A full 3 x 3 grid, listed out of order: the pad must still put (dy, dx) at row dy, column dx.
SHIFTS = [(2, 1), (0, 0), (1, 2), (0, 2), (2, 0), (1, 0), (0, 1), (2, 2), (1, 1)]


@pytest.fixture(scope="module")
def page_path(tmp_path_factory):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    data = explorer_data(
        pooled_net(), x, SHIFTS, show=["0", "2", "3"], channels=2, screen=Screen(names=["first", "second"])
    )
    folder = tmp_path_factory.mktemp("explorer")
    html, results = write_report([Section("pooled", "pooled", "", explorers=[("Pooled", data)])], folder, title="t")
    return html, json.loads(results.read_text())["sections"]["pooled"]["explorers"][0]


def shown(root) -> tuple[str, float, str]:
    field = root.locator('[data-field="rel_l2"]')
    return (
        root.locator('[data-field="shift"]').text_content(),
        float(field.get_attribute("data-value")),
        field.text_content(),
    )


def test_pad_keyboard_and_numbers(page_path):
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser_path is None:
        pytest.skip("Chromium is not installed (scripts/install-chromium.sh installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    html, explorer = page_path
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
        try:
            for width in (1280, 390):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(html.resolve().as_uri(), wait_until="load")
                page.wait_for_function("document.querySelector('.explorer').dataset.ready === 'true'")
                root = page.locator(".explorer")
                root.locator(".explorer-layer").select_option("1")  # layer "2": the max pooling, stride 2
                rows = explorer["layers"][1]["rows"]
                cells = root.locator(".pad-cell")
                cells.nth(1).click()  # row dy = 0, column dx = 1
                index = SHIFTS.index((0, 1))
                assert shown(root) == ("(0, 1)", rows[index]["rel_l2"], format_error(rows[index]["rel_l2"]))
                page.keyboard.press("ArrowDown")  # to (1, 1)
                page.keyboard.press("ArrowRight")  # to (1, 2)
                index = SHIFTS.index((1, 2))
                assert shown(root)[:2] == ("(1, 2)", rows[index]["rel_l2"])
                assert root.locator(".explorer-slider").input_value() == str(index)
                assert (
                    root.locator('.pad-cell[aria-checked="true"]')
                    .get_attribute("aria-label")
                    .startswith("down 1, right 2 pixels: relative L2 error")
                )
                root.locator(".explorer-slider").focus()
                page.keyboard.press("ArrowRight")  # the slider steps through the shifts in their listed order
                assert shown(root)[0] == "({}, {})".format(*SHIFTS[index + 1])
                mine = explorer["layers"][1]["image_errors"][index + 1]["rel_l2"]
                assert float(root.locator('[data-field="image_rel_l2"]').get_attribute("data-value")) == mine
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                page.close()
        finally:
            browser.close()
    assert not errors, errors


def test_shifts_without_a_grid_fourier_mode(tmp_path):
    """Sub-pixel Fourier shifts form no grid: no pad, the help says so, the slider and its numbers still work."""
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser_path is None:
        pytest.skip("Chromium is not installed (scripts/install-chromium.sh installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    shifts = [(0.0, 0.0), (0.5, 0.0), (0.0, 1.5), (2.25, 1.0)]
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    data = explorer_data(pooled_net(), x, shifts, mode="fourier", show=["0", "2"], channels=1)
    html, results = write_report([Section("sub", "sub", "", explorers=[("Sub-pixel", data)])], tmp_path, title="t")
    explorer = json.loads(results.read_text())["sections"]["sub"]["explorers"][0]
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function("document.querySelector('.explorer').dataset.ready === 'true'")
            root = page.locator(".explorer")
            assert root.locator(".explorer-pad").count() == 0
            assert "no pad" in root.locator(".explorer-help").text_content()
            root.locator(".explorer-layer").select_option("1")
            root.locator(".explorer-slider").focus()
            for index in range(1, len(shifts)):
                page.keyboard.press("ArrowRight")
                value = explorer["layers"][1]["rows"][index]["rel_l2"]
                assert shown(root)[1:] == (value, format_error(value)), index
        finally:
            browser.close()
    assert not errors, errors
