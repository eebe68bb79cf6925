"""Tidy rows as a pandas DataFrame, with pandas optional: a clear error when it is not installed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shiftlab.errors import fail

__all__ = ["data_frame"]


def data_frame(rows: Sequence[dict[str, Any]], columns: Sequence[str], what: str) -> Any:
    """``rows`` as a ``pandas.DataFrame`` with ``columns`` in that order (one row per dict).

    Args:
        rows: the tidy rows.
        columns: their keys, in order.
        what: the method that asked, for the error message (``"ProbeResult.to_pandas()"``).

    Raises:
        ShiftlabError: pandas is not installed (the message says how to install it).

    Example:
        >>> data_frame([{"a": 1, "b": 2.5}], ["a", "b"], "example").to_dict("records")
        [{'a': 1, 'b': 2.5}]
    """
    try:
        import pandas
    except ImportError:
        fail("pandas", f"is not installed, and {what} needs it: pip install pandas")
    return pandas.DataFrame(list(rows), columns=list(columns))
