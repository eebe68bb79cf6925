"""Images in, model inputs out: channels, resizing, centre cropping and normalisation.

:class:`Preprocess` is the protocol, written down once and carried with every
result (:meth:`Preprocess.describe`). Its defaults do nothing; the ImageNet
evaluation protocol is ``Preprocess(resize=256, crop=224, normalize="imagenet")``:

* **resize**: the shorter side becomes ``resize`` pixels and the longer one
  ``int(resize * long / short)``, bilinear with antialiasing, as torchvision's
  ``Resize(int)`` does for tensors;
* **crop**: the centre ``crop x crop`` window, its top-left corner at
  ``round((H - crop) / 2)``, as torchvision's ``CenterCrop`` (a crop larger than
  the image is refused rather than padded);
* **normalize**: ``(x - mean) / std`` per channel, from a preset
  (:data:`NORMALIZATIONS`: ``imagenet``, ``none``) or explicit ``mean`` and ``std``.

Gray images become three equal channels for a 3-channel model, and colour images
their BT.601 luma for a 1-channel one (see :func:`shiftlab.load_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from shiftlab.errors import check, check_choice, check_int, check_real, fail
from shiftlab.images import load_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "Preprocess",
    "center_crop",
    "prepare_images",
    "resize_shorter_side",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Normalisation presets: name -> (mean, std) per channel, or None for none.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": None,
}


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(..., H, W)`` so that its shorter side is ``size`` (bilinear, antialiased), as torchvision's ``Resize``.

    Example:
        >>> tuple(resize_shorter_side(torch.zeros(3, 30, 45), 20).shape)
        (3, 20, 30)
    """
    size = check_int(size, "resize", minimum=1)
    height, width = image.shape[-2:]
    short, long = (height, width) if height <= width else (width, height)
    new_long = max(1, int(size * long / short))
    new_height, new_width = (size, new_long) if height <= width else (new_long, size)
    if (new_height, new_width) == (height, width):
        return image
    batch = image.reshape(-1, *image.shape[-3:]) if image.ndim >= 3 else image[None, None]
    resized = F.interpolate(batch, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
    return resized.reshape(*image.shape[:-2], new_height, new_width)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` window of ``(..., H, W)``, placed as torchvision's ``CenterCrop`` places it.

    Example:
        >>> center_crop(torch.arange(16.0).reshape(4, 4), 2)
        tensor([[ 5.,  6.],
                [ 9., 10.]])
    """
    size = check_int(size, "crop", minimum=1)
    height, width = image.shape[-2:]
    check(
        size <= height and size <= width,
        "crop",
        f"{size}x{size} does not fit in an image of {height}x{width}; resize it first (a larger --resize)",
    )
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image[..., top : top + size, left : left + size]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: ``channels``, ``resize``, centre ``crop``, ``mean`` and ``std``.

    Build it with :meth:`make`, which validates and resolves a normalisation preset.

    Shape:
        - input: anything :func:`shiftlab.load_image` takes
        - output: :math:`(C, H', W')` float32 tensor, ``C = channels``

    Example:
        >>> prepare = Preprocess.make(channels=3, resize=32, crop=24, normalize="imagenet")
        >>> tuple(prepare("chelsea").shape)
        (3, 24, 24)
        >>> prepare.describe()["crop"]
        '24x24 centre'
    """

    channels: int = 3
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalize: str = "none"  # the preset's name, or "custom"

    @classmethod
    def make(
        cls,
        *,
        channels: int = 3,
        resize: int | None = None,
        crop: int | None = None,
        normalize: str = "none",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocess:
        """A validated :class:`Preprocess`; ``mean`` and ``std`` together override the ``normalize`` preset."""
        channels = check_int(channels, "channels", minimum=1)
        if channels not in (1, 3):
            fail("model", f"expects {channels} input channels; shiftlab feeds it grayscale (1) or RGB (3) images")
        resize = None if resize is None else check_int(resize, "resize", minimum=1)
        crop = None if crop is None else check_int(crop, "crop", minimum=1)
        if mean is not None or std is not None:
            if mean is None or std is None:
                fail("normalize", "give both a mean and a std, or neither")
            means = tuple(check_real(value, "mean") for value in mean)
            stds = tuple(check_real(value, "std", positive=True) for value in std)
            check(
                len(means) == len(stds) == channels,
                "normalize",
                f"mean and std need {channels} value(s) each (one per channel), got {len(means)} and {len(stds)}",
            )
            return cls(channels, resize, crop, means, stds, "custom")
        name = check_choice(normalize, "normalize", NORMALIZATIONS)
        preset = NORMALIZATIONS[name]
        if preset is None:
            return cls(channels, resize, crop, None, None, name)
        check(
            len(preset[0]) == channels,
            "normalize",
            f"{name!r} has {len(preset[0])} channels, but the model takes {channels}",
        )
        return cls(channels, resize, crop, preset[0], preset[1], name)

    def __call__(self, source: Any) -> torch.Tensor:
        array = load_image(source, grayscale=self.channels == 1)
        return self.apply(torch.from_numpy(array))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Resize, crop and normalise an already loaded ``(H, W)`` or ``(C, H, W)`` image in ``[0, 1]``."""
        if image.ndim == 2:
            image = image[None]
        if self.resize is not None:
            image = resize_shorter_side(image, self.resize).clamp_(0.0, 1.0)  # antialiasing overshoots a little
        if self.crop is not None:
            image = center_crop(image, self.crop)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=image.dtype)[:, None, None]
            std = torch.tensor(self.std, dtype=image.dtype)[:, None, None]
            image = (image - mean) / std
        return image.contiguous()

    def describe(self) -> dict[str, Any]:
        """The protocol in words and numbers, for a result's ``protocol``."""
        return {
            "channels": self.channels,
            "resize": f"shorter side {self.resize} (bilinear, antialiased)" if self.resize else "none",
            "crop": f"{self.crop}x{self.crop} centre" if self.crop else "none",
            "normalize": self.normalize,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


def prepare_images(
    sources: Sequence[Any],
    *,
    channels: int,
    size: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    normalize: str = "none",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """Load images as ``(C, H, W)`` float32 tensors for a model with ``channels`` input channels.

    Args:
        sources: paths, sample names, arrays (anything :func:`shiftlab.load_image` takes).
        channels: 1 (grayscale) or 3 (RGB).
        size: shorthand for ``resize=size, crop=size`` (the shorter side to ``size``, then the centre square).
        resize, crop, normalize, mean, std: see :class:`Preprocess`.

    Example:
        >>> [tuple(image.shape) for image in prepare_images(["chelsea"], channels=3, size=64)]
        [(3, 64, 64)]
    """
    check(len(sources) > 0, "images", "give at least one image")
    if size is not None:
        size = check_int(size, "size", minimum=1)
        resize, crop = resize or size, crop or size
    prepare = Preprocess.make(channels=channels, resize=resize, crop=crop, normalize=normalize, mean=mean, std=std)
    return [prepare(source) for source in sources]
