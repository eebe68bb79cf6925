"""Tests for shiftlab.probe: layer-by-layer equivariance of whole models.

Known answers: every layer of a circularly padded stride-1 network is exact
under circular shifts; after a stride-2 pooling only even shifts are; a zero
padded network of total stride s is exact away from the border, in zero and
crop modes, for multiples of each layer's stride. Around them: the probe
leaves the model as it found it (hooks, train/eval flags, parameters,
buffers, outputs), does not depend on how inputs are batched, and writes
tables and figures that read back.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import weakref
from collections import OrderedDict

import pytest
import torch
from nets import fcn_stride_four, pooled_net
from torch import nn

from shiftlab.errors import InternalError, ShiftlabError
from shiftlab.models import SimpleCNN, load_model
from shiftlab.ops import Convolve, MaxPool
from shiftlab.probing.equivariance import NOTE_GLOBAL, NOTE_NOT_MULTIPLE
from shiftlab.probing.layerwise import COLUMNS, ProbeResult, probe, select_layers

EXACT = 1e-6
LAYOUT_IMAGES = 1  # the layouts are planned on one image at another size

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------- models


def circular_net(seed: int = 0) -> nn.Sequential:
    """Stride 1, circular padding everywhere: every layer commutes with every circular shift."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(6, 6, 5, padding=2, padding_mode="circular", bias=False),
        nn.BatchNorm2d(6),
        nn.GELU(),
    )
    _randomise_batch_norm(net)
    return net.eval()


def _randomise_batch_norm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


def no_hooks_left(model: nn.Module) -> bool:
    return all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


def training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def images(count: int = 2, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(seed))


def rows_of(result: ProbeResult, layer: str) -> dict[tuple[float, float], dict]:
    return {(row["dy"], row["dx"]): row for row in result.layer_rows(layer)}


# --------------------------------------------------------------------------- known answers


class TestCircularNetworkIsExact:
    SHIFTS = [(0, 0), (1, 0), (0, 1), (-1, -1), (3, -5), (-7, 6), (15, -15), (-13, 11)]  # on 16x16: all wrap

    def test_every_layer_exact(self):
        result = probe(circular_net(), images(), shifts=self.SHIFTS)
        assert result.layers == ["0", "1", "2", "3", "4", "output"]
        assert len(result.rows) == 6 * len(self.SHIFTS)
        for row in result.rows:
            assert row["rel_l2"] <= EXACT, (row["layer"], row["dy"], row["dx"])
            assert row["stride"] == [1, 1] and row["multiple"]
            assert row["valid_fraction"] == 1.0
            assert row["cosine"] == pytest.approx(1.0, abs=1e-6)

    def test_types_depths_and_shapes(self):
        result = probe(circular_net(), images(size=12), shifts=[(0, 1)])
        summary = {row["layer"]: row for row in result.summary()}
        assert [summary[name]["type"] for name in result.layers] == [
            "Conv2d",
            "ReLU",
            "Conv2d",
            "BatchNorm2d",
            "GELU",
            "Sequential",
        ]
        assert [summary[name]["depth"] for name in result.layers] == [1, 2, 3, 4, 5, 6]
        assert summary["0"]["shape"] == [6, 12, 12]

    def test_first_inexact_layer_is_none(self):
        assert probe(circular_net(), images(), shifts=[(2, 3)]).first_inexact_layer() is None

    def test_shiftlab_modules_are_watched(self):
        net = nn.Sequential(Convolve("sobel_y", padding="circular"), MaxPool(2))
        result = probe(net, images(channels=1), shifts=[(0, 2), (0, 1)])
        assert result.layers == ["0", "1", "output"]
        assert rows_of(result, "0")[(0, 1)]["rel_l2"] <= EXACT
        assert rows_of(result, "1")[(0, 2)]["rel_l2"] <= EXACT
        assert rows_of(result, "1")[(0, 1)]["rel_l2"] > 1e-2


