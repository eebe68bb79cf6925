"""Adaptive polyphase sampling (APS; Chaman & Dokmanic 2021): subsample at the phase with the largest norm.

Subsampling by ``s`` keeps one of the ``s * s`` polyphase components ``x[..., i::s, j::s]``; a plain strided layer
always keeps ``(0, 0)``, so shifting the input by one pixel hands it a different component: aliasing. APS keeps,
per sample, the component with the largest norm over all channels and positions. A circular shift of the input
permutes the components without changing their norms, so the same component is chosen, and the output is a
circular shift of the original output. The property is exact, not approximate, under these conditions:

* the shift is circular (``torch.roll``), and every layer before is exactly equivariant to circular shifts
  (circular padding everywhere, no layer that shrinks the map);
* the map's height and width are multiples of the stride (at every APS layer of a network);
* the largest norm is unique. Ties are broken deterministically, by the first phase in row-major order
  ``(0, 0), (0, 1), ..., (1, 0), ...``, or with ``tie_break="column-major"`` in Chaman's reference order
  ``(0, 0), (1, 0), (0, 1), (1, 1)`` (the ``chaman2021`` recipe uses it); a tie between distinct components (a
  constant or periodic map) can break exactness. Norms are accumulated in float64 (float32 on MPS), so rounding
  cannot pick a different phase for a shifted input unless two norms agree to about 1e-15 (the reference computes
  them in the map's own precision: where two norms agree to about 1e-7 in float32, it can choose otherwise).

Under an input shift ``t`` the chosen phase ``r`` becomes ``(r + t) mod s`` and the output moves by
``floor((r + t) / s)`` pixels: the floor or the ceiling of ``t / s``.

Sizes that are not multiples of the stride are first padded circularly at the bottom and right up to the next
multiple (Chaman's reference does the same for odd sizes at stride 2), so the output is
``ceil(H / s) x ceil(W / s)``, the size of a strided convolution with "same" padding; invariance is then no longer
exact. Beyond the reference, which handles stride 2 and square maps on CUDA only: any stride, per axis, non-square
maps, any device and dtype.

In a residual block both the main path and the shortcut subsample, and the block adds their outputs. If each chose
its own phase, a shift could make them choose different phases, and the sum would not be a shifted copy of the
original sum. A :class:`PhaseLink` makes them share one choice (Chaman's ResNet hands the main path's phase to the
shortcut).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.errors import check_choice, check_pair, describe, fail
from shiftlab.layers._maps import check_maps, check_padding
from shiftlab.layers.blurpool import BlurPool2d, blur_with_filter, check_channels, per_channel_filter

__all__ = ["APS_NORMS", "APS_TIE_BREAKS", "APSPool2d", "PhaseLink", "aps_pool2d", "polyphase_norms"]

#: How a polyphase component's size is measured: Euclidean (the default), sum of magnitudes, largest magnitude.
APS_NORMS: tuple[str, ...] = ("l2", "l1", "linf")
#: Which phase wins a tie: the first in row-major order (the default), or in column-major order (Chaman's reference).
APS_TIE_BREAKS: tuple[str, ...] = ("row-major", "column-major")


def _components(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The polyphase components of ``(N, C, H, W)`` maps as a ``(N, sy, sx, C, H / sy, W / sx)`` view.

    Sizes that are not multiples of the stride are padded circularly at the end first.
    """
    rows, columns = stride
    height, width = x.shape[-2:]
    extra_rows, extra_columns = -height % rows, -width % columns
    if extra_rows:
        x = x.index_select(-2, torch.arange(height + extra_rows, device=x.device).remainder(height))
    if extra_columns:
        x = x.index_select(-1, torch.arange(width + extra_columns, device=x.device).remainder(width))
    batch, channels, height, width = x.shape
    grid = x.reshape(batch, channels, height // rows, rows, width // columns, columns)
    return grid.permute(0, 3, 5, 1, 2, 4)


def _accumulator(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _norms(components: torch.Tensor, norm: str) -> torch.Tensor:
    """``(N, sy, sx)``: the norm of every component over its channels and positions."""
    dims = (3, 4, 5)
    if norm == "linf":
        return components.abs().amax(dim=dims)  # a maximum is exact in any order
    order = 2 if norm == "l2" else 1
    return torch.linalg.vector_norm(components, ord=order, dim=dims, dtype=_accumulator(components.device))


def _choose(components: torch.Tensor, norm: str, tie_break: str = "row-major") -> torch.Tensor:
    norms = _norms(components, norm)
    rows, columns = norms.shape[1:]
    # argmax returns the first maximum: ties go to the first phase in the order the norms are flattened in.
    if tie_break == "row-major":
        index = norms.flatten(1).argmax(dim=1)
        return torch.stack([index // columns, index % columns], dim=1)
    index = norms.transpose(1, 2).flatten(1).argmax(dim=1)
    return torch.stack([index % rows, index // rows], dim=1)


def _take(components: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    batch = torch.arange(components.shape[0], device=components.device)
    return components[batch, phase[:, 0], phase[:, 1]]


def _check_phase(phase: Any, batch: int, stride: tuple[int, int], device: torch.device) -> torch.Tensor:
    tensor = phase if isinstance(phase, torch.Tensor) else torch.as_tensor(phase)
    if tensor.dtype.is_floating_point or tensor.is_complex() or tensor.dtype == torch.bool:
        fail("phase", f"expected integer (row, column) offsets, got {describe(phase)}")
    if tuple(tensor.shape) != (batch, 2):
        fail("phase", f"expected shape ({batch}, 2): one (row, column) offset per sample, got {describe(phase)}")
    tensor = tensor.to(device=device, dtype=torch.long)
    limits = torch.tensor(stride, device=device)
    if bool(((tensor < 0) | (tensor >= limits)).any()):
        fail("phase", f"offsets must lie in [0, {stride[0]}) x [0, {stride[1]}) for stride {stride}")
    return tensor


def polyphase_norms(x: torch.Tensor, stride: int | tuple[int, int] = 2, norm: str = "l2") -> torch.Tensor:
    """The norm of every polyphase component of every sample, ``(N, sy, sx)``: what :func:`aps_pool2d` compares.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[0, 0, 1, 2] = 3.0
        >>> polyphase_norms(x)
        tensor([[[0., 0.],
                 [3., 0.]]], dtype=torch.float64)
    """
    maps = check_maps(x, "x", batched=True)
    return _norms(_components(maps, check_pair(stride, "stride", minimum=1)), check_choice(norm, "norm", APS_NORMS))


def aps_pool2d(
    x: torch.Tensor,
    stride: int | tuple[int, int] = 2,
    norm: str = "l2",
    *,
    phase: Any = None,
    return_phase: bool = False,
    tie_break: str = "row-major",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Adaptive polyphase sampling: per sample, keep the polyphase component with the largest norm.

    See the module docstring for when this is exactly invariant to circular shifts (sizes divisible by the
    stride, circular padding before it, a unique maximum) and how sizes that are not multiples are handled.

    Args:
        x: floating-point tensor ``(N, C, H, W)``.
        stride: subsampling factor, or a ``(sy, sx)`` pair.
        norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``, over all channels and positions of a component.
        phase: ``(N, 2)`` integer ``(row, column)`` offsets to use instead of choosing (a follower: a residual
            shortcut applying the main path's choice).
        return_phase: also return the ``(N, 2)`` phase used.
        tie_break: which of equal largest norms wins: the first phase in ``"row-major"`` order (default) or in
            ``"column-major"`` order (Chaman's reference: ``(0, 0), (1, 0), (0, 1), (1, 1)``).

    Returns:
        The ``(N, C, ceil(H / sy), ceil(W / sx))`` component, and with ``return_phase`` the phase.

    Raises:
        ShiftlabError: ``x`` not ``(N, C, H, W)`` floating, a stride below 1, an unknown norm, a phase of the wrong
            shape, type or range.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, \\lceil H / s_y \\rceil, \\lceil W / s_x \\rceil)`; phase :math:`(N, 2)`

    Example:
        >>> x = torch.zeros(2, 1, 4, 4)
        >>> x[0, 0, 1, 2] = 1.0  # sample 0: the pixel sits at phase (1, 0)
        >>> x[1, 0, 3, 3] = 1.0  # sample 1: at phase (1, 1)
        >>> out, phase = aps_pool2d(x, 2, return_phase=True)
        >>> phase.tolist()
        [[1, 0], [1, 1]]
        >>> out[:, 0].tolist()
        [[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]
    """
    maps = check_maps(x, "x", batched=True)
    strides = check_pair(stride, "stride", minimum=1)
    norm = check_choice(norm, "norm", APS_NORMS)
    order = check_choice(tie_break, "tie_break", APS_TIE_BREAKS)
    given = None if phase is None else _check_phase(phase, maps.shape[0], strides, maps.device)
    out, used = _aps(maps, strides, norm, given, order)
    return (out, used) if return_phase else out


def _aps(
    x: torch.Tensor, stride: tuple[int, int], norm: str, phase: torch.Tensor | None, tie_break: str = "row-major"
) -> tuple[torch.Tensor, torch.Tensor]:
    components = _components(x, stride)
    used = _choose(components, norm, tie_break) if phase is None else phase
    return _take(components, used), used


class PhaseLink:
    """One polyphase choice shared by APS layers whose outputs are added together.

    The first member to run in a forward pass chooses the phase from its own map; the other members apply it.
    In torchvision's ResNet blocks the main path runs first, so its choice goes to the ``downsample`` shortcut, as
    in Chaman's reference. Once every member has used it, or when a member runs again (a new forward pass), the
    next member to run chooses afresh. A member that gets a map of another batch size or spatial size than the
    chooser raises: linked layers must subsample the same grid.

    The link is a plain object, not a module: it adds nothing to the state_dict, survives ``copy.deepcopy`` (each
    copy of a model gets its own link), and forgets any choice when copied or pickled. It is not safe to run one
    model object from several threads at once (``nn.DataParallel`` replicas share it); use one process per
    device (``DistributedDataParallel``).

    Example:
        >>> main, shortcut = APSPool2d(2), APSPool2d(2)
        >>> link = PhaseLink.connect({"main": main, "shortcut": shortcut})
        >>> generator = torch.Generator().manual_seed(0)
        >>> _ = main(torch.rand(3, 4, 8, 8, generator=generator))
        >>> _ = shortcut(torch.rand(3, 2, 8, 8, generator=generator))  # other data, same grid: main's choice
        >>> torch.equal(main.last_phase, shortcut.last_phase)
        True
    """

    def __init__(self, members: Sequence[str]) -> None:
        self.members = tuple(members)
        self._reset()

    @classmethod
    def connect(cls, layers: dict[str, APSPool2d]) -> PhaseLink:
        """Link the given APS layers (name -> layer); returns the link."""
        link = cls(list(layers))
        for name, layer in layers.items():
            layer.link, layer.link_name = link, name
        return link

    def _reset(self) -> None:
        self._phase: torch.Tensor | None = None
        self._used: set[str] = set()
        self._chooser = ""
        self._grid: tuple[int, ...] = ()

    def take(self, member: str, x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor | None:
        """The phase chosen in this round, for ``member``; ``None`` when ``member`` must choose."""
        if self._phase is None or member in self._used:
            return None
        grid = (x.shape[0], x.shape[-2], x.shape[-1], *stride)
        if grid != self._grid:
            fail(
                f"APS layer '{member}'",
                f"shares its polyphase choice with '{self._chooser}', which subsampled {_grid_text(self._grid)}, "
                f"but it got {_grid_text(grid)}; linked layers must subsample maps of the same size at the same stride",
            )
        phase = self._phase
        self._used.add(member)
        if len(self._used) == len(self.members):
            self._reset()
        return phase

    def publish(self, member: str, phase: torch.Tensor, x: torch.Tensor, stride: tuple[int, int]) -> None:
        """Record the phase ``member`` chose, for the other members of this round."""
        self._phase, self._used, self._chooser = phase, {member}, member
        self._grid = (x.shape[0], x.shape[-2], x.shape[-1], *stride)
        if len(self.members) == 1:
            self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"members": self.members}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.members = tuple(state["members"])
        self._reset()

    def __repr__(self) -> str:
        return f"PhaseLink({', '.join(self.members)})"


def _grid_text(grid: tuple[int, ...]) -> str:
    batch, height, width, rows, columns = grid
    stride = rows if rows == columns else (rows, columns)
    return f"{batch} map(s) of {height}x{width} at stride {stride}"


class APSPool2d(nn.Module):
    """Module form of :func:`aps_pool2d`, optionally after a stride-1 binomial blur ("APS + LPF").

    After each call, :attr:`last_phase` holds the ``(N, 2)`` phase used. :meth:`forward` takes an explicit
    ``phase``; a module in a :class:`PhaseLink` shares its choice with the other members.

    Args:
        stride: subsampling factor, or a ``(sy, sx)`` pair.
        norm: ``"l2"``, ``"l1"`` or ``"linf"``.
        kernel_size: size of a binomial blur applied at stride 1 before choosing (1: none, Chaman's default;
            Chaman's "APS + LPF" variants use 2 to 7).
        padding: padding mode of that blur (torch's names: ``"zeros"``, ``"reflect"``, ``"replicate"``,
            ``"circular"``); ``"circular"`` keeps exact invariance.
        channels: keep the blur filter per channel, as Chaman's ``ApsPool(C, filt_size=k)`` does: a persistent
            buffer ``filt`` of shape ``(C, 1, ky, kx)`` on this module (only when ``kernel_size > 1``, as in the
            reference), applied as loaded, so that the reference's state_dicts load; inputs must have ``C``
            channels. By default the filter is not in the state_dict.
        tie_break: ``"row-major"`` (default) or ``"column-major"`` (Chaman's order): see :func:`aps_pool2d`.

    Shape:
        - input: :math:`(N, C, H, W)`
        - output: :math:`(N, C, \\lceil H / s_y \\rceil, \\lceil W / s_x \\rceil)`

    Example:
        >>> pool = APSPool2d(stride=3)
        >>> pool(torch.rand(2, 4, 9, 12)).shape, pool.last_phase.shape
        (torch.Size([2, 4, 3, 4]), torch.Size([2, 2]))
        >>> list(APSPool2d(2, kernel_size=3, channels=4).state_dict())
        ['filt']
    """

    filt: torch.Tensor

    def __init__(
        self,
        stride: int | tuple[int, int] = 2,
        norm: str = "l2",
        *,
        kernel_size: int | tuple[int, int] = 1,
        padding: str = "circular",
        channels: int | None = None,
        tie_break: str = "row-major",
    ) -> None:
        super().__init__()
        self.stride = check_pair(stride, "stride", minimum=1)
        self.norm = check_choice(norm, "norm", APS_NORMS)
        self.tie_break = check_choice(tie_break, "tie_break", APS_TIE_BREAKS)
        blur = BlurPool2d(kernel_size, stride=1, padding=check_padding(padding))
        self.blur: BlurPool2d | None = blur if blur.kernel_size != (1, 1) and channels is None else None
        self.channels: int | None = None
        self.blur_padding = blur.padding
        if channels is not None and blur.kernel_size != (1, 1):
            self.register_buffer("filt", per_channel_filter(blur.kernel_size, channels))
            self.channels = self.filt.shape[0]
        self.last_phase: torch.Tensor | None = None
        self.link: PhaseLink | None = None
        self.link_name = ""

    def forward(self, x: torch.Tensor, phase: Any = None) -> torch.Tensor:
        maps = check_maps(x, "x", batched=True)
        if self.blur is not None:
            maps = self.blur(maps)
        elif self.channels is not None:
            maps = check_channels(maps, self.channels, "APSPool2d")
            weight = self.filt.to(device=maps.device, dtype=maps.dtype)
            maps = blur_with_filter(maps, weight, (1, 1), self.blur_padding)
        given = None
        if phase is not None:
            given = _check_phase(phase, maps.shape[0], self.stride, maps.device)
        elif self.link is not None:
            given = self.link.take(self.link_name, maps, self.stride)
        out, used = _aps(maps, self.stride, self.norm, given, self.tie_break)
        if self.link is not None and phase is None and given is None:
            self.link.publish(self.link_name, used, maps, self.stride)
        self.last_phase = used.detach()
        return out

    def extra_repr(self) -> str:
        stride = self.stride[0] if self.stride[0] == self.stride[1] else self.stride
        text = f"stride={stride}, norm={self.norm!r}"
        if self.tie_break != "row-major":
            text += f", tie_break={self.tie_break!r}"
        if self.channels is not None:
            rows, columns = self.filt.shape[-2:]
            size = rows if rows == columns else (rows, columns)
            text += f", kernel_size={size}, padding={self.blur_padding!r}, channels={self.channels}"
        if self.link is not None:
            text += f", linked with {', '.join(m for m in self.link.members if m != self.link_name)}"
        return text
