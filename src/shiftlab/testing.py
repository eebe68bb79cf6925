"""Assertions for users' own test suites: keep an equivariant model equivariant, an invariant one invariant.

Both assertions pass when, for every shift, the largest absolute difference
is at most ``atol + rtol * max|f(x)|``: the tolerance scales with the map, so
rounding noise on values near zero does not fail a test. Defaults depend on
the dtype of ``f(x)`` (see :data:`DEFAULT_TOLERANCES`).

A failure raises ``AssertionError`` whose message names the worst shift, the
position of the worst difference, and, for an ``nn.Module`` that is not
equivariant, the first layer where equivariance breaks.

The shift mode is ``auto`` by default, as for :func:`shiftlab.probe`: for an ``nn.Module``, ``circular`` when every
padding in it is circular or there is none, ``crop`` otherwise (:mod:`shiftlab.probing.borders`); for any other
callable, whose padding cannot be seen, ``circular``. A failure message says which mode ``auto`` chose, and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from shiftlab._tensors import as_float_tensor
from shiftlab.probing.borders import AUTO, choose_mode
from shiftlab.probing.engine import eval_mode, model_device_dtype
from shiftlab.probing.equivariance import EquivarianceResult, ShapeChanged, ShiftError, call_fn, equivariance_error
from shiftlab.shifts import ShiftMode, check_shifts, shift_with_mask

__all__ = ["DEFAULT_TOLERANCES", "assert_shift_equivariant", "assert_shift_invariant"]

#: dtype -> (atol, rtol) used when none is given.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
}


def _tolerances(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.float32])
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _worst_position(difference: torch.Tensor) -> tuple[int, ...]:
    flat = int(difference.abs().flatten().argmax())
    return tuple(int(index) for index in torch.unravel_index(torch.tensor(flat), difference.shape))


def assert_shift_equivariant(
    fn: Callable[[Any], Any],
    x: Any,
    shifts: Iterable[tuple[float, float]],
    *,
    mode: str = AUTO,
    stride: int | tuple[int, int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> EquivarianceResult:
    """Assert that ``fn`` commutes with every shift: ``fn(T_t x) == T_{t/s} fn(x)`` within tolerance.

    Shifts that are not a multiple of the stride can never pass exactly; they
    are checked like the others (after the best whole-pixel alignment), so
    choose shifts that are multiples of the stride for models that downsample.

    Args:
        fn: function or ``nn.Module`` of tensors.
        x: input, ``(..., H, W)``.
        shifts: ``(dy, dx)`` pairs.
        mode: shift mode: ``auto`` (default, see the module docstring) or one of :mod:`shiftlab.shifts`.
        stride: cumulative stride of the output (found from the sizes by default).
        atol, rtol: tolerances; defaults from :data:`DEFAULT_TOLERANCES`.

    Returns:
        The :class:`~shiftlab.probing.equivariance.EquivarianceResult`, when it passes.

    Raises:
        AssertionError: naming the worst shift, position and (for modules) layer.

    Example:
        >>> conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
        >>> x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        >>> _ = assert_shift_equivariant(conv, x, [(0, 1), (3, -2)])
        >>> assert_shift_equivariant(nn.MaxPool2d(2), x, [(0, 1)])
        Traceback (most recent call last):
        ...
        AssertionError: not shift-equivariant under mode='circular': shift (0, 1) gives max abs error ...
    """
    choice = choose_mode(fn, mode)  # the one place the mode is validated
    tensor = _as_input(fn, x)
    pairs = check_shifts(shifts, choice)  # read once: ``shifts`` may be a generator
    result = equivariance_error(fn, tensor, pairs, mode=choice, stride=stride)
    atol, rtol = _tolerances(tensor.dtype, atol, rtol)  # (a module's own dtype: the input was moved to it)
    limit = atol + rtol * result.reference_scale
    failures = [error for error in result.errors if not error.max_abs <= limit]
    if not failures:
        return result
    worst = max(failures, key=lambda error: error.max_abs)
    message = (
        f"not shift-equivariant under mode={choice.mode!r}: shift ({worst.dy:g}, {worst.dx:g}) gives max abs error "
        f"{worst.max_abs:.3g} "
        f"> tolerance {limit:.3g} (atol {atol:g} + rtol {rtol:g} x max|f(x)| {result.reference_scale:.3g}); relative "
        f"L2 error {worst.rel_l2:.3g}"
    )
    message += _position_clause(fn, tensor, result, worst, choice, pairs)
    if not worst.multiple:
        message += f"; the shift is not a multiple of the stride {worst.stride}, so no whole-pixel alignment can match"
    message += f"; {len(failures)} of {len(result.errors)} shifts fail"
    if isinstance(fn, nn.Module) and tensor.ndim == 4:
        message += _layer_clause(fn, tensor, [(worst.dy, worst.dx)], choice, rtol)
    raise AssertionError(message + _auto_clause(choice))


def _as_input(fn: Callable[[Any], Any], x: Any) -> torch.Tensor:
    """``x`` as a tensor on a module's device and dtype, as the engine runs it (the failure messages run it again)."""
    tensor, _ = as_float_tensor(x, "x")
    device, dtype = model_device_dtype(fn) if isinstance(fn, nn.Module) else (None, None)
    return tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype)


