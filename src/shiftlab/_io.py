"""Writing outputs so that a failure never leaves a half-written file or folder behind.

* :func:`atomic_write_bytes` writes a file beside its destination, then renames it over it.
* :func:`claim_output_folder` checks, before any work, that an output folder can be written, and holds a
  lock on it (``.<name>.lock`` beside it, an advisory ``flock`` that the system releases when its process
  ends, also by ``kill -9``): a second run with the same output folder is refused while the first runs.
* :func:`staged_directory` gathers a command's outputs in a hidden staging folder beside the output folder
  and moves them in only on success.

Temporary files and staging folders carry their process's id in their names: once that process has ended
(killed during the final write, say), they are provably stale, and the next successful run removes them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab._format import printable
from shiftlab.errors import InternalError, check, fail, first_line

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_text",
    "json_text",
    "claim_output_folder",
    "read_checkpoint",
    "remove_stale",
    "safetensors_bytes",
    "staged_directory",
    "to_jsonable",
    "torch_load_problem",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f"{_TEMPORARY}{_owner()}{target.name}.", suffix=".tmp"
    )
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


_TEMPORARY = ".tmp-"


def _owner() -> str:
    """``<host>-<pid>-``: which process made a temporary file or folder (see :func:`remove_stale`)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-"


def _nearest_existing(path: Path) -> Path:
    anchor = path.absolute()
    while not os.path.lexists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    return anchor


