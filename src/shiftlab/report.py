"""The self-contained HTML report (and its JSON twin) built from :class:`shiftlab.sections.Section` objects.

Self-contained means one file: the CSS is inline and every figure is an
embedded PNG (``data:`` URI), so the report opens offline, can be mailed, and
fetches nothing from anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import platform
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from matplotlib.figure import Figure

from shiftlab._io import atomic_write_text, json_text, to_jsonable
from shiftlab.sections import Section

__all__ = ["environment", "figure_data_uri", "render_report", "to_jsonable", "write_report"]

FIGURE_DPI = 110


def figure_data_uri(figure: Figure, dpi: int = FIGURE_DPI) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
    template_text = (resources.files("shiftlab") / "templates" / "report.html.j2").read_text(encoding="utf-8")
    style = (resources.files("shiftlab") / "templates" / "report.css").read_text(encoding="utf-8")
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(template_text)
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
        }
        for section in sections
    ]
    details = {**(env or environment()), **(protocol or {})}
    return template.render(
        title=title, summary=_paragraphs(summary), sections=rendered_sections, style=style, details=to_jsonable(details)
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