class TestStrideTwoPooling:
    EVEN = [(0, 2), (2, 0), (-2, 4), (6, -6)]
    ODD = [(0, 1), (1, 0), (1, 1), (-3, 2)]

    def test_rows_before_and_after_the_pooling(self):
        result = probe(pooled_net(), images(), shifts=self.EVEN + self.ODD)
        for layer in ("0", "1"):
            for row in result.layer_rows(layer):
                assert row["stride"] == [1, 1] and row["rel_l2"] <= EXACT
        for layer in ("2", "3", "output"):
            rows = rows_of(result, layer)
            for shift in self.EVEN:
                row = rows[shift]
                assert row["stride"] == [2, 2] and row["multiple"] and row["note"] == ""
                assert (row["feature_dy"], row["feature_dx"]) == (shift[0] / 2, shift[1] / 2)
                assert (row["aligned_dy"], row["aligned_dx"]) == (shift[0] // 2, shift[1] // 2)
                assert row["rel_l2"] <= EXACT, (layer, shift)
            for shift in self.ODD:
                row = rows[shift]
                assert not row["multiple"] and row["note"] == NOTE_NOT_MULTIPLE
                assert row["rel_l2"] > 1e-2, (layer, shift)

    def test_first_inexact_layer_is_the_pooling(self):
        result = probe(pooled_net(), images(), shifts=[(0, 1), (0, 2)])
        assert result.first_inexact_layer() == "2"

    def test_summary(self):
        result = probe(pooled_net(), images(), shifts=[(0, 0), (0, 1), (0, 2), (1, 1)])
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["0"]["shifts"] == 3  # the zero shift is excluded
        assert summary["0"]["exact_shifts"] == 3 and summary["0"]["max_rel_l2"] <= EXACT
        pooling = summary["2"]
        assert pooling["exact_shifts"] == 1  # only (0, 2)
        rows = rows_of(result, "2")
        errors = [rows[shift]["rel_l2"] for shift in [(0, 1), (0, 2), (1, 1)]]
        assert pooling["mean_rel_l2"] == pytest.approx(sum(errors) / 3)
        assert pooling["max_rel_l2"] == pytest.approx(max(errors))
        assert pooling["stride"] == [2, 2] and pooling["type"] == "MaxPool2d"

    def test_only_the_zero_shift(self):
        result = probe(pooled_net(), images(), shifts=[(0, 0)])
        assert all(row["rel_l2"] == 0.0 for row in result.rows)
        assert all(row["shifts"] == 1 for row in result.summary())


class TestZeroPaddedNetworkOfStrideFour:
    MULTIPLES = [(0, 4), (4, -4), (-8, 0)]
    OTHERS = [(0, 1), (2, 0), (-3, 1)]

    @pytest.mark.parametrize("mode, size", [("zero", 48), ("crop", 64)])
    def test_exact_for_multiples_of_each_layers_stride(self, mode, size):
        result = probe(
            fcn_stride_four(), images(count=2, size=size), shifts=[(0, 0)] + self.MULTIPLES + self.OTHERS, mode=mode
        )
        expected_strides = {"0": [1, 1], "1": [1, 1], "2": [2, 2], "3": [4, 4], "output": [4, 4]}
        assert result.layers == list(expected_strides)
        for row in result.rows:
            layer, shift = row["layer"], (row["dy"], row["dx"])
            stride = expected_strides[layer]
            assert row["stride"] == stride
            multiple = shift[0] % stride[0] == 0 and shift[1] % stride[1] == 0
            assert row["multiple"] == multiple
            assert 0 < row["valid_fraction"] < 1  # the border band is left out
            if multiple:
                assert row["rel_l2"] <= 1e-5, (layer, shift)
            elif stride != [1, 1]:
                assert row["rel_l2"] > 1e-2, (layer, shift)

    def test_circular_mode_is_not_exact_on_a_zero_padded_net_border_effects(self):
        result = probe(fcn_stride_four(), images(size=32), shifts=[(0, 4), (4, 4)], mode="circular")
        for row in result.layer_rows("0"):
            assert row["valid_fraction"] == 1.0 and row["rel_l2"] > 1e-3

    def test_auto_mode_chooses_crop_and_matches_it(self):
        # the default: the zero padding is seen, and the result is exactly that of mode="crop"
        shifts = [(0, 0)] + self.MULTIPLES + self.OTHERS
        auto = probe(fcn_stride_four(), images(count=2, size=64), shifts=shifts)
        crop = probe(fcn_stride_four(), images(count=2, size=64), shifts=shifts, mode="crop")
        assert auto.protocol["mode"] == "crop"
        assert auto.protocol["mode_reason"] == "auto: 2 layers pad with zeros (0, 3)"
        assert crop.protocol["mode_reason"] == "given"
        assert auto.rows == crop.rows

    def test_fourier_mode_runs(self):
        result = probe(circular_net(), images(size=16), shifts=[(0, 1), (0.5, 0)], mode="fourier")
        rows = rows_of(result, "0")
        assert rows[(0, 1)]["rel_l2"] <= 1e-5
        assert not rows[(0.5, 0)]["multiple"]


class TestOutputRow:
    def test_classifier_output_is_global(self):
        model, _ = load_model("simple_cnn")
        result = probe(model, images(count=3, size=32), shifts=[(0, 1), (0, 4)])
        rows = result.layer_rows("output")
        assert all(row["stride"] is None and row["note"] == NOTE_GLOBAL for row in rows)
        assert rows[0]["shape"] == [10] and rows[0]["type"] == "SimpleCNN"
        for row in rows:
            assert 0.0 <= row["top1_agreement"] <= 1.0
            assert row["top1_agreement"] * 3 == pytest.approx(round(row["top1_agreement"] * 3))
        assert all(
            row["top1_agreement"] is None for row in result.rows if row["layer"] != "output" and row["layer"] != "head"
        )

    def test_top1_agreement_is_one_for_a_circular_invariant_classifier(self):
        model, _ = load_model("circular_cnn")
        result = probe(model, images(count=4, size=16), shifts=[(0, 1), (3, -2), (7, 7)])
        for row in result.layer_rows("output"):
            assert row["top1_agreement"] == 1.0
            assert row["rel_l2"] <= 1e-5
        for layer in result.layers:
            if result.layer_rows(layer)[0]["stride"] is not None:
                assert all(row["rel_l2"] <= 1e-5 for row in result.layer_rows(layer)), layer

    def test_top1_agreement_counts_changed_classes(self):
        class ArgmaxOfFirstPixels(nn.Module):
            """Logits = the first row of pixels: the top-1 class is the column of the largest pixel of row 0."""

            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(torch.ones(()))

            def forward(self, x):
                return x[:, 0, 0, :] * self.scale

        x = torch.zeros(2, 1, 4, 4)
        x[0, 0, 0, 1] = 1.0  # image 0: class 1; a vertical shift moves it out of row 0
        x[1, 0, :, 2] = 1.0  # image 1: a full column; vertical shifts keep class 2
        result = probe(ArgmaxOfFirstPixels(), x, shifts=[(1, 0), (0, 1)])
        rows = rows_of(result, "output")
        assert rows[(1, 0)]["top1_agreement"] == 0.5
        assert rows[(0, 1)]["top1_agreement"] == 0.0


# --------------------------------------------------------------------------- the model is left as it was


class Flaky(nn.Module):
    """Raises on its ``fail_on``-th forward call."""

    def __init__(self, fail_on: int, error: type[Exception] = RuntimeError) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.calls = 0
        self.fail_on = fail_on
        self.error = error

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error(f"flaky failure on call {self.calls}\nsecond line")
        return self.norm(self.conv(x))


class TestModelIsLeftUnchanged:
    def test_no_hooks_after_probing(self):
        model, _ = load_model("simple_cnn")
        probe(model, images(size=32), shifts=[(0, 1)], mode="zero")
        assert no_hooks_left(model)

    def test_existing_hooks_are_kept(self):
        model = circular_net()
        seen = []
        handle = model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape[0]))
        probe(model, images(), shifts=[(0, 1)])
        assert len(model[0]._forward_hooks) == 1  # the user's own hook is still there
        assert seen  # the user's hook ran during the probe
        handle.remove()
        assert no_hooks_left(model)

    # Call 1 plans the layouts (one image at another size: a failure there only means the model takes one size, and
    # the plan is made at the probed size instead), call 2 is the border pass in zero mode, the rest measure.
    @pytest.mark.parametrize(
        "mode, fail_on, shape",
        [
            ("circular", 2, (4, 3, 16, 16)),
            ("zero", 2, (1, 3, 16, 16)),
            ("zero", 3, (4, 3, 16, 16)),
        ],
    )
    def test_model_raising(self, mode, fail_on, shape):
        model = Flaky(fail_on)
        model.train()
        model.norm.eval()
        flags = training_flags(model)
        with pytest.raises(ShiftlabError) as info:
            probe(model, images(), shifts=[(0, 1)], mode=mode)
        assert (
            str(info.value)
            == f"model Flaky: rejected an input of shape {shape}: RuntimeError: flaky failure on call {fail_on}"
        )
        assert no_hooks_left(model)
        assert training_flags(model) == flags

    def test_a_model_that_refuses_the_other_size_is_planned_at_one_size(self):
        model = Flaky(1)
        result = probe(model, images(), shifts=[(0, 1)], mode="circular")
        assert result.protocol["layouts"].startswith(
            "one input size, 16x16 (the model refused 80x80: RuntimeError: flaky failure on call 1)"
        )
        assert all(row["layout"] == "NCHW" for row in result.rows if row["layer"] != "output")

    def test_model_raising_an_unexpected_error(self):
        # Whatever the model raises is the model's failure (bad input), named with its type.
        model = Flaky(2, error=KeyError)
        model.train()
        flags = training_flags(model)
        with pytest.raises(ShiftlabError) as info:
            probe(model, images(), shifts=[(0, 1)], mode="circular")
        assert str(info.value).startswith("model Flaky: rejected an input of shape (4, 3, 16, 16): KeyError: 'flaky")
        assert no_hooks_left(model)
        assert training_flags(model) == flags

    @pytest.mark.parametrize("mode", ["circular", "crop"])
    def test_a_fault_in_shiftlabs_own_hook_is_an_internal_error(self, mode, monkeypatch):
        # A bug in the measurement must never come out as "the model rejected an input".
        def broken(*args, **kwargs):
            raise IndexError("list index out of range")

        monkeypatch.setattr("shiftlab.probing.equivariance.pair_sums", broken)
        model = pooled_net()
        with pytest.raises(InternalError) as info:
            probe(model, images(), shifts=[(0, 1)], mode=mode)
        assert str(info.value).startswith(
            "shiftlab internal error: the probe's hook on layer '0' failed: IndexError: list index out of range"
        )
        assert "a bug in shiftlab" in str(info.value)
        assert isinstance(info.value.__cause__, IndexError)
        assert not isinstance(info.value, ShiftlabError)
        assert no_hooks_left(model)

    def test_mixed_training_flags_restored(self):
        model, _ = load_model("simple_cnn")
        model.train()
        model.features[1].eval()
        model.head.eval()
        flags = training_flags(model)
        assert len(set(flags.values())) == 2
        probe(model, images(size=32), shifts=[(0, 1), (1, 0)])
        assert training_flags(model) == flags

    def test_eval_model_stays_in_eval(self):
        model = circular_net()
        probe(model, images(), shifts=[(0, 1)])
        assert not any(training_flags(model).values())

    def test_parameters_and_buffers_unchanged_in_train_mode(self):
        model, _ = load_model("simple_cnn")
        _randomise_batch_norm(model)
        model.train()
        before = {name: value.clone() for name, value in model.state_dict().items()}
        probe(model, images(count=3, size=32), shifts=[(0, 1), (2, 2)], mode="crop")
        after = model.state_dict()
        assert before.keys() == after.keys()
        for name, value in before.items():
            assert torch.equal(after[name], value), name
        assert int(after["features.1.num_batches_tracked"]) == 0
        assert all(not parameter.requires_grad or parameter.grad is None for parameter in model.parameters())

    def test_output_unchanged_by_probing(self):
        model, _ = load_model("simple_cnn")
        _randomise_batch_norm(model)
        x = images(count=2, size=32, seed=3)
        with torch.no_grad():
            before = model(x)
        probe(model, x, shifts=[(0, 1), (3, 3)], mode="zero")
        with torch.no_grad():
            after = model(x)
        assert torch.equal(before, after)

    def test_input_unchanged(self):
        x = images()
        copy = x.clone()
        probe(pooled_net(), x, shifts=[(0, 1)], mode="zero")
        assert torch.equal(x, copy)


