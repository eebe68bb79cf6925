"""Tests for shiftlab.data: the preparation protocol, against torchvision's own transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftlab.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess, center_crop, prepare_images, resize_shorter_side
from shiftlab.errors import ShiftlabError


class TestPrepareImages:
    def test_rgb_and_gray(self):
        (rgb,) = prepare_images(["chelsea"], channels=3)
        (gray,) = prepare_images(["chelsea"], channels=1)
        assert rgb.dtype == torch.float32 and rgb.ndim == 3 and rgb.shape[0] == 3
        assert gray.shape == (1, *rgb.shape[1:])
        assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0

    def test_size_resizes_the_shorter_side_and_crops_the_centre(self):
        # 20 x 40: left half black, right half white; the centre 20 x 20 crop straddles the edge
        array = np.zeros((20, 40), dtype=np.float32)
        array[:, 20:] = 1.0
        (image,) = prepare_images([array], channels=1, size=10)
        assert image.shape == (1, 10, 10)
        # shorter side 20 -> 10: the whole is 10 x 20, the crop is its columns 5..14 and the edge sits in the middle
        assert float(image[0, :, 0].max()) < 0.05 and float(image[0, :, -1].min()) > 0.95
        assert float(image.mean()) == pytest.approx(0.5, abs=0.02)

    def test_constant_image_stays_constant(self):
        (image,) = prepare_images([np.full((30, 45, 3), 0.25, dtype=np.float32)], channels=3, size=16)
        assert image.shape == (3, 16, 16)
        assert torch.allclose(image, torch.full_like(image, 0.25), atol=1e-6)

    def test_imagenet_normalisation(self):
        (image,) = prepare_images([np.full((20, 30, 3), 0.5, dtype=np.float32)], channels=3, normalize="imagenet")
        # (0.5 - mean) / std with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
        expected = [0.0655022, 0.1964286, 0.4177778]
        assert image.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-6)
        assert image.std(dim=(1, 2)).max() < 1e-6

    def test_several_sources(self):
        result = prepare_images(["chelsea", "coffee"], channels=3, size=24)
        assert [tuple(image.shape) for image in result] == [(3, 24, 24), (3, 24, 24)]

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"channels": 2}, "model: expects 2 input channels; shiftlab feeds it grayscale (1) or RGB (3) images"),
            ({"channels": 1, "normalize": "imagenet"}, "normalize: 'imagenet' has 3 channels, but the model takes 1"),
            ({"channels": 3, "normalize": "zscore"}, "normalize: must be one of imagenet, none, got 'zscore'"),
            ({"channels": 3, "size": 0}, "size: must be an integer >= 1, got 0"),
            ({"channels": 3, "size": 2.5}, "size: must be an integer, got 2.5"),
        ],
    )
    def test_errors(self, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            prepare_images(["chelsea"], **kwargs)
        assert str(info.value) == message

    def test_no_images(self):
        with pytest.raises(ShiftlabError) as info:
            prepare_images([], channels=3)
        assert str(info.value) == "images: give at least one image"


class TestAgainstTorchvision:
    """The ImageNet evaluation protocol must match torchvision's Resize(256) + CenterCrop(224) + Normalize."""

    @pytest.mark.parametrize("shape", [(3, 300, 400), (3, 401, 299), (3, 256, 256), (1, 333, 500)])
    def test_resize_and_crop_match(self, shape):
        from torchvision.transforms import v2

        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        expected = v2.CenterCrop(224)(v2.Resize(256, antialias=True)(image))
        ours = center_crop(resize_shorter_side(image, 256), 224)
        assert ours.shape == expected.shape
        assert torch.allclose(ours, expected, atol=1e-5)

    def test_whole_protocol_matches(self):
        from torchvision.transforms import v2

        image = torch.rand(3, 300, 357, generator=torch.Generator().manual_seed(1))
        reference = v2.Compose(
            [v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )
        prepare = Preprocess.make(channels=3, resize=256, crop=224, normalize="imagenet")
        # shiftlab clamps the antialiased resize to [0, 1] (images are in [0, 1]); compare where torchvision is inside
        resized = v2.Resize(256, antialias=True)(image)
        inside = ((resized >= 0) & (resized <= 1)).all(dim=0)
        ours, theirs = prepare.apply(image), reference(image)
        mask = center_crop(inside, 224)
        assert torch.allclose(ours[:, mask], theirs[:, mask], atol=1e-5)


class TestPreprocess:
    def test_defaults_do_nothing(self):
        image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
        assert torch.equal(Preprocess.make().apply(image), image)

    def test_gray_source_for_a_three_channel_model(self):
        (image,) = prepare_images([np.full((8, 9), 0.5, dtype=np.float32)], channels=3)
        assert image.shape == (3, 8, 9) and torch.all(image == 0.5)

    def test_custom_mean_and_std(self):
        prepare = Preprocess.make(channels=1, mean=[0.5], std=[0.25])
        assert prepare.normalize == "custom"
        (image,) = prepare_images([np.full((4, 4), 1.0, dtype=np.float32)], channels=1, mean=[0.5], std=[0.25])
        assert torch.all(image == 2.0)

    def test_describe(self):
        described = Preprocess.make(channels=3, resize=256, crop=224, normalize="imagenet").describe()
        assert described == {
            "channels": 3,
            "resize": "shorter side 256 (bilinear, antialiased)",
            "crop": "224x224 centre",
            "normalize": "imagenet",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"mean": [0.5, 0.5, 0.5]}, "normalize: give both a mean and a std, or neither"),
            (
                {"mean": [0.5], "std": [0.5]},
                "normalize: mean and std need 3 value(s) each (one per channel), got 1 and 1",
            ),
            ({"mean": [0, 0, 0], "std": [1, 0, 1]}, "std: must be a positive number, got 0"),
            ({"resize": 0}, "resize: must be an integer >= 1, got 0"),
            ({"crop": "x"}, "crop: must be an integer, got 'x'"),
        ],
    )
    def test_errors(self, kwargs, message):
        with pytest.raises(ShiftlabError) as caught:
            Preprocess.make(channels=3, **kwargs)
        assert str(caught.value) == message

    def test_crop_larger_than_the_image(self):
        with pytest.raises(ShiftlabError) as caught:
            prepare_images([np.zeros((20, 30), dtype=np.float32)], channels=1, crop=24)
        assert str(caught.value) == "crop: 24x24 does not fit in an image of 20x30; resize it first (a larger --resize)"
