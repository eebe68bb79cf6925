"""Shifted views against independent references: torchvision's affine translation and centre crop (ImageNet-P's
frames), plain slicing (Zhang's windows), torch.roll and shiftlab.shift."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from shiftlab.errors import ShiftlabError
from shiftlab.invariance.views import IDENTITY, Geometry, build_view, view_key
from shiftlab.shifts import shift


@pytest.fixture
def base(generator) -> torch.Tensor:
    return torch.rand(3, 30, 41, generator=generator)


def test_geometry_places_the_crop_as_torchvision(base):
    geometry = Geometry.of(30, 41, crop=24)
    assert torch.equal(build_view(base, IDENTITY, geometry), TF.center_crop(base, [24, 24]))
    assert Geometry.of(30, 41, crop=None).size == (30, 41)
    with pytest.raises(ShiftlabError, match=r"^crop: 32x32 does not fit in an image of 30x41$"):
        Geometry.of(30, 41, crop=32)


@pytest.mark.parametrize("dx", [-20, -7, -1, 0, 3, 9, 20])
def test_zero_windows_are_imagenet_p_frames(base, dx):
    """ImageNet-P: translate the whole resized picture by (dx, 0) with black fill, then CenterCrop."""
    geometry = Geometry.of(30, 41, crop=24)
    reference = TF.center_crop(
        TF.affine(base, angle=0.0, translate=[dx, 0], scale=1.0, shear=[0.0], fill=0.0), [24, 24]
    )
    frame = build_view(base, view_key(("zero", geometry.top, geometry.left - dx), geometry), geometry)
    assert torch.equal(frame, reference)


def test_windows_are_slices_and_must_fit(base):
    geometry = Geometry.of(30, 41, crop=24)
    assert torch.equal(build_view(base, ("window", 5, 17), geometry), base[:, 5:29, 17:41])
    with pytest.raises(ShiftlabError, match=r"^view: window at \(7, 0\) leaves the 30x41 image$"):
        build_view(base, ("window", 7, 0), geometry)


def test_rolls_and_fourier_shifts_act_on_the_crop(base):
    geometry = Geometry.of(30, 41, crop=24)
    centre = TF.center_crop(base, [24, 24])
    assert torch.equal(build_view(base, ("roll", 3, -5), geometry), torch.roll(centre, (3, -5), (-2, -1)))
    half = build_view(base, ("fourier", 0.5, 0.25), geometry)
    assert torch.allclose(half, shift(centre, 0.5, 0.25, mode="fourier"), atol=0, rtol=0)


def test_view_key_merges_every_description_of_the_unshifted_input():
    geometry = Geometry.of(30, 41, crop=24)
    for key in [("roll", 0, 0), ("fourier", 0.0, 0.0), ("window", 3, 8), ("zero", 3, 8), IDENTITY]:
        assert view_key(key, geometry) == IDENTITY
    assert view_key(("window", 3, 9), geometry) == ("window", 3, 9)