# --------------------------------------------------------------------------- batching


class CountingNet(nn.Sequential):
    """pooled_net that counts the images it is run on."""

    def __init__(self) -> None:
        super().__init__(*pooled_net())
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += x.shape[0]
        return super().forward(x)


class TestSameTensorMeasuredOnce:
    """A tensor reaching two hooks unchanged is measured once; an in-place change is measured again."""

    def test_block_output_equals_its_last_relu(self):
        result = probe(_resnet_like(), images(count=1, size=16), shifts=[(0, 1), (0, 2)])
        measured = ("stride", "multiple", "aligned_dy", "aligned_dx", "rel_l2", "max_abs", "cosine", "valid_fraction")
        block, last_relu = rows_of(result, "block"), rows_of(result, "block.relu:2")
        assert block.keys() == last_relu.keys()
        for shift, row in block.items():
            assert {key: row[key] for key in measured} == {key: last_relu[shift][key] for key in measured}
            assert (
                row["rel_l2"] > 0.01
            )  # the stem (zero padding, stride 2) makes both shifts inexact: real numbers, not defaults

    def test_inplace_relu_after_batch_norm_is_measured_again(self):
        def net(inplace: bool) -> nn.Sequential:
            torch.manual_seed(0)
            model = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                nn.BatchNorm2d(4),
                nn.ReLU(inplace=inplace),
                nn.MaxPool2d(2),
            )
            _randomise_batch_norm(model)
            return model.eval()

        shifts = [(0, 1), (1, 2)]
        in_place, out_of_place = (
            probe(net(True), images(count=2), shifts=shifts),
            probe(net(False), images(count=2), shifts=shifts),
        )
        assert_same_results(in_place, out_of_place)
        assert rows_of(in_place, "1") != rows_of(in_place, "2")


