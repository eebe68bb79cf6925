"""Tests for shiftlab.probing.engine and shiftlab.shifts.ShiftMode: the one shifted forward pass and the one shift mode
value.

ShiftMode answers every question about a mode (does it wrap, does it need a border core, how inputs are built, how
outputs are moved back) as the shift functions do, and a mode given as a string is validated once on its way
through a probe. The engine restores the model (hooks, train/eval flags) also when it raises, keeps its layout plans
itself (a second run at the same size plans nothing), and hands every watched output of every pass to its callbacks.
"""

from __future__ import annotations

import pytest
import torch
from nets import pooled_net
from torch import nn

import shiftlab.shifts
from shiftlab.errors import InternalError, ShiftlabError
from shiftlab.probing.borders import ModeChoice, choose_mode
from shiftlab.probing.engine import Seen, ShiftedForward, eval_mode
from shiftlab.probing.equivariance import equivariance_error
from shiftlab.probing.layerwise import probe
from shiftlab.shifts import SHIFT_MODES, ShiftMode, shift, shift_with_mask


def images(count: int = 2, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


class TestShiftMode:
    #: mode -> (wraps, needs a border core, sub-pixel shifts, how outputs move back)
    EXPECTED = {
        "circular": (True, False, False, "circular"),
        "zero": (False, True, False, "zero"),
        "crop": (False, True, False, "zero"),
        "fourier": (True, False, True, "circular"),
    }

    def test_the_four_modes_answer_what_the_strings_meant(self):
        assert tuple(self.EXPECTED) == SHIFT_MODES
        for name, (wraps, needs_core, subpixel, move) in self.EXPECTED.items():
            mode = ShiftMode.of(name)
            assert (mode.wraps, mode.needs_core, mode.subpixel, mode.move) == (wraps, needs_core, subpixel, move)
            assert mode.reason == "given" and not mode.chosen_by_auto

    def test_a_shift_mode_passes_through_unvalidated(self):
        mode = ShiftMode("zero", "auto: something")
        assert ShiftMode.of(mode) is mode
        assert choose_mode(nn.Conv2d(1, 1, 3), mode) is mode
        assert mode.chosen_by_auto

    def test_mode_choice_is_the_shift_mode(self):
        assert ModeChoice is ShiftMode
        assert choose_mode(nn.Conv2d(1, 1, 3, padding=1)) == ShiftMode(
            "crop", "auto: 1 layer pads with zeros (the model)"
        )

    @pytest.mark.parametrize("bad", ["wrap", "auto", "Circular", 3])
    def test_unknown_mode_refused(self, bad):
        with pytest.raises(ShiftlabError) as error:
            ShiftMode.of(bad)
        assert str(error.value) == f"mode: must be one of circular, zero, crop, fourier, got {bad!r}"

    @pytest.mark.parametrize("name", SHIFT_MODES)
    def test_inputs_are_the_shift_functions(self, name):
        """Reference and shifted inputs against shift() itself: the crop window at the largest shift, else x."""
        x = images(count=1, size=10)
        shifts = [(0, 0), (1, -2), (-3, 1)]
        mode = ShiftMode.of(name)
        reference, margin = mode.reference(x, shifts)
        if name == "crop":
            assert margin == (3, 2)
            torch.testing.assert_close(reference, x[..., 3:7, 2:8])
        else:
            assert margin is None and reference is x
        for dy, dx in shifts:
            expected = shift(x, dy, dx, mode=name, margin=margin) if name == "crop" else shift(x, dy, dx, mode=name)
            torch.testing.assert_close(mode.shifted(x, dy, dx, margin), expected)
            assert mode.shifted(x, dy, dx, margin).shape == reference.shape

    def test_move_is_how_outputs_are_compared(self):
        """A zero-fill move leaves an invalid band; a circular one none."""
        x = torch.arange(6.0).reshape(2, 3)
        for name in SHIFT_MODES:
            _, valid = shift_with_mask(x, 0, 1, mode=ShiftMode.of(name).move)
            assert int(valid.sum()) == (6 if ShiftMode.of(name).wraps else 4)

    def test_reference_refuses_shifts_that_do_not_fit(self):
        with pytest.raises(ShiftlabError) as error:
            ShiftMode.of("crop").reference(torch.zeros(1, 6, 6), [(0, 3)])
        assert (
            str(error.value)
            == "shifts: crop windows for shifts up to (0, 3) need an input of at least 1x7 pixels, got 6x6"
        )

    @pytest.mark.parametrize("mode", ["zero", "crop", "circular"])
    def test_a_string_mode_is_validated_once_through_a_probe(self, monkeypatch, mode):
        calls = []
        original = shiftlab.shifts.check_choice

        def counting(value, subject, choices):
            calls.append(value)
            return original(value, subject, choices)

        monkeypatch.setattr(shiftlab.shifts, "check_choice", counting)
        probe(pooled_net(), images(), shifts=[(0, 1), (1, 0)], mode=mode)
        assert calls == [mode]
        calls.clear()
        equivariance_error(nn.Conv2d(3, 2, 3, padding=1), images(count=1), [(0, 1), (1, 1)], mode=mode)
        assert calls == [mode]


class Counting(nn.Module):
    """pooled_net (as ``net``), counting forward passes and the images in each."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.net = pooled_net()
        self.batches: list[int] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if self.fail and len(self.batches) > 1:
            raise RuntimeError("broken on purpose")
        return self.net(x)


class TestEngine:
    def test_every_watched_output_of_every_pass_is_handed_over(self):
        model = Counting()
        engine = ShiftedForward(model, [("net.0", model.net[0])])
        seen: list[Seen] = []
        info = engine.run(
            images(count=3), [(0, 0), (0, 1), (1, 0)], ShiftMode.of("circular"), seen.append, batch_size=6
        )
        # batch 6: the reference and 2 shifted copies per image, 2 images per pass; the zero shift rides along
        assert model.batches == [1, 6, 3]  # the plan's pass (one image, another size), then the passes
        assert info.images == 3 and info.passes == 2 and info.shapes == [(3, 12, 12)]
        assert [(item.label, item.step.first, item.step.images) for item in seen] == [
            ("net.0", 0, 2),
            ("output", 0, 2),
            ("net.0", 2, 1),
            ("output", 2, 1),
        ]
        assert all(item.step.indices == (1, 2) and item.step.identity == (0,) for item in seen)
        assert all(item.fits and item.core is None for item in seen)
        x = images(count=3)
        with torch.no_grad():  # the first pass: the two references, then their copies shifted by (0, 1) and (1, 0)
            expected = torch.cat(
                [model.net[0](x[:2]), model.net[0](x[:2].roll(1, -1)), model.net[0](x[:2].roll(1, -2))]
            )
        torch.testing.assert_close(seen[0].spatial, expected)

    def test_the_plan_is_held_by_the_engine(self):
        model = Counting()
        engine = ShiftedForward(model, [("net.0", model.net[0])])
        mode = ShiftMode.of("circular")
        engine.run(images(), [(0, 1)], mode, lambda _: None)
        assert model.batches == [1, 4]
        model.batches.clear()
        engine.run(images(seed=1), [(0, 1)], mode, lambda _: None)
        assert model.batches == [4]  # same size: planned already
        engine.run(images(size=16), [(0, 1)], mode, lambda _: None)
        assert model.batches == [4, 1, 4]  # another size: one more plan
        other = ShiftedForward(model, [("net.0", model.net[0])])  # a new engine plans again: no hidden cache
        model.batches.clear()
        other.run(images(), [(0, 1)], mode, lambda _: None)
        assert model.batches == [1, 4]

    @pytest.mark.parametrize("mode", ["zero", "crop"])
    def test_border_core_once_per_input_size(self, mode):
        model = Counting()
        engine = ShiftedForward(model, [("net.0", model.net[0])])
        cores = []
        engine.run(
            [images(count=2), images(count=1, size=16)],
            [(0, 2)],
            ShiftMode.of(mode),
            lambda item: cores.append(item.core),
            batch_size=2,
        )
        # plan; for each size: the border pass (one image), then one pass per image
        assert model.batches == [1, 1, 2, 2, 1, 2]
        core, whole_map = cores[0]
        assert core.dtype == torch.bool and not whole_map
        # the band of the shift (2 columns each side) and the 3x3 convolution's reach: out; the middle: in
        assert not bool(core[:, :3].any()) and not bool(core[:, -3:].any()) and bool(core[:, core.shape[1] // 2].all())

    def test_hooks_removed_and_flags_restored_when_the_model_raises(self):
        model = Counting(fail=True).train()
        model.net[0].eval()
        engine = ShiftedForward(model, [("net.0", model.net[0])])
        with pytest.raises(
            ShiftlabError,
            match=r"^model Counting: rejected an input of shape \(4, 3, 12, 12\): RuntimeError: broken on purpose$",
        ):
            engine.run(images(), [(0, 1)], ShiftMode.of("circular"), lambda _: None)
        assert all(not module._forward_hooks for module in model.modules())
        assert model.training and model.net.training and not model.net[0].training

    def test_a_failing_callback_is_shiftlabs_own_error(self):
        model = Counting()
        engine = ShiftedForward(model, [("net.0", model.net[0])])

        def broken(item: Seen) -> None:
            raise KeyError("oops")

        with pytest.raises(InternalError, match=r"the probe's hook on layer 'net.0' failed: KeyError"):
            engine.run(images(), [(0, 1)], ShiftMode.of("circular"), broken)
        assert all(not module._forward_hooks for module in model.modules())

    def test_eval_mode_restores_each_flag(self):
        model = nn.Sequential(nn.Dropout(), nn.Sequential(nn.Dropout()).eval())
        with pytest.raises(RuntimeError), eval_mode(model):
            assert not any(module.training for module in model.modules())
            raise RuntimeError("inside")
        assert [module.training for module in model.modules()] == [True, True, False, False]


class TestFunctionsThroughTheEngine:
    """equivariance_error and the assertions of shiftlab.testing are users of the engine, as the probe is."""

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular", dtype=torch.float64)
            self.drop = nn.Dropout(0.5)
            self.calls: list[tuple[tuple[int, ...], bool, torch.dtype]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append((tuple(x.shape), self.training, x.dtype))
            return self.drop(self.conv(x))

    @pytest.mark.parametrize("mode, border_passes", [("circular", 0), ("zero", 1), ("crop", 1)])
    def test_one_call_per_input_and_none_for_the_zero_shift(self, mode, border_passes):
        calls = []

        def fn(tensor):
            calls.append(tuple(tensor.shape))
            return tensor * 2.0

        x = torch.rand(2, 3, 12, 12)
        equivariance_error(fn, x, [(0, 0), (0, 1), (2, 0)], mode=mode)
        window = (2, 3, 8, 10) if mode == "crop" else (2, 3, 12, 12)  # crop: less the largest shift, on each side
        assert calls == [window] * (border_passes + 1 + 2)  # (border pass), reference, the two non-zero shifts

    def test_a_module_runs_in_eval_mode_on_its_dtype_and_is_restored(self):
        from shiftlab.testing import assert_shift_equivariant, assert_shift_invariant

        model = self.Recording().train()
        x = torch.rand(1, 3, 12, 12)  # float32: moved to the module's float64, as the probe does
        result = equivariance_error(model, x, [(0, 1), (3, 2)])
        assert result.max_rel_l2 < 1e-12  # dropout off: a circular convolution is exactly equivariant
        assert {(training, dtype) for _, training, dtype in model.calls} == {(False, torch.float64)}
        assert model.training and model.drop.training
        model.calls.clear()
        assert_shift_equivariant(model, x, [(0, 1)])
        with pytest.raises(AssertionError):
            assert_shift_invariant(model, x, [(0, 1)])
        assert {(training, dtype) for _, training, dtype in model.calls} == {(False, torch.float64)}
        assert model.training

    def test_nan_outputs_are_refused_naming_fn(self):
        def poisoned(tensor):
            out = tensor.clone()
            if bool(tensor[..., 0, 0].eq(0.5).any()):  # only the copy shifted by (0, 1) sees the 0.5
                out[..., 0, 0] = float("nan")
            return out

        x = torch.zeros(1, 6, 6)
        x[0, 0, 5] = 0.5
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(poisoned, x, [(1, 0), (0, 1)])
        assert str(info.value) == (
            "fn: outputs NaN or infinity for input image 0 (shifted by (0, 1)): no equivariance can be measured from "
            "that (check fn)"
        )
