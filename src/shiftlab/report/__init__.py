"""Presentation: figures, report sections, the self-contained HTML report, Jupyter's HTML.

``figures``, ``invariance_figures``, ``sections`` (plain data), ``html`` (the page and its JSON twin, with
``templates/``), ``notebook``.

This package replaces the module ``shiftlab.report``: it re-exports what that module gave
(``from shiftlab.report import ...`` keeps working).
Inside shiftlab, import from the defining module (``shiftlab.report.html``), never from here
(tests/test_architecture.py checks it).
"""

from shiftlab.report.html import (
    environment,
    figure_data_uri,
    render_explorer,
    render_report,
    script_json,
    to_jsonable,
    write_report,
)

__all__ = [
    "environment",
    "figure_data_uri",
    "render_explorer",
    "render_report",
    "script_json",
    "to_jsonable",
    "write_report",
]
