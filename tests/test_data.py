"""Tests for shiftlab.data: the preparation protocol, against torchvision's own transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftlab.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Resize,
    center_crop,
    prepare_images,
)
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
        ours = center_crop(Resize.make(256)(image), 224)
        assert ours.shape == expected.shape
        # Resize clamps to [0, 1] what antialiasing overshoots (images are in [0, 1]); clamping is monotonic
        assert torch.allclose(ours, expected.clamp(0.0, 1.0), atol=1e-5)

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
            (
                {"resize": 32, "interpolation": "lanczos"},
                "interpolation: must be one of bilinear, bicubic, nearest, nearest-exact, got 'lanczos'",
            ),
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


class TestResize:
    """Resize through torchvision.transforms.v2: the shorter side or both sides, the model's interpolation."""

    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "nearest-exact"])
    @pytest.mark.parametrize("squash", [False, True])
    def test_matches_torchvision(self, interpolation, squash):
        from torchvision.transforms import InterpolationMode, v2

        image = torch.rand(3, 61, 90, generator=torch.Generator().manual_seed(5))
        size = [40, 40] if squash else 40
        reference = v2.Resize(size, interpolation=InterpolationMode(interpolation), antialias=True)(image)
        ours = Resize.make(40, interpolation=interpolation, squash=squash)(image)
        assert ours.shape == reference.shape == ((3, 40, 40) if squash else (3, 40, 59))
        torch.testing.assert_close(ours, reference.clamp(0, 1), atol=1e-6, rtol=0)

    def test_bicubic_overshoot_is_clamped(self):
        edge = torch.zeros(1, 40, 40)
        edge[:, :, 20:] = 1.0
        ours = Resize.make(13, interpolation="bicubic")(edge)
        assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0

    def test_gray_and_batched(self):
        resize = Resize.make(10)
        assert resize(torch.rand(20, 30)).shape == (10, 15)
        assert resize(torch.rand(2, 3, 30, 20)).shape == (2, 3, 15, 10)

    def test_same_size_is_untouched(self):
        image = torch.rand(3, 10, 12)
        assert Resize.make(10)(image) is image

    def test_describe(self):
        assert Resize.make(8, interpolation="nearest").describe() == "shorter side 8 (nearest, no antialias)"
        assert Resize.make(8, antialias=False).describe() == "shorter side 8 (bilinear, no antialias)"


class TestWithChoices:
    OWN = Preprocess.make(
        channels=3, resize=248, crop=224, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", squash=True
    )

    def test_nothing_chosen_keeps_everything(self):
        assert self.OWN.with_choices() == (self.OWN, [])

    def test_each_choice_replaces_its_field(self):
        chosen, changed = self.OWN.with_choices(resize=256, interpolation="bilinear", mean=[0.4] * 3, std=[0.2] * 3)
        assert changed == ["resize", "interpolation", "normalize"]
        # an explicit resize is the shorter side (as --resize says), not the model's squash
        assert (chosen.resize, chosen.squash, chosen.crop, chosen.interpolation) == (256, False, 224, "bilinear")
        assert (chosen.mean, chosen.normalize) == ((0.4,) * 3, "custom")

    def test_normalize_presets(self):
        chosen, _ = self.OWN.with_choices(normalize="none")
        assert chosen.mean is None and chosen.normalize == "none"
        chosen, _ = self.OWN.with_choices(normalize="imagenet")
        assert chosen.mean == IMAGENET_MEAN and chosen.normalize == "imagenet"

    def test_statistics_equal_to_a_preset_are_named_after_it(self):
        assert Preprocess.make(mean=IMAGENET_MEAN, std=IMAGENET_STD).normalize == "imagenet"
