"""Plain data that experiments produce and the report renders: sections, tables, findings.

Experiments build :class:`Section` objects; :mod:`shiftlab.report` turns them
into HTML and JSON. Neither side knows about the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

__all__ = ["Finding", "Section", "Table", "format_number", "format_stride"]


def format_number(value: Any, digits: int = 4) -> str:
    """Format a number for a table: exact zeros as ``0``, tiny values in scientific notation.

    Example:
        >>> [format_number(v) for v in (0.0, 1.23456789, 3e-9, 12345.6, None, (1, 2))]
        ['0', '1.235', '3e-09', '1.235e+04', '-', '(1, 2)']
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0:
            return "0"
        return f"{value:.{digits}g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(format_number(item, digits) for item in value) + ")"
    return str(value)


def format_stride(stride: Any) -> str:
    """A layer's cumulative stride for tables and plots: ``"4"`` when square, ``"4x2"`` otherwise, ``"global"`` for none.

    Example:
        >>> [format_stride(s) for s in ([4, 4], (4, 2), None)]
        ['4', '4x2', 'global']
    """
    if not stride:
        return "global"
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"


@dataclass
class Finding:
    """One claim or measurement: what it says, the number behind it, and whether it holds.

    ``holds`` is ``True`` or ``False`` for a claim that was checked, ``None`` for
    a plain measurement.
    """

    statement: str
    value: str
    holds: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement, "value": self.value, "holds": self.holds}


@dataclass
class Table:
    """A small table: a caption, column names and rows of numbers or text."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "columns": self.columns, "rows": self.rows}


@dataclass
class Section:
    """A part of a report: prose, figures, tables and findings, plus its raw numbers as ``data``.

    ``intro`` is plain text; blank lines separate paragraphs.
    """

    key: str
    title: str
    intro: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "findings": [finding.to_dict() for finding in self.findings],
            "tables": [table.to_dict() for table in self.tables],
            "data": self.data,
        }
