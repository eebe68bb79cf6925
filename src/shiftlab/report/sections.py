"""Plain data that experiments produce and the report renders: sections, tables, findings.

Experiments build :class:`Section` objects; :mod:`shiftlab.report.html` turns them
into HTML and JSON. Neither side knows about the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from shiftlab._format import (  # re-exported: tables are written with them
    ROUNDING_LEVEL,
    format_error,
    format_number,
    format_stride,
)

if TYPE_CHECKING:  # plain data: the type of an explorer, without importing the module that computes it
    from shiftlab.probing.explore import ExplorerData

__all__ = ["ROUNDING_LEVEL", "Finding", "Section", "Table", "format_error", "format_number", "format_stride"]


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
    """A part of a report: prose, figures, explorers, tables and findings, plus its raw numbers as ``data``.

    ``intro`` is plain text; blank lines separate paragraphs. ``explorers`` are ``(title, data)`` pairs: interactive
    views of a layer's maps under every shift (:mod:`shiftlab.probing.explore`); their numbers go into the JSON too.
    """

    key: str
    title: str
    intro: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    explorers: list[tuple[str, ExplorerData]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        found = {
            "key": self.key,
            "title": self.title,
            "findings": [finding.to_dict() for finding in self.findings],
            "tables": [table.to_dict() for table in self.tables],
            "data": self.data,
        }
        if self.explorers:
            found["explorers"] = [{"title": title, **explorer.to_dict()} for title, explorer in self.explorers]
        return found