@contextlib.contextmanager
def claim_output_folder(out_dir: str | Path) -> Iterator[Path]:
    """Check that ``out_dir`` can be written, and hold its lock while the ``with`` block runs.

    Refused in one line, before any work: a path that exists and is not a folder, a folder that
    cannot be created or written, and a folder that another run holds (its process id is named).
    The lock is ``.<name>.lock`` in the parent folder, which is created for it when missing (and
    removed again, when still empty, if the block fails). Yields ``out_dir`` as a ``Path``.

    Without ``fcntl`` (Windows) the folder is checked but not locked.
    """
    target = Path(out_dir)
    subject = f"output folder '{target}'"
    if os.path.lexists(target) and not target.is_dir():
        fail(subject, "exists and is not a folder")
    absolute = Path(os.path.abspath(target))  # '.' and 'a/..' by their names
    parent = absolute.parent
    anchor = _nearest_existing(parent)
    if not anchor.is_dir():
        fail(subject, f"cannot be created: '{anchor}' is not a folder")
    created = [folder for folder in [parent, *parent.parents] if folder.is_relative_to(anchor) and folder != anchor]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():  # its files are replaced in the end: it must take new ones
            handle, probe = tempfile.mkstemp(dir=target, prefix=f"{_TEMPORARY}{_owner()}write-test.")
            os.close(handle)
            os.unlink(probe)
        else:  # it is created in the end: its parent must take new folders
            os.rmdir(tempfile.mkdtemp(dir=parent, prefix=f"{_TEMPORARY}{_owner()}write-test."))
    except OSError as error:
        _remove_empty(created)
        fail(subject, f"cannot be {'written' if target.is_dir() else 'created'} ({error.strerror or error})")
    succeeded = False
    try:
        with _lock(parent / f".{absolute.name or 'root'}.lock", subject):
            yield target
            succeeded = True
    finally:
        if not succeeded:
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _lock(path: Path, subject: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): checked, not locked
        yield
        return
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            fail(subject, f"cannot be locked: '{path}' cannot be created ({error.strerror or error})")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(handle)
            fail(
                subject,
                f"is in use by another shiftlab run (process {holder}); wait for it to finish, or choose another --out",
            )
        try:  # the file we locked must still be the one at `path` (a finishing run unlinks its lock)
            same = os.path.samestat(os.fstat(handle), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: the next run creates a fresh one
        os.close(handle)


def _pid_of(name: str, prefix: str) -> int | None:
    """The process id that ``name`` (``<prefix><host>-<pid>-...``, made on this host) carries, if any."""
    mine = prefix + _owner().split("-", 1)[0] + "-"
    digits = name[len(mine) :].split("-", 1)[0]
    return int(digits) if name.startswith(mine) and digits.isascii() and digits.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``<prefix><host>-<pid>-...`` that a process of this machine made
    and that no longer runs.

    Staging folders and temporary files carry the host and id of the process that made them: once it has
    ended without cleaning up (``kill -9``), they are provably stale; those of other machines (a shared file
    system) are left alone. Returns what was removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            pid = _pid_of(entry.name, prefix)
            if pid is None or pid == os.getpid() or _running(pid):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staged_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its files into ``out_dir``, on failure delete it.

    The staging folder sits in the nearest existing parent of ``out_dir`` (same
    file system, so the final moves are renames), named ``.<name>.staging-<host>-<pid>-...``.
    ``out_dir`` and its missing parents are created only when everything succeeded;
    files already in it that the run does not produce are left alone. A success also
    removes the staging folders and temporary files that runs killed before they could
    clean up left beside ``out_dir`` and in it (see :func:`remove_stale`).
    """
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        fail(f"output folder '{target}'", "exists and is not a folder")
    absolute = Path(os.path.abspath(target))
    anchor = _nearest_existing(absolute.parent)
    prefix = f".{absolute.name or 'root'}.staging-"
    try:
        staging = Path(tempfile.mkdtemp(dir=anchor, prefix=f"{prefix}{_owner()}"))
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
        remove_stale(anchor, prefix)
        remove_stale(target, _TEMPORARY)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become ``null`` (JSON has no such numbers); text that is not
    valid Unicode (a file name's bytes that are not UTF-8) its printable form, ``\\xff`` for the byte 0xff
    (JSON is UTF-8: where the bytes matter, the caller keeps them beside it, see
    :func:`shiftlab._format.name_bytes`).

    Example:
        >>> to_jsonable({"a": (1, np.float32(0.5)), "b": float("nan"), "c": "\\udcff.png"})
        {'a': [1, 0.5], 'b': None, 'c': '\\\\xff.png'}
        >>> import torch
        >>> to_jsonable({"tensor": torch.tensor([1.5, float("inf")]), "count": torch.tensor(3)})
        {'tensor': [1.5, None], 'count': 3}
    """
    if isinstance(value, dict):
        return {to_jsonable(str(key)): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported (this module does not need it)
    if isinstance(value, (np.ndarray, np.generic)) or (torch is not None and isinstance(value, torch.Tensor)):
        return to_jsonable(value.tolist())  # their numbers, not their repr
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        return value if _valid_unicode(value) else printable(value)
    if value is None:
        return value
    return str(value)


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def read_checkpoint(path: Path, checkpoint_format: str, foreign: str) -> dict[str, Any]:
    """The payload of the checkpoint ``--resume`` continues from, read with ``torch.load(weights_only=True)``.

    Refused in one line (subject ``--resume``) when the file is missing, unreadable (torch's reason, without its
    advice to load unsafely: :func:`torch_load_problem`) or not a dict of ``checkpoint_format``; ``foreign``
    completes "'PATH' ..." in that last case.
    """
    import torch

    subject = "--resume"
    check(path.is_file(), subject, f"'{path}' holds no checkpoint: there is no run to continue")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file makes the unpickler raise almost anything
        fail(subject, f"'{path}' is not a readable checkpoint ({torch_load_problem(error)})")
    check(isinstance(payload, dict) and payload.get("format") == checkpoint_format, subject, f"'{path}' {foreign}")
    return payload


def torch_load_problem(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words for a one-line message.

    torch's own message advises loading with ``weights_only=False``, which runs whatever code the file
    holds: shiftlab never does, and never repeats that advice.

    Example:
        >>> torch_load_problem(RuntimeError("Weights only load failed. GLOBAL posix.system whose module ..."))
        'it references posix.system'
    """
    text = str(error)
    if "weights_only" not in text and "Weights only" not in text:
        return first_line(error)
    refused = re.search(
        r"GLOBAL (\S+) was not an allowed global|Unsupported class (\S+)|GLOBAL (\S+) whose module", text
    )
    if refused:
        return f"it references {next(group for group in refused.groups() if group)}"
    if "Unsupported operand" in text:
        return "unreadable pickle data"
    return "it holds objects that weights_only loading refuses"


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
