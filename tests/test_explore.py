"""explorer_data: its frames are the layers' outputs, its numbers are the probe's, its per-image error is the probe's
definition applied to one image (checked against numpy on the frames), and bad input is refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nets import fcn_stride_four, pooled_net
from test_layouts import ChannelsLastNet, TokenNet
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.probing.explore import ExplorerData, Screen, explorer_data, move_map, representative_layers
from shiftlab.probing.layerwise import PREFIX, ProbeOptions, probe
from shiftlab.shifts import ShiftMode, shift

EXACT = 1e-5


def images(count: int = 2, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(seed))


class Recording(nn.Module):
    """pooled_net (as ``net``) that records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = pooled_net()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


def direct_output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model`` runs on ``x``, with a plain hook of this test's own."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def numpy_error(shifted: np.ndarray, moved: np.ndarray, mask: np.ndarray) -> float:
    """Relative L2 error on the masked pixels of every channel, in float64 (the published definition)."""
    a = shifted.astype(np.float64)[:, mask]
    b = moved.astype(np.float64)[:, mask]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class TestFrames:
    def test_frames_are_the_layers_outputs(self):
        model = pooled_net()
        x = images(count=1)
        shifts = [(0, 0), (0, 1), (2, 3), (-1, 2)]
        data = explorer_data(model, x, shifts, show=["0", "2", "3"], channels=4)
        for label, module in (("0", model[0]), ("2", model[2]), ("3", model[3])):
            layer = data.layer(label)
            reference = direct_output(model, module, x)[0]
            np.testing.assert_allclose(layer.reference, reference[layer.channels].numpy(), atol=1e-6)
            for index, (dy, dx) in enumerate(shifts):
                expected = direct_output(model, module, shift(x, dy, dx))[0][layer.channels].numpy()
                np.testing.assert_allclose(layer.shifted[index], expected, atol=1e-5)

    def test_strongest_channels_first(self):
        model = pooled_net()
        data = explorer_data(model, images(count=1), [(0, 1)], show=["1"], channels=3)
        reference = direct_output(model, model[1], images(count=1))[0]
        norms = torch.linalg.vector_norm(reference, dim=(-2, -1))
        assert data.layer("1").channels == torch.argsort(norms, descending=True)[:3].tolist()
        assert data.layer("1").channel_count == 4

    def test_channels_given(self):
        data = explorer_data(pooled_net(), images(count=1), [(0, 1)], show=["1"], channels=[3, 0])
        assert data.layer("1").channels == [3, 0]

    def test_crop_mode_frames_are_windows(self):
        model = fcn_stride_four()
        x = images(count=1, size=20)
        data = explorer_data(model, x, [(0, 0), (1, 2), (-2, 1)], mode="crop", show=["0"], channels=6)
        layer = data.layer("0")
        for index, (dy, dx) in enumerate(data.shifts):
            window = shift(x, dy, dx, mode="crop", margin=(2, 2))
            expected = model[0](window)[0, layer.channels].detach().numpy()
            np.testing.assert_allclose(layer.shifted[index], expected, atol=1e-5)
            # the display moved as the model got it: the crop window at margin - shift
            shown = ShiftMode.of(data.mode).shifted(torch.from_numpy(data.display), dy, dx, data.margin)
            np.testing.assert_allclose(shown.numpy(), window[0].numpy(), atol=1e-6)
        assert data.margin == (2, 2)

    def test_whole_output_is_a_row_of_values_never_moved(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        data = explorer_data(model, images(), [(0, 0), (1, 1)], show=["output"])
        layer = data.layer("output")
        assert layer.part == "whole" and layer.stride is None
        assert layer.reference.shape == (1, 1, 5) and layer.channels == [0]
        np.testing.assert_array_equal(layer.moved_reference(1), layer.reference)
        assert layer.compared(1).all()


class TestOnePass:
    """The frames are a callback on the probe's own passes: no image runs twice (counted with a forward hook)."""

    @staticmethod
    def forward_batches(model: nn.Module, run) -> list[int]:
        batches: list[int] = []
        handle = model.register_forward_hook(lambda _module, inputs, _output: batches.append(inputs[0].shape[0]))
        try:
            run()
        finally:
            handle.remove()
        return batches

    @pytest.mark.parametrize(
        ("shifts", "batch_size", "passes"),
        [
            # 2 shifted copies and the reference: 2 images a pass (the zero shift rides along)
            ([(0, 0), (0, 1), (1, 1)], 6, [6, 3]),
            # 4 shifted copies in two chunks of 2: one image a pass, two passes per image
            ([(0, 1), (0, 2), (1, 1), (2, 0)], 3, [3, 3, 3, 3, 3, 3]),
        ],
    )
    @pytest.mark.parametrize("image", [0, 2])
    def test_one_forward_pass_per_chunk(self, shifts, batch_size, passes, image):
        model = pooled_net()
        x = images(count=3)
        options = ProbeOptions(batch_size=batch_size)
        probed = self.forward_batches(model, lambda: probe(model, x, shifts=shifts, batch_size=batch_size))
        shown = self.forward_batches(
            model, lambda: explorer_data(model, x, shifts, show=["0", "3"], image=image, options=options)
        )
        assert probed == [1, *passes]  # its layout plan (one image at another size), then its passes
        # the explorer: the preview (its plan, one image) and the probe's own passes, planned already; nothing more
        assert shown == [1, 1, *passes]

    def test_border_modes_add_only_the_border_passes(self):
        model = fcn_stride_four()
        x = images(count=2, size=20)
        shown = self.forward_batches(model, lambda: explorer_data(model, x, [(0, 1), (2, 2)], mode="crop", show=["0"]))
        # plan, the preview's border pass and pass; then the probe's border pass and one pass of 2 images x 3
        assert shown == [1, 1, 1, 1, 6]


class TestNumbers:
    def test_rows_are_the_probes(self):
        model, x, shifts = fcn_stride_four(), images(size=24), [(0, 0), (0, 1), (2, 2), (3, -1), (4, 4)]
        data = explorer_data(model, x, shifts, mode="crop", show=["0", "2", "3", "output"])
        alone = probe(model, x, shifts=shifts, mode="crop")
        for layer in data.layers:
            expected = alone.layer_rows(layer.label)
            for mine, theirs in zip(layer.rows, expected):
                for key, value in mine.items():
                    same = value == theirs[key] or (isinstance(value, float) and math.isnan(value))
                    assert same, (layer.label, key, value, theirs[key])
        assert data.result.rows == alone.rows

    def test_auto_mode_is_the_probes_choice(self):
        model, x, shifts = fcn_stride_four(), images(size=24), [(0, 0), (0, 1), (2, 2)]
        data = explorer_data(model, x, shifts, show=["0", "3"])  # auto: the zero padding is seen, crop shifts
        assert data.mode == "crop" and data.margin == (2, 2)
        assert data.result.protocol["mode_reason"] == "auto: 2 layers pad with zeros (0, 3)"
        assert data.result.rows == probe(model, x, shifts=shifts, mode="crop").rows
        assert data.to_dict()["mode"] == "crop"

    def test_one_image_its_errors_are_the_probes(self):
        data = explorer_data(fcn_stride_four(), images(count=1, size=24), [(0, 1), (2, 2)], mode="zero")
        for layer in data.layers:
            for mine, row in zip(layer.image_errors, layer.rows):
                assert mine["rel_l2"] == row["rel_l2"] or math.isnan(row["rel_l2"])

    def test_two_equal_images_the_image_error_is_the_aggregate(self):
        # Computed by the explorer's own passes (one image), against the probe's sums over two identical images.
        x = images(count=1, size=24).repeat(2, 1, 1, 1)
        shifts = [(0, 0), (0, 1), (1, 3), (2, 2), (-3, 4)]
        data = explorer_data(fcn_stride_four(), x, shifts, mode="crop", show=["0", "2", "3", "output"])
        for layer in data.layers:
            for mine, row in zip(layer.image_errors, layer.rows):
                assert mine["valid_fraction"] == row["valid_fraction"]
                if math.isnan(row["rel_l2"]):  # no pixel compared (the move leaves the core): none for the image
                    assert math.isnan(mine["rel_l2"])
                    continue
                assert mine["rel_l2"] == pytest.approx(row["rel_l2"], rel=1e-5, abs=1e-7), (layer.label, row)

    @pytest.mark.parametrize("mode", ["circular", "zero", "crop"])
    def test_image_error_against_numpy(self, mode):
        # Every channel kept, so the frames hold the whole map: the error recomputed with numpy on them, at the
        # probe's alignment and on the compared pixels, must be the explorer's number for that image.
        model = fcn_stride_four()
        x = images(count=3, size=24, seed=3)
        shifts = [(0, 0), (0, 1), (1, 3), (2, 2), (-3, 4)]
        data = explorer_data(model, x, shifts, mode=mode, show=["0", "2", "3"], channels=6, image=1)
        assert data.image == 1
        for layer in data.layers:
            for index in range(len(shifts)):
                mask = layer.compared(index)
                if not mask.any():
                    continue
                expected = numpy_error(layer.shifted[index], layer.moved_reference(index), mask)
                assert layer.image_errors[index]["rel_l2"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
                assert layer.image_errors[index]["valid_fraction"] == pytest.approx(mask.mean())
                difference = layer.difference(index)
                assert np.isnan(difference[:, ~mask]).all() and not np.isnan(difference[:, mask]).any()

    def test_circular_network_is_exact_on_screen_too(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU())
        data = explorer_data(model, images(), [(0, 1), (3, -2), (5, 5)], show=["0", "1"])
        for layer in data.layers:
            assert all(error["rel_l2"] <= EXACT for error in layer.image_errors)
            assert all(row["rel_l2"] <= EXACT for row in layer.rows)
            for index in range(3):
                np.testing.assert_allclose(layer.shifted[index], layer.moved_reference(index), atol=1e-5)

    def test_pooling_alignment_floor_or_ceil(self):
        data = explorer_data(pooled_net(), images(), [(0, 1), (0, 2), (0, 3)], show=["2"])
        layer = data.layer("2")
        assert [row["multiple"] for row in layer.rows] == [False, True, False]
        assert layer.alignment(1) == (0, 1)
        assert layer.alignment(0) in ((0, 0), (0, 1)) and layer.alignment(2) in ((0, 1), (0, 2))
        np.testing.assert_allclose(layer.shifted[1], layer.moved_reference(1), atol=1e-5)


class TestBorderCore:
    def test_core_of_a_zero_padded_convolution(self):
        # A 3x3 convolution reads one pixel around: with shifts up to (1, 2) the border band of the input is 1 row
        # and 2 columns wide, so the core of its output leaves out 2 rows and 3 columns on each side (a known answer,
        # not the probe's NaN pass).
        model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1))
        data = explorer_data(model, images(size=16), [(0, 2), (1, -2)], mode="zero", show=["0"])
        core = data.layer("0").core
        expected = np.zeros((16, 16), dtype=bool)
        expected[2:14, 3:13] = True
        np.testing.assert_array_equal(core, expected)
        compared = data.layer("0").compared(0)  # moved by (0, 2): the source must be in the core too
        assert compared.sum() == 12 * 8 and compared[2:14, 5:13].all()

    def test_circular_mode_has_no_core(self):
        data = explorer_data(pooled_net(), images(), [(0, 1)], show=["0"])
        assert data.layer("0").core is None and data.layer("0").compared(0).all()


