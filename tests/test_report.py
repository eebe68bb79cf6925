"""shiftlab.report.html on known sections: the HTML holds the given text, tables, findings and figures, escaped, and is
self-contained (no request of any kind); the JSON twin holds the same sections and time stamp."""

from __future__ import annotations

import base64
import json
import re
import struct
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from nets import pooled_net

from shiftlab.probing.explore import explorer_data
from shiftlab.report._embed import FIGURE_DPI, figure_data_uri
from shiftlab.report.html import environment, render_report, script_json, write_report
from shiftlab.report.sections import Finding, Section, Table

ENV = {"shiftlab": "9.9", "python": "3.x", "torch": "t", "numpy": "n", "platform": "p", "created": "2026-01-02"}


class Page(HTMLParser):
    """What a reader of the page sees: titles, paragraphs, tables (cell text), findings, images, links, scripts."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, list[str]] = {}
        self.tables: list[dict] = []
        self.findings: list[tuple[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value) of every attribute
        self.tags: list[str] = []
        self._open: list[str] = []
        self._cell: list[str] | None = None
        self._class = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        self._open.append(tag)
        if tag == "table":
            self.tables.append({"caption": "", "header": [], "rows": [], "class": values.get("class", "")})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(values)
        elif tag == "li" and values.get("class") in ("holds", "fails", "measured"):
            self.findings.append((values["class"], ""))
            self._class = values["class"]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "li":
            self._class = ""
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)
            if self._open[-1] == "caption" and self.tables:
                self.tables[-1]["caption"] += data
        if self._class and self.findings:
            kind, text = self.findings[-1]
            self.findings[-1] = (kind, text + data)


def png_size(uri: str) -> tuple[int, int]:
    """Width and height from a PNG data URI's IHDR chunk."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    raw = base64.b64decode(uri[len(prefix) :])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def small_figure() -> Figure:
    figure = Figure(figsize=(2.0, 1.0))
    figure.subplots().plot([0, 1], [1, 0])
    return figure


def sections() -> list[Section]:
    return [
        Section(
            "alpha",
            "First <section> & more",
            "One paragraph\n   spread over lines.\n\nA second <b>paragraph</b>.",
            figures=[("A caption with <i>markup</i>", small_figure())],
            tables=[Table("Errors <by> layer", ["layer", "error"], [["conv1", 0.125], ["pool<2>", "1.5e-07"]])],
            findings=[
                Finding("It holds", "0.0", True),
                Finding("It fails", "0.5", False),
                Finding("Just measured", "42 ms"),
            ],
            data={"numbers": [1, 2, 3]},
        ),
        Section("beta", "Second", "Nothing else."),
    ]


@pytest.fixture(scope="module")
def page() -> tuple[str, Page]:
    html = render_report(
        sections(), title="Report <of> A&B", summary="Top line.\n\nNext.", protocol={"seed": 7, "mode": "crop"}, env=ENV
    )
    return html, Page(html)


def test_title_summary_and_sections_are_shown_escaped(page):
    html, parsed = page
    assert "".join(parsed.text["title"]) == "Report <of> A&B"
    assert "<of>" not in html and "Report &lt;of&gt; A&amp;B" in html
    assert "".join(parsed.text["h1"]) == "Report <of> A&B"
    assert [text for text in parsed.text["h2"]] == ["First <section> & more", "Second", "How these numbers were made"]
    links = [value for tag, name, value in parsed.attributes if tag == "a" and name == "href"]
    assert links == ["#alpha", "#beta"]
    ids = [value for tag, name, value in parsed.attributes if tag == "section" and name == "id"]
    assert ids == ["alpha", "beta", "protocol"]


def test_paragraphs_are_split_at_blank_lines_with_whitespace_collapsed(page):
    html, parsed = page
    paragraphs = parsed.text["p"]
    assert paragraphs[:2] == ["Top line.", "Next."]
    assert "One paragraph spread over lines." in paragraphs
    assert "A second <b>paragraph</b>." in paragraphs  # user text, not markup
    assert "<b>paragraph" not in html


