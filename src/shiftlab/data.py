"""Images in, model inputs out: channels, resizing, centre cropping and normalisation.

:class:`Preprocess` is the protocol, written down once and carried with every
result (:meth:`Preprocess.describe`). Its defaults do nothing; the ImageNet
evaluation protocol is ``Preprocess(resize=256, crop=224, normalize="imagenet")``.
A pretrained model brings its own (:mod:`shiftlab.zoo`: the weights' transforms,
timm's data config, a Hugging Face image processor):

* **resize** (:class:`Resize`): the shorter side becomes ``resize`` pixels and the
  longer one ``int(resize * long / short)``, or with ``squash`` both sides become
  ``resize`` (timm's ``crop_mode="squash"``, most Hugging Face ViT processors); by
  ``torchvision.transforms.v2.functional.resize`` with the model's ``interpolation``
  (bilinear by default, bicubic, nearest) and ``antialias``. The result is clamped
  to ``[0, 1]``, as a decoded 8-bit image is (bicubic overshoots at edges);
* **crop**: the centre ``crop x crop`` window, its top-left corner at
  ``round((H - crop) / 2)``, by ``torchvision.transforms.v2.functional.center_crop``
  (a crop larger than the image is refused rather than padded);
* **normalize**: ``(x - mean) / std`` per channel, from a preset
  (:data:`NORMALIZATIONS`: ``imagenet``, ``none``) or explicit ``mean`` and ``std``.

Gray images become three equal channels for a 3-channel model, and colour images
their BT.601 luma for a 1-channel one (see :func:`shiftlab.load_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from shiftlab.errors import check, check_choice, check_int, check_real, fail
from shiftlab.images import load_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "NORMALIZATIONS",
    "Preprocess",
    "Resize",
    "center_crop",
    "prepare_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Normalisation presets: name -> (mean, std) per channel, or None for none.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": None,
}


#: The interpolations a resize may use: what torchvision resizes tensors with (the zoos' box, hamming and lanczos
#: filters exist for PIL images only).
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest", "nearest-exact")


@dataclass(frozen=True)
class Resize:
    """Resize ``(..., H, W)`` images: the shorter side to ``size``, or with ``squash`` both sides to ``size``.

    By ``torchvision.transforms.v2.functional.resize`` with ``interpolation`` and ``antialias`` (for bilinear and
    bicubic), as the zoos' own transforms resize tensors; the result is clamped to ``[0, 1]`` (see the module
    docstring). Build it with :meth:`make`, which validates.

    Shape:
        - input: :math:`(..., H, W)`, values in ``[0, 1]``
        - output: :math:`(..., H', W')`, the shorter side ``size`` (both sides with ``squash``)

    Example:
        >>> tuple(Resize.make(20)(torch.zeros(3, 30, 45)).shape)
        (3, 20, 30)
        >>> Resize.make(32, interpolation="bicubic", squash=True).describe()
        'both sides 32 (squash; bicubic, antialiased)'
    """

    size: int
    interpolation: str = "bilinear"
    antialias: bool = True
    squash: bool = False

    @classmethod
    def make(
        cls, size: int, *, interpolation: str = "bilinear", antialias: bool = True, squash: bool = False
    ) -> Resize:
        """A validated :class:`Resize`."""
        size = check_int(size, "resize", minimum=1)
        interpolation = check_choice(interpolation, "interpolation", INTERPOLATIONS)
        return cls(size, interpolation, bool(antialias), bool(squash))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H', W')`` of an ``H x W`` image, as torchvision computes it (``int`` of the scaled long side)."""
        if self.squash:
            return self.size, self.size
        short, long = (height, width) if height <= width else (width, height)
        new_long = max(1, int(self.size * long / short))
        return (self.size, new_long) if height <= width else (new_long, self.size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        size = self.output_size(height, width)
        if size == (height, width):
            return image
        batch = image if image.ndim >= 3 else image[None]
        resized = TF.resize(
            batch, list(size), interpolation=InterpolationMode(self.interpolation), antialias=self.antialias
        )
        resized = resized if image.ndim >= 3 else resized[0]
        return resized.clamp_(0.0, 1.0)  # antialiasing (and bicubic's negative lobes) overshoot a little

    def describe(self) -> str:
        """The resize in words, for a result's protocol."""
        smooth = "antialiased" if self.antialias and self.interpolation in ("bilinear", "bicubic") else "no antialias"
        if self.squash:
            return f"both sides {self.size} (squash; {self.interpolation}, {smooth})"
        return f"shorter side {self.size} ({self.interpolation}, {smooth})"


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` window of ``(..., H, W)``, by torchvision's ``center_crop`` (never padded).

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
    return TF.center_crop(image, [size, size])


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: ``channels``, ``resize``, centre ``crop``, ``mean`` and ``std``.

    Build it with :meth:`make`, which validates and resolves a normalisation preset; a pretrained model's own comes
    with it (:attr:`shiftlab.models.ModelInfo.preprocess`), and :meth:`with_choices` puts a caller's explicit
    choices in place of some of its fields.

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
    interpolation: str = "bilinear"
    antialias: bool = True
    squash: bool = False  # resize both sides to ``resize`` (the aspect ratio is not kept)

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
        interpolation: str = "bilinear",
        antialias: bool = True,
        squash: bool = False,
    ) -> Preprocess:
        """A validated :class:`Preprocess`; ``mean`` and ``std`` together override the ``normalize`` preset.

        A ``mean`` and ``std`` equal to a preset's are named after it.
        """
        channels = check_int(channels, "channels", minimum=1)
        if channels not in (1, 3):
            fail("model", f"expects {channels} input channels; shiftlab feeds it grayscale (1) or RGB (3) images")
        resizing = None if resize is None else Resize.make(resize, interpolation=interpolation, antialias=antialias)
        interpolation = check_choice(interpolation, "interpolation", INTERPOLATIONS)
        crop = None if crop is None else check_int(crop, "crop", minimum=1)
        base = cls(
            channels,
            resizing.size if resizing else None,
            crop,
            interpolation=interpolation,
            antialias=bool(antialias),
            squash=bool(squash),
        )
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
            named = next((name for name, preset in NORMALIZATIONS.items() if preset == (means, stds)), "custom")
            return replace(base, mean=means, std=stds, normalize=named)
        name = check_choice(normalize, "normalize", NORMALIZATIONS)
        preset = NORMALIZATIONS[name]
        if preset is None:
            return replace(base, normalize=name)
        check(
            len(preset[0]) == channels,
            "normalize",
            f"{name!r} has {len(preset[0])} channels, but the model takes {channels}",
        )
        return replace(base, mean=preset[0], std=preset[1], normalize=name)

    @property
    def resizing(self) -> Resize | None:
        """The resize as a :class:`Resize` (``None`` when the image keeps its size)."""
        if self.resize is None:
            return None
        return Resize(self.resize, self.interpolation, self.antialias, self.squash)

    def with_choices(
        self,
        *,
        resize: int | None = None,
        crop: int | None = None,
        interpolation: str | None = None,
        normalize: str = "auto",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> tuple[Preprocess, list[str]]:
        """This preprocessing with a caller's explicit choices in its place, and the names of the fields they changed.

        ``None`` (and ``normalize="auto"``) keeps this preprocessing's own value. A ``resize`` given without
        ``squash`` resizes the shorter side (as ``--resize`` says).

        Example:
            >>> own = Preprocess.make(resize=256, crop=224, normalize="imagenet", interpolation="bicubic")
            >>> chosen, changed = own.with_choices(crop=192, normalize="none")
            >>> chosen.crop, chosen.resize, chosen.interpolation, chosen.mean, changed
            (192, 256, 'bicubic', None, ['crop', 'normalize'])
        """
        changed = []
        if resize is not None:
            changed.append("resize")
        if crop is not None:
            changed.append("crop")
        if interpolation is not None:
            changed.append("interpolation")
        if normalize != "auto" or mean is not None or std is not None:
            changed.append("normalize")
        if normalize == "auto" and mean is None and std is None:
            mean, std = self.mean, self.std
            normalize = "none" if mean is None else normalize
        chosen = Preprocess.make(
            channels=self.channels,
            resize=self.resize if resize is None else resize,
            crop=self.crop if crop is None else crop,
            normalize=normalize,
            mean=mean,
            std=std,
            interpolation=self.interpolation if interpolation is None else interpolation,
            antialias=self.antialias,
            squash=self.squash and resize is None,
        )
        return chosen, changed

    def __call__(self, source: Any) -> torch.Tensor:
        array = load_image(source, grayscale=self.channels == 1)
        return self.apply(torch.from_numpy(array))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Resize, crop and normalise an already loaded ``(H, W)`` or ``(C, H, W)`` image in ``[0, 1]``."""
        if image.ndim == 2:
            image = image[None]
        resizing = self.resizing
        if resizing is not None:
            image = resizing(image)
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
            "resize": self.resizing.describe() if self.resizing else "none",
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