class TestLayouts:
    def test_channels_last_maps_are_channels_first_frames(self):
        model = ChannelsLastNet(8)
        x = images(size=8)
        data = explorer_data(model, x, [(0, 0), (0, 1), (2, 2)], layers="all", show=["norm", "merge.reduction"])
        norm = data.layer("norm")
        assert norm.layout == "NHWC" and norm.reference.shape[-2:] == (8, 8)
        direct = direct_output(model, model.norm, x[:1])[0].permute(2, 0, 1)
        np.testing.assert_allclose(norm.reference, direct[norm.channels].numpy(), atol=1e-6)
        merged = data.layer("merge.reduction")
        assert merged.stride == (2, 2) and merged.reference.shape[-2:] == (4, 4)
        assert merged.rows[2]["multiple"] and merged.image_errors[2]["rel_l2"] <= EXACT

    def test_tokens_and_their_prefix(self):
        model = TokenNet(patch=4)
        data = explorer_data(model, images(size=16), [(0, 0), (0, 4), (0, 1)], show=["norm", "norm" + PREFIX])
        tokens, prefix = data.layer("norm"), data.layer("norm" + PREFIX)
        assert tokens.layout == "tokens (1 prefix)" and tokens.reference.shape[-2:] == (4, 4)
        assert prefix.part == "whole" and prefix.reference.shape == (1, 1, 6)
        assert tokens.image_errors[1]["rel_l2"] <= EXACT and prefix.image_errors[1]["rel_l2"] <= EXACT
        assert tokens.image_errors[2]["rel_l2"] > 0.01