class _Block(nn.Module):
    """conv - relu - conv, plus the input, then the same ReLU again (as torchvision's BasicBlock reuses its ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


def _resnet_like() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3, stride=2, padding=1), block=_Block()))
    return model.eval()


class TestZeroShift:
    def test_costs_no_forward_pass_and_is_exact(self):
        model = CountingNet()
        result = probe(model, images(count=2), shifts=[(0, 0), (0, 1), (0, 2)])
        # each image with its two non-zero shifts, no copy for (0, 0); and one image at another size, for the layouts
        assert model.images_seen == 2 * 3 + LAYOUT_IMAGES
        zero = [row for row in result.rows if (row["dy"], row["dx"]) == (0, 0)]
        assert len(zero) == len(result.layers)
        assert all(row["rel_l2"] == 0 and row["max_abs"] == 0 and row["cosine"] == pytest.approx(1.0) for row in zero)
        assert all(row["top1_agreement"] in (None, 1.0) for row in zero)

    def test_only_the_zero_shift(self):
        model = CountingNet()
        result = probe(model, images(count=1), shifts=[(0, 0)])
        assert model.images_seen == 1 + LAYOUT_IMAGES
        assert {row["rel_l2"] for row in result.rows} == {0.0}


def assert_same_results(first: ProbeResult, second: ProbeResult) -> None:
    assert [row["layer"] for row in first.rows] == [row["layer"] for row in second.rows]
    for a, b in zip(first.rows, second.rows):
        for key in (
            "type",
            "depth",
            "shape",
            "stride",
            "dy",
            "dx",
            "multiple",
            "aligned_dy",
            "aligned_dx",
            "valid_fraction",
            "top1_agreement",
            "note",
        ):
            assert a[key] == b[key], (a["layer"], key)
        for key in ("rel_l2", "max_abs", "cosine"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6, nan_ok=True), (a["layer"], a["dy"], a["dx"], key)


class TestBatching:
    SHIFTS = [(0, 0), (0, 1), (1, 1), (2, -2), (-3, 0), (4, 4)]

    @pytest.mark.parametrize("mode, batch_size", [("circular", 2), ("zero", 3), ("crop", 5), ("zero", 8)])
    def test_results_do_not_depend_on_batching(self, mode, batch_size):
        # batch_size 2: one shift and one image per pass; 3: shift chunks of 2; 5: chunks of 4
        # and an incomplete last chunk; 8: 6 shifts in one chunk, one image per pass
        torch.manual_seed(0)
        model = SimpleCNN(width=4).eval()
        _randomise_batch_norm(model)
        x = images(count=3, size=16, seed=1)
        large = probe(model, x, shifts=self.SHIFTS, mode=mode, batch_size=64)
        small = probe(model, x, shifts=self.SHIFTS, mode=mode, batch_size=batch_size)
        assert_same_results(small, large)
        assert small.protocol["batch_size"] == batch_size

    @pytest.mark.parametrize("mode", ["circular", "crop"])
    def test_streams_give_the_same_rows(self, mode):
        # A generator of batches, a DataLoader of (images, labels) and a list of single images: all one tensor's rows.
        torch.manual_seed(0)
        model = SimpleCNN(width=4).eval()
        x = images(count=5, size=16, seed=4)
        whole = probe(model, x, shifts=self.SHIFTS, mode=mode, batch_size=8)
        batches = (x[start : start + 2] for start in range(0, 5, 2))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(5)), batch_size=3)
        for inputs in (batches, loader, list(x)):
            assert_same_results(probe(model, inputs, shifts=self.SHIFTS, mode=mode, batch_size=8), whole)

    def test_a_stream_is_read_one_batch_at_a_time(self):
        # When a batch is made, the probe holds at most the one before it (still referenced while the next is
        # fetched), never the earlier ones: memory does not grow with the number of images.
        alive: list[weakref.ref] = []

        def stream():
            for seed in range(6):
                assert sum(reference() is not None for reference in alive) <= 1, "earlier batches are still held"
                batch = images(count=2, size=16, seed=seed)
                alive.append(weakref.ref(batch))
                yield batch
                del batch

        result = probe(pooled_net(), stream(), shifts=[(0, 1), (1, 1)], batch_size=4)
        assert result.protocol["images"] == 12

    def test_progress_of_a_stream_has_no_total(self):
        calls = []
        probe(pooled_net(), iter([images(count=2)]), shifts=[(0, 1)], progress=lambda *call: calls.append(call))
        assert calls == [(0, None), (1, None)]

    def test_progress_counts_every_pass(self):
        calls = []
        # batch_size 3: two shifts per pass, one image per pass. The zero shift costs no pass (its output is the
        # reference's), so the 4 others make 2 chunks: 3 images x 2 chunks of shifts.
        assert self.SHIFTS[:5].count((0, 0)) == 1
        probe(
            pooled_net(),
            images(count=3),
            shifts=self.SHIFTS[:5],
            batch_size=3,
            progress=lambda done, total: calls.append((done, total)),
        )
        assert calls == [(done, 6) for done in range(7)]  # (0, 6) first: what is ahead

    def test_progress_one_pass(self):
        calls = []
        probe(
            pooled_net(), images(count=3), shifts=self.SHIFTS, progress=lambda done, total: calls.append((done, total))
        )
        assert calls == [(0, 1), (1, 1)]

    def test_one_image_without_batch_axis(self):
        x = images(count=1)
        assert_same_results(probe(pooled_net(), x[0], shifts=[(0, 1)]), probe(pooled_net(), x, shifts=[(0, 1)]))

    def test_images_of_different_sizes(self):
        small, large = images(count=2, size=16, seed=1), images(count=1, size=24, seed=2)
        shifts = [(0, 4), (4, -4)]  # multiples of every stride: one alignment per row
        # circular shifts of a zero-padded network: inexact at the border, so every row has an error
        result = probe(fcn_stride_four(), [small[0], large[0], small[1]], shifts=shifts, mode="circular")
        assert result.protocol["images"] == 3
        assert result.protocol["input_shapes"] == [[3, 16, 16], [3, 24, 24]]
        assert result.layer_rows("0")[0]["shape"] == [6, 16, 16]  # the shape of the first group
        # the sums run over both groups: the largest error is the larger of the two groups',
        # the relative error lies between theirs
        alone_small = probe(fcn_stride_four(), small, shifts=shifts, mode="circular")
        alone_large = probe(fcn_stride_four(), large, shifts=shifts, mode="circular")
        for layer in result.layers:
            for shift in shifts:
                row, first, second = (
                    rows_of(result, layer)[shift],
                    rows_of(alone_small, layer)[shift],
                    rows_of(alone_large, layer)[shift],
                )
                assert row["stride"] == first["stride"] == second["stride"]
                assert row["max_abs"] == pytest.approx(max(first["max_abs"], second["max_abs"]), rel=1e-6)
                low, high = sorted([first["rel_l2"], second["rel_l2"]])
                assert low * (1 - 1e-6) <= row["rel_l2"] <= high * (1 + 1e-6)
                assert row["rel_l2"] > 1e-3

    def test_images_of_different_sizes_crop_mode(self):
        x = [images(count=1, size=40, seed=1)[0], images(count=1, size=48, seed=2)[0]]
        result = probe(fcn_stride_four(), x, shifts=[(0, 4), (0, 2)], mode="crop")
        rows = rows_of(result, "output")
        assert rows[(0, 4)]["rel_l2"] <= 1e-5 and rows[(0, 2)]["rel_l2"] > 1e-2


# --------------------------------------------------------------------------- which layers


class ResidualUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.conv(x))


def nested_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU()),
            body=nn.Sequential(ResidualUnit(), nn.Identity(), nn.Conv2d(4, 4, 1)),
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        )
    ).eval()


class ReusedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))))


class TestSelectLayers:
    def test_default_selection(self):
        names = [name for name, _ in select_layers(nested_net())]
        # containers, Identity and Flatten are not watched; a class named *Residual* is (a block)
        assert names == ["stem.0", "stem.1", "body.0", "body.0.conv", "body.0.act", "body.2", "head.0", "head.2"]

    @pytest.mark.parametrize(
        "layers, expected",
        [
            ("stem.0", ["stem.0"]),
            ("body.*", ["body.0", "body.0.conv", "body.0.act", "body.1", "body.2"]),
            ("stem.0, body.2", ["stem.0", "body.2"]),
            (["body.0.*", "head.2"], ["body.0.conv", "body.0.act", "head.2"]),
            ([nn.Conv2d], ["stem.0", "body.0.conv", "body.2"]),
            ([nn.ReLU, "head.0"], ["stem.1", "body.0.act", "head.0"]),
            ("*.?", ["stem.0", "stem.1", "body.0", "body.1", "body.2", "head.0", "head.1", "head.2"]),
        ],
    )
    def test_by_name_glob_and_type(self, layers, expected):
        assert [name for name, _ in select_layers(nested_net(), layers)] == expected

    def test_by_predicate(self):
        chosen = select_layers(
            nested_net(), lambda name, module: isinstance(module, nn.Conv2d) and name.startswith("body")
        )
        assert [name for name, _ in chosen] == ["body.0.conv", "body.2"]

    def test_forward_order_not_argument_order(self):
        assert [name for name, _ in select_layers(nested_net(), "head.2, stem.0")] == ["stem.0", "head.2"]

    def test_unknown_pattern(self):
        with pytest.raises(ShiftlabError) as info:
            select_layers(nested_net(), "layer9.*")
        assert (
            str(info.value)
            == "layers: 'layer9.*' matches no module of the model (names look like: stem, stem.0, stem.1, body, "
            "body.0, body.0.conv, body.0.act, body.1, ...)"
        )

    def test_unknown_type(self):
        with pytest.raises(
            ShiftlabError, match=r"^layers: type LSTM matches no module of the model \(names look like: stem, "
        ):
            select_layers(nested_net(), [nn.LSTM])

    def test_probe_with_layers(self):
        result = probe(nested_net(), images(), shifts=[(0, 1)], layers="body.*")
        # the model's output is always a row
        assert result.layers == ["body.0.conv", "body.0.act", "body.0", "body.1", "body.2", "output"]
        assert result.protocol["layers_watched"] == 5

    def test_probe_unknown_layer(self):
        with pytest.raises(ShiftlabError, match=r"^layers: 'nope' matches no module"):
            probe(nested_net(), images(), shifts=[(0, 1)], layers="nope")

    @pytest.mark.parametrize("layers", ["output", " output ", ["output"], "body.2, output", ["head.0", "output"]])
    def test_output_names_the_models_output(self, layers):
        """Every result has an ``output`` row: naming it is accepted, and it is the model's output, watched anyway."""
        named = [item.strip() for item in (layers.split(",") if isinstance(layers, str) else layers)]
        modules = [name for name in named if name != "output"]
        assert [name for name, _ in select_layers(nested_net(), layers)] == modules
        result = probe(nested_net(), images(), shifts=[(0, 1)], layers=layers)
        assert result.layers == [*modules, "output"] and result.protocol["layers_watched"] == len(modules)
        assert result.layer_rows("output")[0]["shape"] == [5]

    def test_a_module_called_output_is_that_module(self):
        net = nn.Sequential(OrderedDict(body=nn.Conv2d(3, 4, 3, padding=1), output=nn.ReLU()))
        assert [name for name, _ in select_layers(net, "output")] == ["output"]

    def test_reused_module_gets_one_row_per_call(self):
        result = probe(ReusedRelu(), images(), shifts=[(0, 1), (2, 3)])
        assert result.layers == ["conv1", "relu", "conv2", "relu:2", "output"]
        assert [row["depth"] for row in result.summary()] == [1, 2, 3, 4, 5]
        assert all(row["rel_l2"] <= EXACT for row in result.rows)

    def test_global_rows_of_a_head(self):
        result = probe(nested_net(), images(), shifts=[(1, 2)])
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["head.0"]["stride"] is None  # a 1x1 map is global
        assert summary["head.2"]["stride"] is None and summary["head.2"]["shape"] == [5]
        assert summary["body.0"]["type"] == "ResidualUnit" and summary["body.0"]["stride"] == [1, 1]
        assert all(row["max_rel_l2"] <= 1e-5 for row in summary.values())