def _again(fn: Callable[[Any], Any], tensor: torch.Tensor) -> torch.Tensor:
    """``fn(tensor)`` once more, as the engine ran it (a module in eval mode), for a failure message."""
    if not isinstance(fn, nn.Module):
        return call_fn(fn, tensor)
    with eval_mode(fn):
        return call_fn(fn, tensor)


def _auto_clause(choice: ShiftMode) -> str:
    """Which mode ``auto`` chose, and why (nothing for a mode given by the caller)."""
    return f"; mode {choice.mode!r} chosen by {choice.reason}" if choice.chosen_by_auto else ""


def _position_clause(
    fn: Callable[[Any], Any],
    tensor: torch.Tensor,
    result: EquivarianceResult,
    worst: ShiftError,
    mode: ShiftMode,
    shifts: list[tuple[float, float]],
) -> str:
    """Where the worst difference is, recomputed for the worst shift only (in ``crop`` mode in the window that all the
    ``shifts`` share, as the result was measured)."""
    if worst.stride is None:
        return ""
    unshifted, margin = mode.reference(tensor, shifts)
    moved = mode.shifted(tensor, worst.dy, worst.dx, margin)
    reference, output = _again(fn, unshifted), _again(fn, moved)
    aligned, valid = shift_with_mask(reference, worst.aligned_dy, worst.aligned_dx, mode=mode.move)
    if result.core is not None and bool(result.core.any()):
        core = result.core.to(valid.device)
        moved_core = shift_with_mask(core.float(), worst.aligned_dy, worst.aligned_dx, mode="zero")[0] > 0.5
        valid = valid & core & moved_core
    difference = (output.float() - aligned.float()) * valid
    position = _worst_position(difference)
    got, expected = float(output[position]), float(aligned[position])
    return f", worst at output index {position} (got {got:.4g}, expected {expected:.4g})"


def _layer_clause(
    model: nn.Module, tensor: torch.Tensor, shifts: list[tuple[float, float]], mode: ShiftMode, rtol: float
) -> str:
    from shiftlab.probing.layerwise import probe

    try:
        summary = probe(model, tensor, shifts=shifts, mode=mode).summary()
    except (ValueError, RuntimeError):
        return ""
    threshold = max(rtol, 1e-6)
    spatial = [row for row in summary if row["layer"] != "output"]
    failing = [row for row in spatial if row["max_rel_l2"] > threshold]
    if not failing:
        return ""
    first = failing[0]
    worst = max(failing, key=lambda row: row["max_rel_l2"])
    clause = (
        f"; equivariance first breaks at layer '{first['layer']}' ({first['type']}, stride {first['stride']},"
        f" relative L2 error {first['max_rel_l2']:.3g})"
    )
    if worst["layer"] != first["layer"]:
        clause += f", worst layer '{worst['layer']}' ({worst['max_rel_l2']:.3g})"
    return clause