class TestChoices:
    def test_named_layers_are_shown(self):
        data = explorer_data(fcn_stride_four(), images(), [(0, 1)], layers=["0", "2"])
        assert [layer.label for layer in data.layers] == ["0", "2"]

    def test_default_is_representative(self):
        model = fcn_stride_four()
        data = explorer_data(model, images(), [(0, 1)])
        assert [layer.label for layer in data.layers] == representative_layers(data.result)

    def test_fourier_mode_keeps_the_shifted_inputs(self):
        data = explorer_data(pooled_net(), images(count=1), [(0, 0.5), (1, 0)], mode="fourier", show=["0"])
        assert data.display_shifted is not None and data.display_shifted.shape == (2, 3, 16, 16)

    def test_normalisation_is_undone_for_the_screen(self):
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        raw = images(count=1)
        normalised = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        data = explorer_data(pooled_net(), normalised, [(0, 1)], show=["0"], screen=Screen(normalization=(mean, std)))
        np.testing.assert_allclose(data.display, raw[0].numpy(), atol=1e-5)

    def test_hooks_removed_and_modes_restored(self):
        model = pooled_net().train()
        explorer_data(model, images(), [(0, 1)], show=["0"])
        assert model.training and all(module.training for module in model.modules())
        assert not any(module._forward_hooks for module in model.modules())

    def test_hooks_removed_when_the_model_fails(self):
        class Fails(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 3, padding=1)
                self.calls = 0

            def forward(self, x):
                self.calls += 1
                if self.calls > 2:  # the probe's two passes (layouts, shifts) succeed, the explorer's fails
                    raise RuntimeError("boom")
                return self.conv(x)

        model = Fails()
        with pytest.raises(ShiftlabError, match="model Fails: rejected an input of shape .*boom"):
            explorer_data(model, images(count=1), [(0, 1)], show=["conv"])
        assert not any(module._forward_hooks for module in model.modules())

    def test_move_map_is_the_probes_move(self):
        array = np.arange(12.0).reshape(3, 4)
        np.testing.assert_array_equal(move_map(array, (1, -1), circular=True), np.roll(array, (1, -1), (0, 1)))
        zero = shift(array, 1, -1, mode="zero")
        np.testing.assert_array_equal(move_map(array, (1, -1), circular=False), zero)
        assert not move_map(array, (5, 0), circular=False).any()