class ChannelsLastHead(nn.Module):
    """Conv (channels first), then LayerNorm and Linear on (N, H, W, C) maps, as inside a ConvNeXt block."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=stride, padding=1, padding_mode="circular")
        self.norm = nn.LayerNorm(6)
        self.mix = nn.Linear(6, 10)
        self.act = nn.GELU()

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        return self.act(self.mix(self.norm(y))).permute(0, 3, 1, 2)


class TestChannelsLastMaps:
    def test_pointwise_layers_on_channels_last_maps_are_exact(self):
        # LayerNorm over channels and a Linear layer act on each pixel alone: exactly equivariant,
        # provided the probe moves their maps along H and W and not along W and C.
        result = probe(ChannelsLastHead(), images(size=12), shifts=[(0, 1), (3, -5), (7, 2)])
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["norm"]["shape"] == [6, 12, 12] and summary["mix"]["shape"] == [10, 12, 12]
        for name in ("conv", "norm", "mix", "act", "output"):
            assert summary[name]["stride"] == [1, 1], name
            assert summary[name]["max_rel_l2"] <= EXACT, name

    def test_strided_channels_last_maps(self):
        result = probe(ChannelsLastHead(stride=2), images(size=16), shifts=[(0, 2), (4, -2), (0, 1)])
        for name in ("norm", "mix", "act"):
            rows = rows_of(result, name)
            assert rows[(0, 2)]["stride"] == [2, 2], name
            assert rows[(0, 2)]["rel_l2"] <= EXACT and rows[(4, -2)]["rel_l2"] <= EXACT, name
            assert rows[(0, 1)]["rel_l2"] > 1e-2, name

    def test_zero_mode_core_of_channels_last_maps(self):
        result = probe(ChannelsLastHead(stride=2), images(size=16), shifts=[(0, 2), (2, 0)], mode="zero")
        for name in ("norm", "mix"):
            for row in result.layer_rows(name):
                assert 0 < row["valid_fraction"] < 1 and row["rel_l2"] <= EXACT, name


class TestAutoMode:
    def test_a_circular_network_gets_circular_shifts(self):
        result = probe(pooled_net(), images(), shifts=[(0, 2)])
        assert result.protocol["mode"] == "circular"
        assert result.protocol["mode_reason"] == "auto: every padding is circular (2 layers: 0, 3)"
        assert result.protocol["input_shapes"] == [[3, 16, 16]]  # the whole image, not a crop window

    def test_a_model_without_padding_gets_circular_shifts(self):
        patches = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU())
        result = probe(patches, images(), shifts=[(0, 4), (0, 1)])
        assert result.protocol["mode"] == "circular"
        rows = rows_of(result, "0")
        assert rows[(0, 4)]["rel_l2"] == 0 and rows[(0, 1)]["rel_l2"] > 0.01

    def test_a_fixed_size_model_that_refuses_the_crop_windows_is_told_why(self):
        class FixedSize(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if x.shape[-1] != 16:
                    raise ValueError(f"expected width 16, got {x.shape[-1]}")
                return self.conv(x)

        with pytest.raises(ShiftlabError) as info:
            probe(FixedSize(), images(size=16), shifts=[(0, 2)])
        assert str(info.value) == (
            "model FixedSize: rejected an input of shape (1, 3, 16, 12): ValueError: expected width 16, got 12; crop "
            "shifts (chosen by mode auto) show the model the input less the largest shift on each side (0 rows, 2 "
            "columns): a model that takes one input size needs images that much larger on each side, or another mode"
        )
        result = probe(FixedSize(), torch.rand(1, 3, 16, 20), shifts=[(0, 2)])  # 2 x 2 columns larger: measured
        assert result.protocol["input_shapes"] == [[3, 16, 20]] and result.layer_rows("conv")[0]["shape"] == [4, 16, 16]


class TestProbeErrors:
    def test_not_a_module(self):
        with pytest.raises(ShiftlabError) as info:
            probe(lambda x: x, images(), shifts=[(0, 1)])
        assert str(info.value) == "model: expected a torch.nn.Module, got function"

    def test_bad_mode(self):
        with pytest.raises(ShiftlabError) as info:
            probe(pooled_net(), images(), shifts=[(0, 1)], mode="mirror")
        assert str(info.value) == "mode: must be one of auto, circular, zero, crop, fourier, got 'mirror'"

    @pytest.mark.parametrize("batch_size", [1, 0, 2.5, "8"])
    def test_bad_batch_size(self, batch_size):
        with pytest.raises(ShiftlabError) as info:
            probe(pooled_net(), images(), shifts=[(0, 1)], batch_size=batch_size)
        problem = "an integer >= 2" if isinstance(batch_size, int) else "an integer"
        assert str(info.value) == f"batch_size: must be {problem}, got {batch_size!r}"

    def test_empty_shifts(self):
        with pytest.raises(ShiftlabError) as info:
            probe(pooled_net(), images(), shifts=[])
        assert str(info.value) == "shifts: is empty: give at least one (dy, dx) pair"

    def test_input_rank(self):
        with pytest.raises(ShiftlabError) as info:
            probe(pooled_net(), torch.zeros(3, 8), shifts=[(0, 1)])
        assert (
            str(info.value)
            == "inputs: expected (C, H, W) or (N, C, H, W), got tensor of shape (3, 8) and dtype float32"
        )

    def test_bad_item_of_a_list(self):
        with pytest.raises(ShiftlabError, match=r"^inputs\[1\]: expected \(C, H, W\) or \(N, C, H, W\), got"):
            probe(pooled_net(), [torch.zeros(3, 8, 8), torch.zeros(8, 8)], shifts=[(0, 1)])

    def test_empty_list(self):
        with pytest.raises(ShiftlabError) as info:
            probe(pooled_net(), [], shifts=[(0, 1)])
        assert str(info.value) == "inputs: is empty"

    def test_integer_images(self):
        with pytest.raises(
            ShiftlabError,
            match=r"^inputs: expected floating-point images, got tensor of shape \(1, 3, 8, 8\) and dtype uint8",
        ):
            probe(pooled_net(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), shifts=[(0, 1)])

    def test_wrong_channel_count(self):
        with pytest.raises(ShiftlabError, match=r"^model Sequential: rejected an input of shape \(1, 1, 8, 8\): "):
            probe(pooled_net(), torch.zeros(1, 1, 8, 8), shifts=[(0, 1)])

    def test_crop_margin_too_large(self):
        with pytest.raises(
            ShiftlabError,
            match=r"^shifts: crop windows for shifts up to \(0, 8\) need an input of at least 1x17 pixels, got 16x16",
        ):
            probe(pooled_net(), images(), shifts=[(0, 8)], mode="crop")

    @pytest.mark.parametrize("mode", ["circular", "fourier", "zero"])
    def test_shift_as_large_as_an_image_refused_before_any_pass(self, mode):
        """Circular and Fourier shifts repeat with the image's size; a zero shift that large leaves nothing. The
        sizes of a list are all checked before the first pass, not when the probe reaches the small image."""
        model = CountingNet()
        inputs = [images(count=2, size=24), images(count=1, size=16)]
        with pytest.raises(ShiftlabError) as info:
            probe(model, inputs, shifts=[(0, 1), (0, 20), (3, 0)], mode=mode)
        if mode == "zero":
            expected = "shifts: (0, 20) moves all of the 16x16 image out of the frame (zero shifts must be smaller "
            expected += "than the image: |dy| < 16, |dx| < 16)"
        else:
            expected = f"shifts: (0, 20) is not smaller than the 16x16 image: {mode} shifts repeat with its size, so "
            expected += "it is (0, 4) again"
        assert str(info.value) == expected
        assert model.images_seen == 0
        assert probe(model, inputs[:1], shifts=[(0, 1), (0, 20)], mode=mode).protocol["images"] == 2  # 20 < 24

    def test_unknown_layer_of_a_result(self):
        result = probe(pooled_net(), images(), shifts=[(0, 1)])
        with pytest.raises(ShiftlabError) as info:
            result.layer_rows("9")
        assert str(info.value) == "layer: '9' was not probed; probed layers: 0, 1, 2, 3, output"


# --------------------------------------------------------------------------- dtypes and devices


class TestDtypes:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_model_on_cpu(self, dtype):
        model = circular_net().to(dtype)
        x = images(size=16)
        try:
            model(x[:1].to(dtype))
        except RuntimeError as error:  # pragma: no cover - depends on the CPU build
            pytest.skip(f"CPU convolution does not support {dtype}: {error}")
        result = probe(model, x, shifts=[(0, 1), (3, -2)])  # float32 images are cast to the model's dtype
        assert result.protocol["dtype"] == str(dtype).replace("torch.", "")
        for row in result.rows:
            assert row["rel_l2"] <= 1e-2, (row["layer"], row["dy"], row["dx"])

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_pooling_still_aliases(self, dtype):
        model = pooled_net().to(dtype)
        try:
            model(images(count=1).to(dtype))
        except RuntimeError as error:  # pragma: no cover
            pytest.skip(f"CPU convolution does not support {dtype}: {error}")
        result = probe(model, images(), shifts=[(0, 1), (0, 2)])
        rows = rows_of(result, "2")
        assert rows[(0, 2)]["rel_l2"] <= 1e-2 and rows[(0, 1)]["rel_l2"] > 5e-2

    def test_float64_model(self):
        model = circular_net().double()
        result = probe(model, images(), shifts=[(1, 2)])
        assert result.protocol["dtype"] == "float64"
        assert all(row["rel_l2"] <= 1e-12 for row in result.rows)

    def test_model_without_parameters_keeps_the_input_dtype(self):
        result = probe(nn.Sequential(nn.MaxPool2d(2)), images().double(), shifts=[(0, 2)])
        assert result.protocol["dtype"] == "float64" and result.protocol["device"] == "cpu"

    @requires_cuda
    def test_cuda(self):
        model = pooled_net().cuda()
        result = probe(model, images(), shifts=[(0, 1), (0, 2)])  # CPU images go to the model's device
        assert result.protocol["device"].startswith("cuda")
        rows = rows_of(result, "2")
        assert rows[(0, 2)]["rel_l2"] <= 1e-5 and rows[(0, 1)]["rel_l2"] > 1e-2
        assert no_hooks_left(model)


# --------------------------------------------------------------------------- torchvision end to end


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    """A torchvision network with random weights, built once per session (probing never changes it)."""
    return load_model(name)[0]


def summary_of(
    name: str, size: int = 64, shifts=((0, 0), (0, 1), (2, 2)), layers="all"
) -> tuple[ProbeResult, dict[str, dict]]:
    model = torchvision_model(name)
    # the default mode, auto, takes crop windows for these zero-padded networks: the input is larger by twice the
    # largest shift, so that the windows are at least size x size
    margin = max(abs(value) for pair in shifts for value in pair)
    result = probe(model, images(count=1, size=size + 2 * margin), shifts=list(shifts), layers=layers)
    assert result.protocol["mode"] == "crop" and result.protocol["mode_reason"].startswith("auto: ")
    for row in result.rows:
        assert not math.isnan(row["rel_l2"]) and row["rel_l2"] >= 0
    return result, {row["layer"]: row for row in result.summary()}


@pytest.mark.slow
class TestTorchvision:
    @pytest.fixture(autouse=True)
    def torchvision(self):
        return pytest.importorskip("torchvision")

    def test_resnet18(self):
        result, summary = summary_of("resnet18")
        assert summary["conv1"]["stride"] == [2, 2] and summary["conv1"]["shape"] == [64, 32, 32]
        assert summary["maxpool"]["stride"] == [4, 4]
        assert summary["layer1.0"]["type"] == "BasicBlock" and summary["layer1.0"]["stride"] == [4, 4]
        assert summary["layer2.0.downsample.0"]["stride"] == [8, 8]
        assert summary["layer3.1.conv2"]["stride"] == [16, 16]
        assert summary["layer4.1"]["stride"] == [32, 32]
        for name in ("avgpool", "fc", "output"):
            assert summary[name]["stride"] is None
        assert summary["fc"]["shape"] == [1000]
        # the ReLU that every BasicBlock uses twice
        assert "layer1.0.relu:2" in summary and "layer4.1.relu:2" in summary
        assert "relu" in summary and "relu:2" not in summary
        kinds = {row["type"] for row in summary.values()}
        assert {
            "Conv2d",
            "BatchNorm2d",
            "ReLU",
            "MaxPool2d",
            "BasicBlock",
            "AdaptiveAvgPool2d",
            "Linear",
            "ResNet",
        } <= kinds
        assert 0 <= result.layer_rows("output")[1]["top1_agreement"] <= 1

    def test_vgg11(self):
        _, summary = summary_of("vgg11")
        assert summary["features.0"]["type"] == "Conv2d" and summary["features.0"]["stride"] == [1, 1]
        assert summary["features.2"]["type"] == "MaxPool2d" and summary["features.2"]["stride"] == [2, 2]
        assert summary["features.20"]["stride"] == [32, 32]
        assert summary["classifier.6"]["stride"] is None and summary["output"]["shape"] == [1000]

    def test_mobilenet_v3_small(self):
        _, summary = summary_of("mobilenet_v3_small")
        assert summary["features.0.0"]["stride"] == [2, 2]
        kinds = {row["type"] for row in summary.values()}
        assert {"Conv2d", "BatchNorm2d", "Hardswish", "ReLU", "InvertedResidual", "Linear"} <= kinds
        assert summary["features.12.0"]["stride"] == [32, 32]
        assert summary["output"]["stride"] is None

    def test_convnext_tiny(self):
        _, summary = summary_of("convnext_tiny", shifts=((0, 1),))
        assert summary["features.0.0"]["stride"] == [4, 4]
        channels_last = [
            row
            for row in summary.values()
            if row["type"] in ("LayerNorm", "Linear", "GELU") and row["stride"] is not None
        ]
        assert len(channels_last) == 4 * 18  # four per CNBlock
        assert all(row["stride"][0] == row["stride"][1] >= 4 for row in channels_last)
        assert summary["features.0.1"]["type"] == "LayerNorm2d" and summary["features.0.1"]["stride"] == [4, 4]
        assert summary["features.1.0"]["type"] == "CNBlock" and summary["features.1.0"]["stride"] == [4, 4]
        assert summary["features.7.2"]["stride"] == [32, 32]
        assert summary["output"]["stride"] is None

    def test_convnext_channels_last_layers(self):
        # Inside a CNBlock, LayerNorm, Linear and GELU run on (N, H, W, C) maps: their spatial axes
        # are 1 and 2, their stride is the block's, and away from the border (crop mode) they are
        # exact for shifts that are a multiple of it, like the convolutions around them.
        model = torchvision_model("convnext_tiny")
        shifts = [(0, 4), (4, -4), (0, 2)]
        result = probe(
            model, images(count=1, size=64), shifts=shifts, mode="crop", layers="features.0.*, features.1.0.*"
        )
        summary = {row["layer"]: row for row in result.summary()}
        for name, kind, channels in [
            ("features.1.0.block.2", "LayerNorm", 96),
            ("features.1.0.block.3", "Linear", 384),
            ("features.1.0.block.4", "GELU", 384),
            ("features.1.0.block.5", "Linear", 96),
        ]:
            assert summary[name]["type"] == kind
            assert summary[name]["stride"] == [4, 4], name
            assert summary[name]["shape"] == [channels, 14, 14], name  # listed channels first
            rows = rows_of(result, name)
            assert rows[(0, 4)]["rel_l2"] <= 1e-5 and rows[(4, -4)]["rel_l2"] <= 1e-5, name
            assert rows[(0, 2)]["rel_l2"] > 1e-2, name


# --------------------------------------------------------------------------- tables and figures


def nan_result() -> ProbeResult:
    """A probe with a NaN row: in zero mode the core of a stride-8 map is one column; a move of one leaves nothing."""
    return probe(
        nn.Sequential(nn.MaxPool2d(8)),
        torch.rand(1, 1, 8, 24, generator=torch.Generator().manual_seed(0)),
        shifts=[(0, 0), (0, 8)],
        mode="zero",
    )


class TestTables:
    def test_nan_result_has_a_nan_row(self):
        result = nan_result()
        assert math.isnan(rows_of(result, "0")[(0, 8)]["rel_l2"])
        assert rows_of(result, "0")[(0, 8)]["valid_fraction"] == 0.0

    def test_rows_have_the_documented_columns(self):
        result = probe(pooled_net(), images(), shifts=[(0, 1)])
        assert all(list(row) == list(COLUMNS) for row in result.rows)

    def test_csv_round_trip(self, tmp_path):
        result = nan_result()
        path = tmp_path / "probe.csv"
        text = result.to_csv(path)
        assert path.read_text() == text
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert list(parsed[0]) == list(COLUMNS)
        assert len(parsed) == len(result.rows)
        for row, original in zip(parsed, result.rows):
            assert row["layer"] == original["layer"]
            assert row["shape"] == "x".join(map(str, original["shape"]))
            assert row["stride"] == ("x".join(map(str, original["stride"])) if original["stride"] else "")
            assert row["top1_agreement"] == ""
            rel = float(row["rel_l2"])
            assert (math.isnan(rel) and math.isnan(original["rel_l2"])) or rel == pytest.approx(original["rel_l2"])
        assert parsed[-1]["rel_l2"] == "nan"

    def test_json_round_trip(self, tmp_path):
        result = nan_result()
        path = tmp_path / "probe.json"
        text = result.to_json(path)
        assert path.read_text() == text
        data = json.loads(text)  # strict JSON: NaN would not parse with parse_constant raising
        json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
        assert set(data) == {"protocol", "summary", "rows"}
        assert len(data["rows"]) == len(result.rows)
        assert all(list(row) == list(COLUMNS) for row in data["rows"])
        nan_rows = [row for row in data["rows"] if row["rel_l2"] is None]
        assert len(nan_rows) == sum(1 for row in result.rows if math.isnan(row["rel_l2"])) > 0
        assert data["protocol"]["mode"] == "zero" and data["protocol"]["shifts"] == [[0, 0], [0, 8]]
        assert len(data["summary"]) == len(result.layers)

    def test_json_values_match_rows(self):
        result = probe(pooled_net(), images(), shifts=[(0, 1), (0, 2)])
        data = json.loads(result.to_json())
        for row, original in zip(data["rows"], result.rows):
            assert row["rel_l2"] == pytest.approx(original["rel_l2"])
            assert row["stride"] == original["stride"] and row["multiple"] == original["multiple"]

    def test_protocol(self):
        result = probe(pooled_net(), images(count=3, size=16), shifts=[(0, 1), (2, 2)], mode="zero", batch_size=16)
        assert result.protocol == {
            "mode": "zero",
            "mode_reason": "given",
            "shifts": [[0, 1], [2, 2]],
            "images": 3,
            "input_shapes": [[3, 16, 16]],
            "dtype": "float32",
            "device": "cpu",
            "layers_watched": 4,
            "layers_left_out": {},
            "layouts": "two input sizes, 16x16 and 80x80",
            "layout_doubts": {},
            "batch_size": 16,
            "output": "a tensor",
        }


class TestFigures:
    @pytest.fixture(autouse=True)
    def pyplot(self):
        matplotlib = pytest.importorskip("matplotlib")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.close("all")
        yield plt
        assert plt.get_fignums() == []

    def test_plot_depth(self, pyplot):
        from matplotlib.figure import Figure

        result = probe(pooled_net(), images(), shifts=[(0, 0), (0, 1), (1, 1), (2, 2)])
        for metric in ("rel_l2", "max_abs", "cosine"):
            figure = result.plot_depth(metric=metric)
            assert isinstance(figure, Figure)
            figure.savefig(io.BytesIO(), format="png")
        assert pyplot.get_fignums() == []

    def test_plot_heatmap(self, pyplot):
        from matplotlib.figure import Figure

        result = probe(pooled_net(), images(), shifts=[(dy, dx) for dy in range(3) for dx in range(3)])
        for layers in ("2", ["0", "2", "output"]):
            figure = result.plot_heatmap(layers)
            assert isinstance(figure, Figure)
            figure.savefig(io.BytesIO(), format="png")
        assert pyplot.get_fignums() == []

    def test_plot_heatmap_unknown_layer(self):
        result = probe(pooled_net(), images(), shifts=[(0, 1)])
        with pytest.raises(ShiftlabError, match=r"^layer: 'nope' was not probed"):
            result.plot_heatmap("nope")

    def test_plot_with_nan_rows(self, pyplot):
        from matplotlib.figure import Figure

        result = nan_result()
        assert isinstance(result.plot_depth(), Figure)
        assert isinstance(result.plot_heatmap("0"), Figure)


# --------------------------------------------------------------------------- shiftlab.experiments.probing


class TestRepresentativeLayers:
    def test_first_strided_middle_and_output(self):
        from shiftlab.experiments.probing import representative_layers

        result = probe(fcn_stride_four(), images(size=16), shifts=[(0, 1)])
        # layers 0, 1, 2, 3, output: first '0', first strided '2', middle '2', last 'output'
        assert representative_layers(result) == ["0", "2", "output"]

    def test_count(self):
        from shiftlab.experiments.probing import representative_layers

        result = probe(fcn_stride_four(), images(size=16), shifts=[(0, 1)])
        assert representative_layers(result, count=2) == ["0", "2"]

    def test_without_strided_layers(self):
        from shiftlab.experiments.probing import representative_layers

        result = probe(circular_net(), images(), shifts=[(0, 1)])
        assert representative_layers(result) == ["0", "3", "output"]


class TestProbeFindings:
    def test_first_inexact_layer_of_a_net_with_a_pool(self):
        from shiftlab.experiments.probing import probe_findings

        result = probe(pooled_net(), images(), shifts=[(0, 0), (0, 1), (0, 2)])
        findings = probe_findings(result)
        first = findings[0]
        assert first.statement == "Equivariance is first lost at layer '2' (MaxPool2d, stride 2)"
        assert first.value.startswith("2 layer(s) before it are exact; its relative L2 error: mean ")
        statements = [finding.statement for finding in findings]
        multiples = next(finding for finding in findings if finding.value.startswith("exact: "))
        # after the pooling (layers 2, 3 and the output, stride 2), (0, 2) is a multiple and exact, (0, 1) is not
        assert multiples.value.startswith("exact: 3 of 3 multiples, 0 of 3 others;")
        assert any(statement == "Worst spatial layer: '2' (MaxPool2d, stride 2)" for statement in statements)

    def test_exact_network(self):
        from shiftlab.experiments.probing import probe_findings

        model, _ = load_model("circular_cnn")
        findings = probe_findings(probe(model, images(size=16), shifts=[(0, 1), (2, 3)]))
        assert findings[0].statement == "Every probed layer is equivariant to every shift, to float precision"
        assert findings[0].holds is True
        output = next(finding for finding in findings if finding.statement == "The model's output under the shifts")
        assert output.value.endswith("; top-1 class unchanged for 100.0% of image-shift pairs")


class TestRunProbe:
    def test_bundled_model(self):
        from shiftlab.experiments.probing import ModelOptions, run_probe

        result, info, _ = run_probe(
            "circular_cnn", ["chelsea"], shifts=[(0, 1), (3, -2)], options=ModelOptions(size=24)
        )
        assert info.source == "bundled" and info.in_channels == 3
        protocol = result.protocol
        assert protocol["model"] == "circular_cnn" and protocol["model_source"] == "bundled"
        assert protocol["weights"] == "random initialisation, seed 0"
        assert protocol["images_used"] == ["chelsea"]
        assert protocol["resize"] == "shorter side 24 (bilinear, antialiased), centre crop 24x24"
        assert protocol["normalize"] == "none"
        assert protocol["input_shapes"] == [[3, 24, 24]]
        assert all(row["rel_l2"] <= 1e-5 for row in result.rows)
        assert all(row["top1_agreement"] == 1.0 for row in result.layer_rows("output"))

    def test_grayscale_model_and_dtype(self):
        from shiftlab.experiments.probing import ModelOptions, run_probe

        result, info, _ = run_probe(
            "article", ["coffee"], shifts=[(0, 8), (0, 1)], options=ModelOptions(size=34, dtype="float64"), mode="crop"
        )
        assert info.in_channels == 1
        assert result.protocol["dtype"] == "float64" and result.protocol["input_shapes"] == [[1, 34, 34]]
        rows = rows_of(result, "output")
        assert rows[(0, 8)]["stride"] == [8, 8] and rows[(0, 8)]["rel_l2"] <= 1e-12

    def test_torchvision_normalises_automatically(self):
        pytest.importorskip("torchvision")
        from shiftlab.experiments.probing import ModelOptions, run_probe

        result, info, _ = run_probe(
            "mobilenet_v3_small",
            ["chelsea"],
            shifts=[(0, 32)],
            mode="circular",
            options=ModelOptions(size=64),
            layers="features.0.0",
        )
        assert info.normalize == "imagenet" and result.protocol["normalize"] == "imagenet"
        assert result.layers == ["features.0.0", "output"]

    def test_weights_in_protocol(self, tmp_path):
        from shiftlab.experiments.probing import ModelOptions, run_probe

        model, _ = load_model("circular_cnn", seed=4)
        path = tmp_path / "w.pt"
        torch.save(model.state_dict(), path)
        result, _, _ = run_probe(
            "circular_cnn",
            ["chelsea"],
            shifts=[(0, 1)],
            options=ModelOptions(size=16, weights=str(path), normalize="imagenet"),
        )
        assert result.protocol["weights"] == str(path)
        assert result.protocol["normalize"] == "imagenet"

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"dtype": "int8"}, "dtype: must be one of float32, float16, bfloat16, float64, got 'int8'"),
            ({"device": "warp-drive"}, "device: 'warp-drive' is not a device name (try cpu or cuda)"),
        ],
    )
    def test_errors(self, kwargs, message):
        from shiftlab.experiments.probing import ModelOptions, run_probe

        with pytest.raises(ShiftlabError) as info:
            run_probe("circular_cnn", ["chelsea"], shifts=[(0, 1)], options=ModelOptions(**kwargs))
        assert str(info.value) == message

    @pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
    def test_cuda_missing(self):
        from shiftlab.experiments.probing import ModelOptions, run_probe

        with pytest.raises(ShiftlabError) as info:
            run_probe("circular_cnn", ["chelsea"], shifts=[(0, 1)], options=ModelOptions(device="cuda"))
        assert str(info.value) == "device: CUDA was asked for, but torch sees no CUDA device here"

    def test_probe_section(self):
        from matplotlib.figure import Figure

        from shiftlab.experiments.probing import probe_section

        result = probe(pooled_net(), images(), shifts=[(0, 0), (0, 1), (0, 2)])
        section = probe_section(result, key="k", title="T", intro="Intro.")
        assert section.key == "k" and section.intro.startswith(
            "Intro.\n\nProtocol: circular shifts (0, 0), (0, 1), (0, 2) (mode auto: every padding is circular (2 "
            "layers: 0, 3)); 2 image(s) of size 16x16; float32 on cpu; 4 layers watched; layouts from two input "
            "sizes, 16x16 and 80x80."
        )
        assert len(section.figures) == 2 and all(isinstance(figure, Figure) for _, figure in section.figures)
        assert [row[1] for row in section.tables[0].rows] == result.layers
        assert section.findings[0].statement.startswith("Equivariance is first lost at layer '2'")
