"""The self-contained HTML report (and its JSON twin) built from :class:`shiftlab.report.sections.Section` objects.

Self-contained means one file: the CSS is inline and every figure is an
embedded PNG (``data:`` URI), so the report opens offline, can be mailed, and
fetches nothing from anywhere. A section's explorers (:mod:`shiftlab.probing.explore`) travel the same way: their frames
packed into the page (:mod:`shiftlab.probing.frames`), drawn by one inline script (``report/templates/explorer.js``)
that makes no request of any kind.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from markupsafe import Markup

from shiftlab._format import format_stride
from shiftlab._io import atomic_write_text, json_text, to_jsonable
from shiftlab.probing.explore import ExplorerData
from shiftlab.probing.frames import colormap_tables, explorer_payload
from shiftlab.report._embed import figure_data_uri  # re-exported: it was defined here
from shiftlab.report.sections import Section

__all__ = [
    "environment",
    "figure_data_uri",
    "render_explorer",
    "render_report",
    "script_json",
    "to_jsonable",
    "write_report",
]


def environment() -> dict[str, str]:
    """Versions and machine, recorded with every result."""
    from shiftlab import __version__

    return {
        "shiftlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _template(name: str) -> str:
    return (resources.files("shiftlab.report") / "templates" / name).read_text(encoding="utf-8")


def _jinja() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def script_json(payload: Any) -> Markup:
    """``payload`` as JSON text safe inside a ``<script>`` element (``<``, ``>`` and ``&`` escaped).

    Example:
        >>> print(script_json({"a": "</script>"}))
        {"a":"\\u003c/script\\u003e"}
    """
    text = json.dumps(to_jsonable(payload), separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_explorer(data: ExplorerData, *, title: str, key: str) -> Markup:
    """One explorer's HTML: its controls, panels and number fields, with its packed frames (it needs the page's
    explorer script and colour maps, which :func:`render_report` adds once)."""
    payload = explorer_payload(data, title=title, key=key)
    first = data.shifts[0]
    name = data.names[data.image] if data.image < len(data.names) else f"image {data.image}"
    images = data.image_count
    aggregate = (
        f"Relative L2 error, all {images} images (the probe's number)"
        if images > 1
        else "Relative L2 error (the only image: the probe's number)"
    )
    html = (
        _jinja()
        .from_string(_template("explorer.html.j2"))
        .render(
            key=key,
            title=title,
            layers=[
                {
                    "label": layer.label,
                    "type": layer.kind,
                    "stride_text": "whole" if layer.part == "whole" else f"stride {format_stride(layer.stride)}",
                }
                for layer in data.layers
            ],
            shift_count=len(data.shifts),
            first_shift=f"({first[0]:g}, {first[1]:g})",
            first_shift_words=f"down {first[0]:g}, right {first[1]:g} pixels",
            grid=payload["grid"],
            images=images,
            aggregate_label=aggregate,
            image_label=f"Relative L2 error, this image ({name}), at the probe's alignment",
            top1=any(row["top1_agreement"] is not None for layer in data.layers for row in layer.rows),
            payload=script_json(payload),
        )
    )
    return Markup(html)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]


def render_report(
    sections: Sequence[Section],
    *,
    title: str,
    summary: str = "",
    protocol: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Render the sections as one self-contained HTML page.

    Args:
        sections: what to show, in order.
        title: page title and heading.
        summary: a paragraph under the heading.
        protocol: how the numbers were measured, shown in a table at the end.
        env: versions and time to show (default: :func:`environment` now).
    """
    template = _jinja().from_string(_template("report.html.j2"))
    style = _template("report.css")
    explorers = any(section.explorers for section in sections)
    if explorers:
        style += _template("explorer.css")
    rendered_sections = [
        {
            "key": section.key,
            "title": section.title,
            "paragraphs": _paragraphs(section.intro),
            "findings": section.findings,
            "figures": [
                {"caption": caption, "uri": figure_data_uri(figure), "alt": caption}
                for caption, figure in section.figures
            ],
            "tables": section.tables,
            "explorers": [
                render_explorer(data, title=caption, key=f"explorer-{section.key}-{index}")
                for index, (caption, data) in enumerate(section.explorers)
            ],
        }
        for section in sections
    ]
    details = {**(env or environment()), **(protocol or {})}
    return template.render(
        title=title,
        summary=_paragraphs(summary),
        sections=rendered_sections,
        style=Markup(style),  # our own stylesheet: autoescaping would turn its quotes into &#34; and void rules
        details=to_jsonable(details),
        colormaps=script_json(colormap_tables()) if explorers else None,
        explorer_script=Markup(_template("explorer.js")) if explorers else None,
    )


def write_report(
    sections: Sequence[Section],
    out_dir: str | Path,
    *,
    title: str,
    summary: str = "",
    protocol: dict[str, Any] | None = None,
    html_name: str = "report.html",
    json_name: str = "results.json",
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``results.json`` into ``out_dir`` (each written to a temp file, then renamed).

    Returns:
        The paths of the HTML report and of the JSON file.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    env = environment()  # once: the HTML and the JSON carry the same time stamp
    html = render_report(sections, title=title, summary=summary, protocol=protocol, env=env)
    payload = {
        "title": title,
        "environment": env,
        "protocol": protocol or {},
        "sections": {section.key: section.to_dict() for section in sections},
    }
    html_path = atomic_write_text(folder / html_name, html)
    json_path = atomic_write_text(folder / json_name, json_text(payload))
    return html_path, json_path