def assert_shift_invariant(
    fn: Callable[[Any], Any],
    x: Any,
    shifts: Iterable[tuple[float, float]],
    *,
    mode: str = AUTO,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Assert that ``fn`` ignores every shift: ``fn(T_t x) == fn(x)`` within tolerance (logits, embeddings, pooling).

    Example:
        >>> pool = lambda t: t.mean(dim=(-2, -1))
        >>> assert_shift_invariant(pool, torch.rand(2, 3, 8, 8), [(1, 2), (-3, 0)])
        >>> assert_shift_invariant(lambda t: t[..., 0, 0], torch.arange(16.0).reshape(1, 4, 4), [(0, 1)])
        Traceback (most recent call last):
        ...
        AssertionError: not shift-invariant under mode='circular': shift (0, 1) changes the output by up to 3 ...
    """
    choice = choose_mode(fn, mode)  # the one place the mode is validated
    tensor = _as_input(fn, x)
    pairs = check_shifts(shifts, choice)
    try:  # flattened, the output is compared as a whole: no alignment, no border core
        result = equivariance_error(_Flattened(fn), tensor, pairs, mode=choice)
    except ShapeChanged as changed:
        raise AssertionError(_shape_change(fn, tensor, pairs, choice, changed) + _auto_clause(choice)) from None
    assert result.output_dtype is not None
    atol, rtol = _tolerances(result.output_dtype, atol, rtol)
    limit = atol + rtol * result.reference_scale
    failures = [error for error in result.errors if not error.max_abs <= limit]
    if not failures:
        return
    worst = max(failures, key=lambda error: error.max_abs)
    reference_input, margin = choice.reference(tensor, pairs)
    reference = _again(fn, reference_input)
    output = _again(fn, choice.shifted(tensor, worst.dy, worst.dx, margin))
    position = _worst_position(output.double() - reference.double())
    raise AssertionError(
        f"not shift-invariant under mode={choice.mode!r}: shift ({worst.dy:g}, {worst.dx:g}) changes the output by up "
        f"to {worst.max_abs:.4g} > tolerance {limit:.3g} (atol {atol:g} + rtol {rtol:g} x max|f(x)| "
        f"{result.reference_scale:.3g}), at output index {position}; {len(failures)} of {len(pairs)} shifts fail"
        f"{_auto_clause(choice)}"
    )


class _Flattened(nn.Module):
    """``fn`` with its output flattened, so that it is compared as a whole; a module holding ``fn``, so that the
    engine runs an ``nn.Module`` in eval mode on its device, as it runs ``fn`` itself for the equivariance test."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return call_fn(self.fn, tensor).reshape(-1)


def _shape_change(
    fn: Callable[[Any], Any],
    tensor: torch.Tensor,
    shifts: list[tuple[float, float]],
    mode: ShiftMode,
    changed: ShapeChanged,
) -> str:
    """Which shift changes the output's shape, found again shift by shift (the failure path only)."""
    reference_input, margin = mode.reference(tensor, shifts)
    reference = tuple(_again(fn, reference_input).shape)
    for dy, dx in shifts:
        shape = tuple(_again(fn, mode.shifted(tensor, dy, dx, margin)).shape)
        if shape != reference:
            return f"not shift-invariant: shift ({dy:g}, {dx:g}) changes the output shape from {reference} to {shape}"
    # fn gave another shape on another call for the same input: only the sizes seen the first time can be named
    return (
        f"not shift-invariant: the output's size changed from {changed.reference_shape[0]} to {changed.shape[0]} "
        "values under a shift (fn does not give the same shape again for the same input)"
    )
