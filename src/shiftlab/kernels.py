"""Named 2-D filters, and :func:`get_kernel`, which turns any kernel spec into a tensor.

A kernel spec is one of:

* a name from :data:`KERNEL_NAMES` (``"sobel_y"``, ``"laplacian"``, ``"box5"``, ``"gaussian7"``, ...);
* a literal, as a string: ``"[[1, 0], [0, -1]]"`` or ``"1 0; 0 -1"`` (rows separated by ``;``);
* the path of a ``.npy`` file holding a 2-D array;
* a 2-D numpy array, torch tensor or nested list.

Direction convention (this trips many people up): all operators here compute
*cross-correlation*, as CNN layers do, on arrays indexed ``[row, column]``.
``sobel_y`` is the reference article's name for
``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``. It differentiates along the columns
(left to right), so it responds to *horizontal* intensity change, that is to
*vertical* edges, and it is positive where the image gets brighter to the
right. scipy and OpenCV call the same kernel "Sobel x". ``sobel_x`` is its
transpose (brighter downwards, horizontal edges). The aliases
``vertical_edges`` and ``horizontal_edges`` say what each one finds.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from shiftlab.errors import check, describe, fail, first_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "KERNEL_NAMES",
    "KernelSpec",
    "box_kernel",
    "binomial_kernel",
    "describe_kernel",
    "gaussian_kernel",
    "get_kernel",
    "named_kernel",
]

# torch is imported where a tensor is made: the names, descriptions and values need none (``shiftlab kernels``)
KernelSpec: TypeAlias = "str | Path | np.ndarray | torch.Tensor | list"

_SOBEL_Y = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
_LAPLACIAN = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]

# name -> (values, what it responds to). Sized families (box, gaussian, binomial) are parsed below.
_FIXED: dict[str, tuple[list[list[float]], str]] = {
    "sobel_y": (
        _SOBEL_Y,
        "left-to-right intensity change: vertical edges (the article's name; 'Sobel x' in scipy/OpenCV)",
    ),
    "sobel_x": ([list(row) for row in zip(*_SOBEL_Y)], "top-to-bottom intensity change: horizontal edges"),
    "vertical_edges": (_SOBEL_Y, "alias of sobel_y"),
    "horizontal_edges": ([list(row) for row in zip(*_SOBEL_Y)], "alias of sobel_x"),
    "laplacian": (_LAPLACIAN, "second derivative: blobs and thin lines, all directions"),
    "identity": ([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], "the input itself"),
}
_SIZED = re.compile(r"^(box|gaussian|binomial)(\d+)$")
_SIZED_HELP = {
    "box": "mean over a k x k window (box3, box5, ...)",
    "gaussian": "normalised Gaussian, OpenCV's default sigma for its size (gaussian3, gaussian5, ...)",
    "binomial": "normalised binomial (Pascal's triangle) filter, as in BlurPool (binomial1 ... binomial7)",
}

#: Every kernel name :func:`get_kernel` accepts (sized families shown with their smallest size).
KERNEL_NAMES: tuple[str, ...] = tuple(_FIXED) + ("box3", "gaussian3", "binomial3")


def describe_kernel(name: str) -> str:
    """One line saying what a named kernel responds to.

    Example:
        >>> describe_kernel("laplacian")
        'second derivative: blobs and thin lines, all directions'
    """
    if name in _FIXED:
        return _FIXED[name][1]
    match = _SIZED.match(name)
    if match:
        return _SIZED_HELP[match.group(1)]
    fail("kernel", f"unknown name {name!r}; known: {', '.join(KERNEL_NAMES)}")


def named_kernel(name: str) -> np.ndarray:
    """The float64 values of a named kernel (see :data:`KERNEL_NAMES`; sized families take any size), as numpy.

    Example:
        >>> named_kernel("binomial3") * 16
        array([[1., 2., 1.],
               [2., 4., 2.],
               [1., 2., 1.]])
    """
    text = name.strip()
    if text in _FIXED:
        return np.array(_FIXED[text][0], dtype=np.float64)
    match = _SIZED.match(text)
    if match is None:
        fail("kernel", f"unknown name {name!r}; known: {', '.join(KERNEL_NAMES)}")
    return _SIZED_GRIDS[match.group(1)](int(match.group(2)))


def _factory_tensor(values: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(device=device, dtype=dtype or torch.float32)


def box_kernel(
    size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A ``size x size`` mean filter.

    Example:
        >>> box_kernel(2)
        tensor([[0.2500, 0.2500],
                [0.2500, 0.2500]])
    """
    return _factory_tensor(_box_grid(size), device, dtype)


def _box_grid(size: int) -> np.ndarray:
    _check_size(size, "box")
    return np.full((size, size), 1.0 / size**2)


def binomial_kernel(
    size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The normalised 2-D binomial filter used by BlurPool (Zhang 2019).

    The 1-D filter is row ``size`` of Pascal's triangle (``[1, 2, 1]`` for 3,
    ``[1, 3, 3, 1]`` for 4); the 2-D filter is its outer product, divided by its sum.

    Example:
        >>> binomial_kernel(3) * 16
        tensor([[1., 2., 1.],
                [2., 4., 2.],
                [1., 2., 1.]])
    """
    return _factory_tensor(_binomial_grid(size), device, dtype)


def _binomial_grid(size: int) -> np.ndarray:
    _check_size(size, "binomial")
    row = np.array([math.comb(size - 1, i) for i in range(size)], dtype=np.float64)
    grid = np.outer(row, row)
    return grid / grid.sum()


def gaussian_kernel(
    size: int,
    sigma: float | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A normalised ``size x size`` Gaussian.

    Args:
        size: odd or even side length.
        sigma: standard deviation in pixels; by default OpenCV's rule for the
            size, ``0.3 * ((size - 1) / 2 - 1) + 0.8``.

    Example:
        >>> round(float(gaussian_kernel(5).sum()), 6)
        1.0
    """
    return _factory_tensor(_gaussian_grid(size, sigma), device, dtype)


