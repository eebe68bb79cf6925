"""Results that display themselves in Jupyter: HTML tables (and the depth plot) for ``_repr_html_``.

:class:`shiftlab.ProbeResult` and :class:`shiftlab.EvaluationResult` call these lazily (imports point one way: the
results never import the presentation layer at module level), so a result shown as the last line of a notebook
cell is a table of its numbers, with its protocol, not ``ProbeResult(rows=[...])``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from shiftlab._format import format_number
from shiftlab.report._embed import figure_data_uri

__all__ = ["MAX_ROWS", "evaluation_html", "probe_html", "table_html"]

#: The most rows a table shows in a notebook; the rest are counted below it (``.rows``, ``to_pandas()`` have all).
MAX_ROWS = 60


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "") -> str:
    """A plain HTML table (escaped), at most :data:`MAX_ROWS` rows; numbers as the report writes them.

    Example:
        >>> text = table_html(["a", "b"], [[1, 0.123456]], caption="x < y")
        >>> "<caption>x &lt; y</caption>" in text, "<td>1</td><td>0.1235</td>" in text
        (True, True)
    """
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_number(cell))}</td>" for cell in row) + "</tr>"
        for row in rows[:MAX_ROWS]
    )
    more = ""
    if len(rows) > MAX_ROWS:
        more = f'<tr><td colspan="{len(columns)}">... {len(rows) - MAX_ROWS} more rows</td></tr>'
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table class="shiftlab">{title}<thead><tr>{head}</tr></thead><tbody>{body}{more}</tbody></table>'


def _protocol_line(protocol: dict[str, Any], keys: Sequence[str]) -> str:
    parts = [f"{key}: {protocol[key]}" for key in keys if protocol.get(key) not in (None, "", [], {}, "given")]
    return f"<p><small>{html.escape('; '.join(parts))}</small></p>" if parts else ""


def probe_html(result: Any) -> str:
    """A probe's summary (one row per layer) as an HTML table, its protocol, and the error-versus-depth plot."""
    summary = result.summary()
    protocol = result.protocol
    shifts = protocol.get("shifts", [])
    caption = (
        f"shiftlab probe: {len(summary)} layers, {len(shifts)} shifts ({protocol.get('mode')}), "
        f"{protocol.get('images')} image(s); relative L2 error over the shifts (the zero shift excluded)"
    )
    table = table_html(list(result.SUMMARY_HEADERS), result.summary_table(), caption=caption)
    keys = ("mode_reason", "model", "input_shapes", "dtype", "device", "layouts", "layers_left_out", "layout_doubts")
    parts = [table, _protocol_line(protocol, keys)]
    if summary:
        figure = result.plot_depth()
        parts.append(f'<img alt="relative L2 error against depth" src="{figure_data_uri(figure, dpi=80)}">')
    parts.append(
        "<p><small>All rows: <code>.rows</code>, <code>.to_pandas()</code>, <code>.to_csv()</code>.</small></p>"
    )
    return "<div>" + "".join(parts) + "</div>"


def evaluation_html(result: Any) -> str:
    """An evaluation's headline rows (per model, metric and statistic) as an HTML table, with its protocol."""
    summary = result.summary()
    rows = [
        [
            row["model"],
            row["metric"],
            row["statistic"],
            row["at"],
            row["value"],
            row["count"],
            row["ci_low"],
            row["ci_high"],
        ]
        for row in summary
    ]
    images = result.images
    caption = (
        f"shiftlab evaluate: {len(result.models)} model(s), {images.get('evaluated')} of {images.get('total')} "
        f"images ({images.get('skipped')} skipped)"
    )
    table = table_html(
        ["model", "metric", "statistic", "at", "value", "count", "95% low", "95% high"], rows, caption=caption
    )
    footer = "<p><small>All rows: <code>.rows</code>, <code>.to_pandas()</code>, <code>.to_csv()</code>.</small></p>"
    return "<div>" + table + footer + "</div>"