def test_tables_hold_the_given_cells_in_order(page):
    _, parsed = page
    table = next(table for table in parsed.tables if table["caption"] == "Errors <by> layer")
    assert table["rows"] == [["layer", "error"], ["conv1", "0.125"], ["pool<2>", "1.5e-07"]]
    details = next(table for table in parsed.tables if table["class"] == "details")
    shown = dict(row for row in details["rows"])
    assert shown == {**ENV, "seed": "7", "mode": "crop"}


def test_findings_carry_their_verdicts_and_values(page):
    _, parsed = page
    kinds = [kind for kind, _ in parsed.findings]
    assert kinds == ["holds", "fails", "measured"]
    texts = [" ".join(text.split()) for _, text in parsed.findings]
    assert texts == ["✓ holds It holds 0.0", "✗ does not hold It fails 0.5", "measured Just measured 42 ms"]


def test_figures_are_embedded_pngs_of_the_figure_at_the_report_dpi(page):
    _, parsed = page
    (image,) = parsed.images
    assert image["alt"] == "A caption with <i>markup</i>"
    assert png_size(image["src"]) == (2 * FIGURE_DPI, 1 * FIGURE_DPI)
    assert "".join(parsed.text["figcaption"]) == "A caption with <i>markup</i>"


def test_the_page_is_self_contained(page):
    html, parsed = page
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.IGNORECASE), "no URL of any kind"
    for tag, name, value in parsed.attributes:
        if name in ("src", "href", "srcset", "poster", "data"):
            assert value.startswith(("data:", "#")), (tag, name, value)
    assert "link" not in parsed.tags and "iframe" not in parsed.tags
    assert "script" not in parsed.tags  # no explorer: no script at all
    assert "@import" not in html and "url(" not in html


def test_an_explorer_adds_inline_scripts_only():
    data = explorer_data(pooled_net(), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), [(0, 1)])
    html = render_report([Section("x", "X", "", explorers=[("Pooled", data)])], title="t", env=ENV)
    parsed = Page(html)
    assert parsed.tags.count("script") >= 2
    assert not [value for tag, name, value in parsed.attributes if tag == "script" and name == "src"]
    assert not re.search(r"https?://", html)
    colormaps = re.search(r'<script type="application/json" id="shiftlab-colormaps">(.*?)</script>', html, re.S)
    assert colormaps is not None and isinstance(json.loads(colormaps.group(1)), dict)


def test_script_json_cannot_close_its_script_element_and_reads_back_unchanged():
    payload = {"name": "</script><script>alert(1)</script>", "and": "a & b", "values": [1.5, None]}
    text = str(script_json(payload))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == payload
    # NaN is no JSON: it becomes null; numpy scalars become plain numbers
    assert json.loads(str(script_json({"x": float("nan"), "y": np.float32(1.5)}))) == {"x": None, "y": 1.5}


def test_figure_data_uri_encodes_the_figure_at_the_given_dpi():
    assert png_size(figure_data_uri(small_figure(), dpi=50)) == (100, 50)


def test_environment_records_the_versions():
    found = environment()
    assert found["torch"] == torch.__version__ and found["numpy"] == np.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", found["created"])


def test_write_report_writes_the_html_and_its_json_twin(tmp_path):
    folder = tmp_path / "new" / "out"
    html_path, json_path = write_report(sections(), folder, title="T", protocol={"seed": 3})
    assert (html_path, json_path) == (folder / "report.html", folder / "results.json")
    payload = json.loads(json_path.read_text())
    assert payload["title"] == "T" and payload["protocol"] == {"seed": 3}
    assert list(payload["sections"]) == ["alpha", "beta"]
    alpha = payload["sections"]["alpha"]
    assert alpha["tables"] == [
        {
            "caption": "Errors <by> layer",
            "columns": ["layer", "error"],
            "rows": [["conv1", 0.125], ["pool<2>", "1.5e-07"]],
        }
    ]
    assert alpha["findings"][1] == {"statement": "It fails", "value": "0.5", "holds": False}
    assert alpha["data"] == {"numbers": [1, 2, 3]}
    details = next(table for table in Page(html_path.read_text()).tables if table["class"] == "details")
    shown = dict(row for row in details["rows"])
    assert shown["created"] == payload["environment"]["created"]  # one time stamp for both files
    assert shown["seed"] == "3"
    assert sorted(path.name for path in folder.iterdir()) == ["report.html", "results.json"]  # no temporary left