def _gaussian_grid(size: int, sigma: float | None = None) -> np.ndarray:
    _check_size(size, "gaussian")
    if sigma is None:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    check(math.isfinite(sigma) and sigma > 0, "sigma", f"must be a positive number, got {sigma!r}")
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    row = np.exp(-(offsets**2) / (2 * sigma**2))
    grid = np.outer(row, row)
    return grid / grid.sum()


def _check_size(size: Any, family: str) -> None:
    check(
        isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 1 <= size <= 255,
        f"{family} kernel size",
        f"must be an integer from 1 to 255, got {size!r}",
    )


_SIZED_GRIDS: dict[str, Callable[[int], np.ndarray]] = {
    "box": _box_grid,
    "gaussian": _gaussian_grid,
    "binomial": _binomial_grid,
}


def get_kernel(
    spec: KernelSpec,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Turn a kernel spec (name, literal, ``.npy`` path, array, tensor) into a 2-D tensor.

    Args:
        spec: see the module docstring.
        device: where to build the kernel (default: CPU, or the tensor's own device).
        dtype: its dtype (default: float32, or the tensor's own floating dtype).

    Returns:
        A ``(kh, kw)`` tensor of finite values.

    Raises:
        ShiftlabError: unknown name, unparsable literal, unreadable file, a
            kernel that is not 2-D, empty, or holds NaN/Inf.

    Example:
        >>> get_kernel("sobel_y")
        tensor([[-1.,  0.,  1.],
                [-2.,  0.,  2.],
                [-1.,  0.,  1.]])
        >>> import torch
        >>> get_kernel("1 0; 0 -1", dtype=torch.float64)
        tensor([[ 1.,  0.],
                [ 0., -1.]], dtype=torch.float64)
    """
    import torch

    trusted = False  # named kernels are built from finite constants: no need to scan them for NaN
    if isinstance(spec, torch.Tensor):
        kernel = spec
        if dtype is None and kernel.is_floating_point():
            dtype = kernel.dtype
        if device is None:
            device = kernel.device
        label = None  # described only if something is wrong: describe() costs more than the checks
    elif isinstance(spec, (str, Path)):
        kernel, label, trusted = _parse_text_spec(spec)
    else:
        if isinstance(spec, (np.ndarray, np.generic)) and spec.dtype.kind == "c":
            fail("kernel", f"expected real numbers, got {describe(spec)}")
        try:
            # A copy: never a view of the caller's array (which may have negative strides).
            kernel = torch.from_numpy(np.array(spec, dtype=np.float64))
        except (TypeError, ValueError) as error:
            fail("kernel", f"expected a 2-D array of numbers, got {describe(spec)} ({first_line(error)})")
        label = "kernel"
    # Plain ifs, not check(): these run on every convolve() call, and check() would format every message.
    if kernel.ndim != 2:
        fail(label or f"kernel ({describe(spec)})", f"expected a 2-D kernel (kh, kw), got shape {tuple(kernel.shape)}")
    if kernel.numel() == 0:
        fail(label or f"kernel ({describe(spec)})", f"is empty (shape {tuple(kernel.shape)})")
    if kernel.is_complex():
        fail(label or f"kernel ({describe(spec)})", "expected real numbers, got complex")
    kernel = kernel.to(device=device, dtype=dtype or torch.float32)
    # The extremes are finite only if every entry is (NaN propagates to both): one reduction, half the cost of
    # isfinite().all(), which matters on every convolve() call.
    if not trusted and not all(math.isfinite(extreme) for extreme in torch.aminmax(kernel.detach())):
        fail(label or f"kernel ({describe(spec)})", "holds NaN or Inf")
    return kernel


def _parse_text_spec(spec: str | Path) -> tuple[torch.Tensor, str, bool]:
    """``(kernel, label for messages, trusted)``: names are trusted to be finite, files and literals are not."""
    import torch

    text = str(spec).strip()
    if text in _FIXED or _SIZED.match(text):
        return torch.from_numpy(named_kernel(text)), f"kernel {text!r}", True
    if text.lower().endswith(".npy") or Path(text).is_file():
        return _load_npy(Path(text)), f"kernel file '{text}'", False
    if any(char.isdigit() for char in text) and re.fullmatch(r"[\s\d.,;:+\-eE\[\]()]+", text):
        return _parse_literal(text), f"kernel literal {text!r}", False
    fail(
        "kernel",
        f"unknown name {text!r}; known names: {', '.join(KERNEL_NAMES)} (box, gaussian and binomial take any size: "
        "box5, gaussian7), or give a literal such as '[[1,0],[0,-1]]' or a .npy file",
    )


def _parse_literal(text: str) -> torch.Tensor:
    try:
        if "[" in text or "(" in text:
            values = ast.literal_eval(text)
        else:
            values = [[float(item) for item in row.replace(",", " ").split()] for row in text.split(";") if row.strip()]
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        fail(f"kernel literal {text!r}", "could not be read as a 2-D array of numbers with rows of equal length")
    import torch

    return torch.from_numpy(array)


def _load_npy(path: Path) -> torch.Tensor:
    subject = f"kernel file '{path}'"
    check(path.exists(), subject, "not found")
    check(path.is_file(), subject, "is not a file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        fail(subject, f"is not a readable .npy array ({first_line(error)})")
    check(isinstance(array, np.ndarray) and array.dtype.kind in "biuf", subject, "must hold an array of real numbers")
    import torch

    return torch.from_numpy(np.asarray(array, dtype=np.float64))
