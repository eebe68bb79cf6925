"""Writing outputs so that a failure never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.errors import InternalError, fail

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_text",
    "json_text",
    "safetensors_bytes",
    "staged_directory",
    "to_jsonable",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its files into ``out_dir``, on failure delete it.

    The staging folder sits in the nearest existing parent of ``out_dir`` (same
    file system, so the final moves are renames). ``out_dir`` and its missing
    parents are created only when everything succeeded;
    files already in it that the run does not produce are left alone.
    """
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        fail(f"output folder '{target}'", "exists and is not a folder")
    anchor = target.absolute().parent
    while not anchor.exists():  # stage in the nearest existing folder: nothing is created on failure
        anchor = anchor.parent
    try:
        staging = Path(tempfile.mkdtemp(dir=anchor, prefix=f".{target.name or 'out'}.staging-"))
    except OSError as error:
        fail(f"output folder '{target}'", f"cannot be created ({error.strerror or error})")
    try:
        yield staging
        target.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.rglob("*")):
            destination = target / item.relative_to(staging)
            if item.is_dir():
                destination.mkdir(exist_ok=True)
            else:
                os.replace(item, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become ``null`` (JSON has no such numbers).

    Example:
        >>> to_jsonable({"a": (1, np.float32(0.5)), "b": float("nan")})
        {'a': [1, 0.5], 'b': None}
    """
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def json_text(payload: Any) -> str:
    """``payload`` as indented JSON text (see :func:`to_jsonable`), ending with a newline."""
    return json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n"


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Tidy rows as CSV text with a header: ``None`` as an empty cell, a list or tuple (a shape, a stride) as
    its items joined by ``x``.

    Example:
        >>> print(csv_text([{"layer": "conv1", "stride": [2, 2], "note": None}], ["layer", "stride", "note"]), end="")
        layer,stride,note
        conv1,2x2,
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: "" if value is None else "x".join(map(str, value)) if isinstance(value, list | tuple) else value
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def safetensors_bytes(state: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A ``.safetensors`` file of the tensors in ``state`` (a ``state_dict``), the same bytes for the same tensors.

    The tensors are copied to the CPU, contiguous and unshared (safetensors refuses tensors that share memory, such
    as tied weights). safetensors writes its metadata from a hash map, in an order that changes from one process to
    the next; the header is rewritten with the same content and ``metadata`` in the order given (the same length,
    so every offset stays valid), so the same weights give the same sha256.
    """
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    data = save(tensors, metadata=dict(metadata) if metadata else None)
    if not metadata:
        return data
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(metadata)  # same key, same place in the header; only its items are reordered
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > size or data[8 + len(text) : 8 + size].strip():
        raise InternalError("safetensors_bytes: the header changed length when its metadata was reordered")
    return data[:8] + text.ljust(size) + data[8 + size :]