class TestBadInput:
    def test_show_a_layer_not_probed(self):
        with pytest.raises(ShiftlabError, match=r"^show: 'nope' was not probed; probed: 0, 1, 2, 3, output$"):
            explorer_data(pooled_net(), images(), [(0, 1)], show=["nope"])

    def test_channel_out_of_range(self):
        with pytest.raises(ShiftlabError) as error:
            explorer_data(pooled_net(), images(), [(0, 1)], show=["0"], channels=[9])
        assert str(error.value) == "channels: layer '0' has 4 channels, so channel 9 does not exist"

    def test_channels_must_be_positive(self):
        with pytest.raises(ShiftlabError, match="^channels: "):
            explorer_data(pooled_net(), images(), [(0, 1)], show=["0"], channels=0)

    def test_a_stream_is_refused(self):
        stream = (image for image in images())
        with pytest.raises(ShiftlabError) as error:
            explorer_data(pooled_net(), stream, [(0, 1)])
        assert str(error.value).startswith("images: expected a tensor or a non-empty list of image tensors")

    def test_image_index(self):
        with pytest.raises(ShiftlabError, match="^image: "):
            explorer_data(pooled_net(), images(count=2), [(0, 1)], image=2)

    def test_unknown_layer_named(self):
        data = explorer_data(pooled_net(), images(), [(0, 1)], show=["0"])
        assert isinstance(data, ExplorerData)
        with pytest.raises(ShiftlabError, match=r"^layer: '1' is not shown; shown layers: 0$"):
            data.layer("1")

    def test_channels_as_a_string(self):
        with pytest.raises(ShiftlabError) as error:
            explorer_data(pooled_net(), images(), [(0, 1)], show=["0"], channels="3")
        assert str(error.value) == "channels: expected a count or a list of channel indices, got the string '3'"

    def test_too_many_frame_values_refused_before_any_frame_is_kept(self, monkeypatch):
        """The budget is known from the probe's rows: the capture never runs (no memory spent on frames)."""
        import shiftlab.probing.explore as explore

        monkeypatch.setattr(explore, "MAX_FRAME_VALUES", 5119)
        captured = []
        monkeypatch.setattr(explore, "_capture", lambda *args, **kwargs: captured.append(args))
        shifts = [(0, dx) for dx in range(4)]
        # layer "0": 4 kept channels of 16x16 maps, the original and 4 shifts: 4 * 256 * 5 = 5,120
        with pytest.raises(ShiftlabError) as error:
            explorer_data(pooled_net(), images(), shifts, show=["0"], channels=4)
        assert str(error.value).startswith("explorer: 5,120 frame values are too many (at most 5,119)")
        assert captured == []

    def test_budget_is_checked_before_the_probe_runs(self, monkeypatch):
        """Refused from a preview of the rows (one pass of one image), before any pass of the probe itself: those
        run an image with its shifted copies, a batch of more than one input."""
        import shiftlab.probing.explore as explore

        monkeypatch.setattr(explore, "MAX_FRAME_VALUES", 5119)
        net = Recording()
        with pytest.raises(ShiftlabError, match=r"^explorer: 5,120 frame values are too many \(at most 5,119\)"):
            explorer_data(net, images(), [(0, dx) for dx in range(4)], show=["net.0"], channels=4)
        assert net.batches and max(net.batches) == 1, net.batches  # the layout plan's pass and the preview's
        assert len(net.batches) <= 2

    @pytest.mark.parametrize("mode", ["crop", "zero"])
    def test_budget_refused_before_the_probe_in_border_modes(self, monkeypatch, mode):
        import shiftlab.probing.explore as explore

        monkeypatch.setattr(explore, "MAX_FRAME_VALUES", 100)
        net = Recording()
        with pytest.raises(ShiftlabError, match=r"^explorer: [\d,]+ frame values are too many \(at most 100\)"):
            explorer_data(net, images(), [(0, 1), (1, 0)], mode=mode, show=["net.1"], channels=1)
        assert max(net.batches) == 1 and len(net.batches) <= 3, net.batches  # plan, border, preview

    def test_shown_layer_not_probed_refused_before_the_probe(self):
        net = Recording()
        with pytest.raises(ShiftlabError, match=r"^show: 'net.9' was not probed; probed: net.0, "):
            explorer_data(net, images(), [(0, 1)], show=["net.9"])
        assert max(net.batches) == 1

    def test_layers_output_shows_the_output(self):
        data = explorer_data(pooled_net(), images(), [(0, 0), (0, 1)], layers="output", channels=1)
        assert [layer.label for layer in data.layers] == ["output"] and data.result.layers == ["output"]
        data = explorer_data(pooled_net(), images(), [(0, 1)], layers="0, output", channels=1)
        assert [layer.label for layer in data.layers] == ["0", "output"]

    def test_layers_names_a_tensor_of_a_structured_output(self):
        from test_outputs import Segmenter

        x = images(count=1)
        result = probe(Segmenter().eval(), x, shifts=[(0, 2)], layers="output.aux")
        assert result.layers == ["output", "output.aux", "output.scores"] and result.protocol["layers_watched"] == 0
        data = explorer_data(Segmenter().eval(), x, [(0, 2)], layers="conv, output.aux", channels=1)
        assert [layer.label for layer in data.layers] == ["conv", "output.aux"]

    def test_budget_estimate_is_the_frames_size(self, monkeypatch):
        """Just under the budget passes, and the frames kept are exactly as many values as estimated."""
        import shiftlab.probing.explore as explore

        monkeypatch.setattr(explore, "MAX_FRAME_VALUES", 5120)
        data = explorer_data(pooled_net(), images(), [(0, dx) for dx in range(4)], show=["0"], channels=4)
        layer = data.layer("0")
        assert layer.reference.size + layer.shifted.size == 5120
