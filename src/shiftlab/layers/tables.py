"""The change table of a conversion as CSV text."""

from __future__ import annotations

from shiftlab._io import csv_text

__all__ = ["CHANGE_COLUMNS", "changes_to_csv"]

#: The columns of a change table, in order.
CHANGE_COLUMNS: tuple[str, ...] = ("layer", "change", "before", "after", "note")


def changes_to_csv(changes: list[dict[str, str]]) -> str:
    """The rows of :func:`shiftlab.layers.make_shift_invariant`'s table as CSV text with a header.

    Example:
        >>> row = {"layer": "0", "change": "padding", "before": "a", "after": "b", "note": ""}
        >>> print(changes_to_csv([row]), end="")
        layer,change,before,after,note
        0,padding,a,b,
    """
    return csv_text(changes, CHANGE_COLUMNS)
