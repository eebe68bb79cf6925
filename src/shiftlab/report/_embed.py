"""Figures embedded in HTML: a matplotlib figure as a PNG ``data:`` URI.

A leaf module, so that the report and the notebook display both use it without importing each other.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURE_DPI", "figure_data_uri"]

#: The resolution of the report's figures.
FIGURE_DPI = 110


def figure_data_uri(figure: Figure, dpi: int = FIGURE_DPI) -> str:
    """The figure as a ``data:image/png;base64,...`` URI.

    Example:
        >>> from matplotlib.figure import Figure
        >>> figure_data_uri(Figure(figsize=(1, 1)), dpi=10).startswith("data:image/png;base64,iVBORw0KGgo")
        True
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
