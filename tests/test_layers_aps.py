"""Tests for shiftlab.layers.aps: adaptive polyphase sampling against a brute-force definition, and its exact
invariance to circular shifts.

The reference pads to a multiple of the stride with ``np.pad(mode="wrap")``, measures every component's norm in
float64 with numpy, and takes the first maximum in row-major order: the published rule, written out.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.layers import APSPool2d, PhaseLink, aps_pool2d, blur_pool2d, polyphase_norms

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.usefixtures("single_thread")  # many tiny tensors

NORMS = {"l2": lambda a: np.sqrt((a**2).sum()), "l1": lambda a: np.abs(a).sum(), "linf": lambda a: np.abs(a).max()}
STRIDES = [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1)]


def reference_aps(x: np.ndarray, stride: tuple[int, int], norm: str) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = stride
    height, width = x.shape[-2:]
    x = np.pad(x, ((0, 0), (0, 0), (0, -height % rows), (0, -width % cols)), mode="wrap")
    outputs, phases = [], []
    for sample in x.astype(np.float64):
        best, best_phase = -1.0, (0, 0)
        for i in range(rows):  # row-major order: the first maximum wins
            for j in range(cols):
                value = NORMS[norm](sample[:, i::rows, j::cols])
                if value > best:
                    best, best_phase = value, (i, j)
        outputs.append(sample[:, best_phase[0] :: rows, best_phase[1] :: cols])
        phases.append(best_phase)
    return np.stack(outputs), np.array(phases)


class TestAgainstReference:
    @pytest.mark.parametrize("norm", NORMS)
    @pytest.mark.parametrize("stride", STRIDES, ids=str)
    @pytest.mark.parametrize("size", [(12, 18), (9, 6), (7, 5)], ids=str)
    def test_brute_force(self, rng, size, stride, norm):
        x = rng.standard_normal((3, 2, *size))
        out, phase = aps_pool2d(torch.from_numpy(x), stride, norm, return_phase=True)
        expected, expected_phase = reference_aps(x, stride, norm)
        np.testing.assert_array_equal(phase.numpy(), expected_phase)
        np.testing.assert_array_equal(out.numpy(), expected)
        assert out.shape[-2:] == (-(-size[0] // stride[0]), -(-size[1] // stride[1]))

    def test_each_sample_chooses_its_own(self):
        x = torch.zeros(3, 1, 4, 6)
        x[0, 0, 1, 0] = x[1, 0, 2, 5] = x[2, 0, 3, 3] = 1.0
        _, phase = aps_pool2d(x, 2, return_phase=True)
        assert phase.tolist() == [[1, 0], [0, 1], [1, 1]]

    def test_polyphase_norms(self, rng):
        x = rng.standard_normal((2, 3, 6, 9))
        norms = polyphase_norms(torch.from_numpy(x), (2, 3), "l1").numpy()
        for i in range(2):
            for j in range(3):
                np.testing.assert_allclose(norms[:, i, j], np.abs(x[:, :, i::2, j::3]).sum(axis=(1, 2, 3)))


class TestExactInvariance:
    @pytest.mark.parametrize("norm", NORMS)
    @pytest.mark.parametrize("stride", [(2, 2), (3, 3), (2, 3), (3, 1)], ids=str)
    def test_every_circular_shift(self, generator, stride, norm):
        # sizes divisible by the stride, odd and non-square: 9 x 12 at (3, 3), 12 x 18 otherwise
        size = (9, 12) if stride == (3, 3) else (12, 18)
        x = torch.randn(2, 3, *size, generator=generator)
        out, phase = aps_pool2d(x, stride, norm, return_phase=True)
        for dy in range(size[0]):
            for dx in range(size[1]):
                moved, moved_phase = aps_pool2d(torch.roll(x, (dy, dx), (2, 3)), stride, norm, return_phase=True)
                shift = phase + torch.tensor([dy, dx])
                # the chosen phase moves with the shift; the output moves by floor((phase + t) / s)
                assert torch.equal(moved_phase, shift % torch.tensor(stride))
                for n in range(2):
                    offset = (int(shift[n, 0]) // stride[0], int(shift[n, 1]) // stride[1])
                    assert torch.equal(moved[n], torch.roll(out[n], offset, (1, 2)))

    def test_plain_subsampling_is_not_invariant(self, generator):
        x = torch.randn(1, 2, 8, 8, generator=generator)
        moved = torch.roll(x, (0, 1), (2, 3))[..., ::2, ::2]
        assert not any(torch.equal(moved, torch.roll(x[..., ::2, ::2], (0, k), (2, 3))) for k in range(4))


class TestTies:
    def test_first_phase_in_row_major_order(self):
        x = torch.zeros(1, 1, 4, 4)
        x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.0  # phases (0, 1) and (1, 0) tie
        for norm in NORMS:
            assert aps_pool2d(x, 2, norm, return_phase=True)[1].tolist() == [[0, 1]]
        assert aps_pool2d(torch.ones(2, 3, 6, 6), 3, return_phase=True)[1].tolist() == [[0, 0], [0, 0]]

    def test_column_major_order_is_chamans(self):
        # Chaman's reference lists the components (0, 0), (1, 0), (0, 1), (1, 1) and takes the first maximum.
        x = torch.zeros(1, 1, 4, 4)
        x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.0  # phases (0, 1) and (1, 0) tie
        for norm in NORMS:
            assert aps_pool2d(x, 2, norm, return_phase=True, tie_break="column-major")[1].tolist() == [[1, 0]]
            assert APSPool2d(2, norm, tie_break="column-major")(x).flatten().tolist() == [2.0, 0.0, 0.0, 0.0]
        y = torch.zeros(1, 1, 6, 6)
        y[0, 0, 0, 2] = y[0, 0, 2, 1] = 1.0  # stride 3: phases (0, 2) and (2, 1) tie
        assert aps_pool2d(y, 3, return_phase=True)[1].tolist() == [[0, 2]]
        assert aps_pool2d(y, 3, return_phase=True, tie_break="column-major")[1].tolist() == [[2, 1]]

    @pytest.mark.parametrize("stride", STRIDES, ids=str)
    def test_without_ties_the_order_does_not_matter(self, rng, stride):
        x = torch.from_numpy(rng.standard_normal((4, 3, 9, 12)))
        rows = aps_pool2d(x, stride, return_phase=True)
        columns = aps_pool2d(x, stride, return_phase=True, tie_break="column-major")
        assert torch.equal(rows[0], columns[0]) and torch.equal(rows[1], columns[1])

    def test_rounding_does_not_flip_the_choice(self, generator):
        # components whose float32 sums differ only in summation order: the float64 norms must agree
        x = torch.rand(1, 64, 32, 32, generator=generator)
        base = aps_pool2d(x, 2, return_phase=True)[1]
        for t in range(1, 8):
            assert aps_pool2d(torch.roll(x, (t, 3 * t), (2, 3)), 2, return_phase=True)[1].tolist() == [
                [(base[0, 0].item() + t) % 2, (base[0, 1].item() + 3 * t) % 2]
            ]


class TestGivenPhase:
    def test_follower_applies_the_phase(self, generator):
        x = torch.randn(2, 3, 6, 9, generator=generator)
        phase = torch.tensor([[2, 0], [1, 2]])
        out = aps_pool2d(x, 3, phase=phase)
        assert torch.equal(out[0], x[0, :, 2::3, 0::3]) and torch.equal(out[1], x[1, :, 1::3, 2::3])
        assert torch.equal(aps_pool2d(x, 3, phase=phase.tolist()), out)

    @pytest.mark.parametrize(
        ("phase", "message"),
        [
            (
                torch.zeros(2, 2),
                "phase: expected integer (row, column) offsets, got tensor of shape (2, 2) and dtype float32",
            ),
            (
                torch.zeros(3, 2, dtype=torch.long),
                "phase: expected shape (2, 2): one (row, column) offset per sample, "
                "got tensor of shape (3, 2) and dtype int64",
            ),
            (torch.tensor([[0, 2], [0, 0]]), "phase: offsets must lie in [0, 2) x [0, 2) for stride (2, 2)"),
            (torch.tensor([[-1, 0], [0, 0]]), "phase: offsets must lie in [0, 2) x [0, 2) for stride (2, 2)"),
        ],
        ids=["float", "shape", "too-large", "negative"],
    )
    def test_bad_phase(self, phase, message):
        with pytest.raises(ShiftlabError) as error:
            aps_pool2d(torch.zeros(2, 1, 4, 4), 2, phase=phase)
        assert str(error.value) == message


class TestModuleAndLink:
    def test_module_equals_function_and_exposes_the_phase(self, generator):
        x = torch.randn(3, 4, 9, 6, generator=generator)
        layer = APSPool2d(3, "linf")
        out, phase = aps_pool2d(x, 3, "linf", return_phase=True)
        assert torch.equal(layer(x), out) and torch.equal(layer.last_phase, phase)
        assert torch.equal(layer(x, phase=torch.zeros(3, 2, dtype=torch.long)), x[..., ::3, ::3])
        assert layer.state_dict() == {}

    def test_blur_before_the_choice(self, generator):
        x = torch.randn(2, 3, 8, 8, generator=generator)
        layer = APSPool2d(2, kernel_size=3, padding="circular")
        assert torch.equal(layer(x), aps_pool2d(blur_pool2d(x, 3, 1, "circular"), 2))
        assert "(blur): BlurPool2d(kernel_size=3, stride=1, padding='circular')" in repr(layer)

    def test_per_channel_filter_as_chamans_apspool(self, generator):
        x = torch.randn(2, 3, 8, 8, generator=generator)
        layer = APSPool2d(2, kernel_size=3, channels=3, tie_break="column-major")
        assert {key: tuple(value.shape) for key, value in layer.state_dict().items()} == {"filt": (3, 1, 3, 3)}
        assert torch.equal(layer(x), aps_pool2d(blur_pool2d(x, 3, 1, "circular"), 2, tie_break="column-major"))
        assert repr(layer) == (
            "APSPool2d(stride=2, norm='l2', tie_break='column-major', kernel_size=3, padding='circular', channels=3)"
        )
        assert APSPool2d(2, channels=3).state_dict() == {}  # no blur, no filter: as the reference at size 1
        with pytest.raises(ShiftlabError) as error:
            layer(torch.randn(2, 4, 8, 8, generator=generator))
        assert str(error.value) == (
            "x: expected shape (N, 3, H, W): this APSPool2d keeps one filter per channel, got tensor of shape "
            "(2, 4, 8, 8) and dtype float32"
        )

    def test_shortcut_follows_the_main_path(self, generator):
        main, shortcut = APSPool2d(2), APSPool2d(2)
        link = PhaseLink.connect({"conv1": main, "downsample.0": shortcut})
        x, other = torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 5, 8, 8, generator=generator)
        main(x)
        out = shortcut(other)
        assert torch.equal(shortcut.last_phase, main.last_phase)
        assert torch.equal(out, aps_pool2d(other, 2, phase=main.last_phase))
        assert repr(link) == "PhaseLink(conv1, downsample.0)"
        assert "linked with downsample.0" in repr(main)

    def test_whoever_runs_first_chooses_and_rounds_restart(self, generator):
        main, shortcut = APSPool2d(2), APSPool2d(2)
        PhaseLink.connect({"main": main, "shortcut": shortcut})
        x, y = torch.randn(2, 1, 4, 4, generator=generator), torch.randn(2, 1, 4, 4, generator=generator)
        shortcut(x)  # the shortcut runs first (torchvision's RegNet): its choice goes to the main path
        main(y)
        assert torch.equal(main.last_phase, aps_pool2d(x, 2, return_phase=True)[1])
        main(y)  # a new round after a complete one: main chooses from its own map
        assert torch.equal(main.last_phase, aps_pool2d(y, 2, return_phase=True)[1])
        main(x)  # main again before the shortcut used the last choice: a new round
        assert torch.equal(main.last_phase, aps_pool2d(x, 2, return_phase=True)[1])

    def test_maps_of_another_size_are_refused(self, generator):
        main, shortcut = APSPool2d(2), APSPool2d(2)
        PhaseLink.connect({"layer2.0.conv1": main, "layer2.0.downsample.0": shortcut})
        main(torch.randn(2, 1, 8, 8, generator=generator))
        with pytest.raises(ShiftlabError) as error:
            shortcut(torch.randn(2, 1, 16, 16, generator=generator))
        assert str(error.value) == (
            "APS layer 'layer2.0.downsample.0': shares its polyphase choice with 'layer2.0.conv1', which subsampled "
            "2 map(s) of 8x8 at stride 2, but it got 2 map(s) of 16x16 at stride 2; linked layers must subsample maps "
            "of the same size at the same stride"
        )

    def test_copies_get_their_own_link_without_a_pending_choice(self, generator):
        model = torch.nn.ModuleDict({"main": APSPool2d(2), "shortcut": APSPool2d(2)})
        PhaseLink.connect({"main": model["main"], "shortcut": model["shortcut"]})
        model["main"](torch.randn(1, 1, 4, 4, generator=generator))
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert twin["main"].link is twin["shortcut"].link is not model["main"].link
            x = torch.randn(1, 1, 4, 4, generator=generator)
            twin["shortcut"](x)  # nothing pending in the copy: the shortcut chooses for itself
            assert torch.equal(twin["shortcut"].last_phase, aps_pool2d(x, 2, return_phase=True)[1])


class TestGradientsDevicesDtypes:
    def test_gradcheck(self, generator):
        x = torch.rand(2, 2, 6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: aps_pool2d(t, 2), (x,))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
    def test_dtype_kept(self, generator, dtype):
        x = torch.randn(2, 3, 8, 6, generator=generator).to(dtype)
        out = APSPool2d(2)(x)
        assert out.dtype == dtype
        expected, _ = reference_aps(x.double().numpy(), (2, 2), "l2")
        np.testing.assert_array_equal(out.double().numpy(), expected)

    @requires_cuda
    def test_cuda_matches_cpu(self, generator):
        x = torch.randn(4, 8, 12, 18, generator=generator)
        for stride in (2, (2, 3)):
            out, phase = aps_pool2d(x.cuda(), stride, return_phase=True)
            assert out.device.type == "cuda"
            assert torch.equal(phase.cpu(), aps_pool2d(x, stride, return_phase=True)[1])
            assert torch.equal(out.cpu(), aps_pool2d(x, stride))


class TestBadInput:
    @pytest.mark.parametrize(
        ("x", "message"),
        [
            (torch.zeros(4, 4), "x: expected shape (N, C, H, W), got tensor of shape (4, 4) and dtype float32"),
            (
                torch.zeros(1, 1, 4, 4, dtype=torch.int32),
                "x: expected a floating-point tensor of shape (N, C, H, W), "
                "got tensor of shape (1, 1, 4, 4) and dtype int32",
            ),
        ],
    )
    def test_input(self, x, message):
        for call in (lambda: aps_pool2d(x), lambda: APSPool2d()(x)):
            with pytest.raises(ShiftlabError) as error:
                call()
            assert str(error.value) == message

    def test_arguments(self):
        for call, message in [
            (lambda: aps_pool2d(torch.zeros(1, 1, 4, 4), norm="l3"), "norm: must be one of l2, l1, linf, got 'l3'"),
            (lambda: APSPool2d(stride=0), "stride: must be an integer >= 1, got 0"),
            (lambda: APSPool2d(kernel_size=9), "kernel_size: binomial filters go from 1 to 7, got 9"),
            (
                lambda: APSPool2d(tie_break="first"),
                "tie_break: must be one of row-major, column-major, got 'first'",
            ),
            (
                lambda: aps_pool2d(torch.zeros(1, 1, 4, 4), tie_break="last"),
                "tie_break: must be one of row-major, column-major, got 'last'",
            ),
        ]:
            with pytest.raises(ShiftlabError) as error:
                call()
            assert str(error.value) == message
