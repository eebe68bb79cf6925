"""Models from a spec string, weights loaded safely, and small reference networks that ship with shiftlab.

A model spec is one of:

* the name of a bundled network (:data:`BUNDLED_MODELS`: ``article``, ``simple_cnn``, ``circular_cnn``,
  ``digits_cnn``);
* a torchvision architecture name (``resnet18``, ``vgg11``, ``convnext_tiny``, ..., and the semantic segmentation
  models ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``, ...): random weights, unless ``weights``
  names a member of its weights enum (``DEFAULT``, ``IMAGENET1K_V2``), loaded through torchvision's weights API;
* ``timm:NAME`` or ``timm:NAME.TAG`` (``timm:convnext_tiny.fb_in22k_ft_in1k``): timm's pretrained weights;
* ``hf:ORG/NAME`` (``hf:microsoft/resnet-50``): a Hugging Face ``transformers`` image classifier, pretrained;
* ``package.module:callable`` (or ``path/to/file.py:callable``): a function or class
  returning an ``nn.Module``, called with no arguments, or an ``nn.Module`` object;
* any of these followed by conversion suffixes (see :mod:`shiftlab.layers.spec`):
  ``resnet18+blurpool``, ``resnet18+aps``, ``resnet18+circular+aps``, ``resnet18+blurpool5``, and the authors'
  own networks ``resnet50+blurpool@zhang2019``, ``resnet18+aps@chaman2021``. The conversion
  (:func:`shiftlab.layers.make_shift_invariant`) keeps state_dict keys, so weights of the unconverted model load
  too; a published recipe gives the authors' keys, so their checkpoints load, and a weights file that fits the
  unconverted model instead is loaded before the conversion.

``weights`` is a state_dict file (any spec), a torchvision weights name (torchvision specs only), or ``"random"``
(torchvision, timm and Hugging Face specs: the architecture with seeded random weights). Pretrained weights come
through each zoo's own cache (:mod:`shiftlab.zoo`): a file that is neither cached nor downloadable gives one line
that names it and where to put it, never a silent random network.

A pretrained model brings its own preprocessing (:attr:`ModelInfo.preprocess`: the weights' transforms, timm's data
config, the image processor), with its source; :meth:`ModelInfo.preprocessing` puts a caller's explicit choices in
its place.

Random initialisation is seeded (``seed=0`` by default) without touching the
caller's global random state, so the same spec gives the same network every time.

Weights files are read by :mod:`shiftlab.weights`: a ``state_dict`` saved with ``torch.save`` (``.pt``, ``.pth``,
``.bin``), read with ``torch.load(weights_only=True)`` so that no arbitrary object is ever unpickled, or a
``.safetensors`` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab.data import Preprocess
from shiftlab.errors import ShiftlabError, check, check_choice, check_int, fail, first_line
from shiftlab.layers import PADDING_MODES, PaddingMode
from shiftlab.ops import Convolve, MaxPool
from shiftlab.weights import fits, load_state, load_weights, read_state_dict

__all__ = [
    "BUNDLED_MODELS",
    "eval_mode",
    "ArticleNet",
    "DIGITS_CNN_VARIANTS",
    "DigitsCNN",
    "ModelInfo",
    "SimpleCNN",
    "DTYPES",
    "describe_preprocessing",
    "digits_cnn_variant",
    "load_model",
    "load_weights",
    "resolve_device",
    "resolve_dtype",
    "torchvision_models",
]


class ArticleNet(nn.Module):
    """The reference article's pipeline as a network: Sobel (valid) + ReLU, then ``poolings`` 2x2 max poolings.

    Shape:
        - input: :math:`(N, 1, H, W)` grayscale
        - output: :math:`(N, 1, (H - 2) / 2^p, (W - 2) / 2^p)`

    Example:
        >>> ArticleNet()(torch.zeros(1, 1, 34, 34)).shape
        torch.Size([1, 1, 4, 4])
    """

    def __init__(self, poolings: int = 3) -> None:
        super().__init__()
        self.edges = Convolve("sobel_y", padding="valid", relu=True)
        self.pools = nn.Sequential(*[MaxPool(2) for _ in range(poolings)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pools(self.edges(x))


class SimpleCNN(nn.Module):
    """A small image classifier of the usual kind.

    3x3 convolutions, batch norm, ReLU, max pooling, a strided convolution, global average pooling and a linear head.

    With ``padding_mode="circular"`` and ``strided=False`` it has no stride and
    circular padding everywhere: every spatial layer is then exactly
    equivariant to circular shifts (a known answer for tests and demos).

    Shape:
        - input: :math:`(N, C_{in}, H, W)`
        - output: :math:`(N, classes)`

    Example:
        >>> SimpleCNN()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 10,
        width: int = 16,
        padding_mode: PaddingMode = "zeros",
        strided: bool = True,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=padding_mode, bias=False)

        self.features = nn.Sequential(
            conv(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if strided else nn.Identity(),
            conv(width, 2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            conv(2 * width, 2 * width, stride=2 if strided else 1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            conv(2 * width, 4 * width), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class DigitsCNN(nn.Module):
    """The reference classifier for 28x28 digits (:func:`shiftlab.digits.load_digits`); ``digits_cnn`` is it, trained.

    Five 3x3 convolutions with batch norm and ReLU, and two downsampling layers of the kinds that anti-aliasing
    (BlurPool) and polyphase sampling (APS) replace: a 2x2 max pooling (28 -> 14) and a stride-2 convolution
    (14 -> 7); then global average pooling and a linear head. Feature maps are even-sized before each stride-2
    layer, so none drops a row or column. Two convolutions at 7x7 give a receptive field of 28 pixels, the whole
    digit, before the average pooling.

    Args:
        in_channels: input channels (1 for the digits).
        classes: number of outputs.
        width: channels of the first convolution (then ``2 width``, ``2 width``, ``4 width``, ``4 width``).
        padding_mode: padding of every convolution (``zeros``, ``reflect``, ``replicate`` or ``circular``).

    Shape:
        - input: :math:`(N, C_{in}, H, W)`, for the digits :math:`(N, 1, 28, 28)`
        - output: :math:`(N, classes)`, logits

    Example:
        >>> DigitsCNN()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 16, padding_mode: str = "zeros") -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        classes = check_int(classes, "classes", minimum=1)
        width = check_int(width, "width", minimum=1)
        padding: PaddingMode = check_choice(padding_mode, "padding_mode", PADDING_MODES)

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=padding, bias=False)

        self.features = nn.Sequential(
            conv(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv(width, 2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            conv(2 * width, 2 * width, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            conv(2 * width, 4 * width), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
            conv(4 * width, 4 * width), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from, which weights it has, and what input it expects.

    ``preprocess`` is the model's own preprocessing (``None``: images as they are, no normalisation), from
    ``preprocess_source``; ``unsupported`` lists ``(field, why)`` for the parts of a zoo's preprocessing that
    shiftlab cannot reproduce, which a caller must then choose (see :meth:`preprocessing`).
    """

    spec: str
    source: str  # "bundled", "torchvision", "timm", "hf" or "import"
    in_channels: int
    normalize: str  # the name of the model's own normalisation: "imagenet", "custom" or "none"
    description: str = ""
    preprocess: Preprocess | None = None
    preprocess_source: str = ""
    unsupported: tuple[tuple[str, str], ...] = ()
    weights: str = ""  # which weights: "random (seed 0)", "IMAGENET1K_V2", a file, "pretrained (timm)", ...

    def preprocessing(
        self,
        *,
        resize: int | None = None,
        crop: int | None = None,
        interpolation: str | None = None,
        normalize: str = "auto",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> tuple[Preprocess, dict[str, Any]]:
        """The model's preprocessing with the caller's explicit choices in place (``None``, ``"auto"``: the
        model's own), and its record for a protocol: what it is, where it came from, what was overridden.

        Raises:
            ShiftlabError: a part of the model's own preprocessing that shiftlab cannot reproduce was not chosen.

        Example:
            >>> _, info = load_model("resnet18")
            >>> prepare, record = info.preprocessing(resize=64, crop=56)
            >>> prepare.resize, prepare.crop, prepare.normalize, record["overridden"]
            (64, 56, 'imagenet', ['resize', 'crop'])
        """
        own = self.preprocess or Preprocess.make(channels=self.in_channels)
        chosen, changed = own.with_choices(
            resize=resize, crop=crop, interpolation=interpolation, normalize=normalize, mean=mean, std=std
        )
        for field, why in self.unsupported:
            check(
                field in changed,
                f"model {self.spec}",
                f"{why}: choose its {field} yourself (resize and crop: --size, or --resize and --crop; "
                "--interpolation; --normalize)",
            )
        source = self.preprocess_source or "none of its own (images as they are)"
        record = {**chosen.describe(), "source": source, "overridden": changed}
        return chosen, record


def describe_preprocessing(record: dict[str, Any]) -> str:
    """A preprocessing record (:meth:`ModelInfo.preprocessing`) on one line, as the command line prints it.

    Example:
        >>> _, info = load_model("resnet18")
        >>> describe_preprocessing(info.preprocessing(resize=64, crop=56)[1])
        'resize shorter side 64 (bilinear, antialiased), crop 56x56 centre, normalize imagenet; from ImageNet mean and \
std (a torchvision architecture without pretrained weights: no resize or crop); resize, crop as given'
    """
    normalize = record["normalize"]
    if normalize == "custom":
        normalize = f"custom: mean {record['mean']}, std {record['std']}"
    given = f"; {', '.join(record['overridden'])} as given" if record["overridden"] else ""
    return f"resize {record['resize']}, crop {record['crop']}, normalize {normalize}; from {record['source']}{given}"


#: The weights of ``digits_cnn``, written by ``scripts/train_reference.py`` (protocol and accuracy in the JSON beside).
DIGITS_CNN_WEIGHTS = "digits_cnn_baseline.safetensors"

#: The trained variants of ``digits_cnn`` that ship with shiftlab: variant -> the conversion suffix of its spec.
#: Each was converted right after initialisation and then trained as converted (``scripts/train_reference.py
#: --variant NAME``), with the baseline's seed and budget; its weights are ``assets/digits_cnn_<variant>.safetensors``
#: and load by default for that spec (``digits_cnn+blurpool``). Other suffixes convert the baseline's weights.
DIGITS_CNN_VARIANTS: dict[str, str] = {
    "baseline": "",
    "blurpool": "+blurpool",
    "aps": "+aps",
    "circular": "+circular",
    "circular_blurpool": "+circular+blurpool",
    "circular_aps": "+circular+aps",
}


def _load_asset_weights(model: nn.Module, name: str) -> nn.Module:
    with resources.as_file(resources.files("shiftlab").joinpath(f"assets/{name}")) as path:
        return load_weights(model, path)


def _trained_digits_cnn() -> nn.Module:
    """:class:`DigitsCNN` with the weights that ship with shiftlab (trained on the bundled digits' training split)."""
    return _load_asset_weights(DigitsCNN(), DIGITS_CNN_WEIGHTS)


def digits_cnn_variant(spec: str) -> str | None:
    """The shipped variant of ``digits_cnn`` (:data:`DIGITS_CNN_VARIANTS`) that ``spec`` loads, or ``None``.

    Suffixes that build the same layers name the same variant, in any order and with the default filter size
    written out or not.

    Example:
        >>> digits_cnn_variant("digits_cnn+aps+circular"), digits_cnn_variant("digits_cnn+blurpool4")
        ('circular_aps', 'blurpool')
        >>> digits_cnn_variant("digits_cnn"), digits_cnn_variant("digits_cnn+aps5"), digits_cnn_variant("resnet18")
        ('baseline', None, None)
    """
    from shiftlab.layers.convert import DEFAULT_KERNEL_SIZE
    from shiftlab.layers.spec import split_model_spec

    def layers(text: str) -> tuple[str, Any] | None:
        base, conversion = split_model_spec(text.strip())
        if base != "digits_cnn":
            return None
        if conversion is None:
            return base, None
        method = conversion.method
        size = method and (conversion.kernel_size or DEFAULT_KERNEL_SIZE[method])
        return base, (method, conversion.padding, size, conversion.recipe)

    wanted = layers(spec)
    if wanted is None:
        return None
    return next((name for name, suffix in DIGITS_CNN_VARIANTS.items() if layers("digits_cnn" + suffix) == wanted), None)


#: The networks that ship with shiftlab: name -> (factory, in_channels, description).
BUNDLED_MODELS: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "article": (ArticleNet, 1, "the article's pipeline: Sobel (valid) + ReLU, then three 2x2 max poolings"),
    "simple_cnn": (
        SimpleCNN,
        3,
        "small classifier: conv-BN-ReLU, max pool, strided conv, global average pool, linear (zero padding)",
    ),
    "circular_cnn": (
        lambda: SimpleCNN(padding_mode="circular", strided=False),
        3,
        "the same with circular padding and no stride: exactly equivariant to circular shifts",
    ),
    "digits_cnn": (
        _trained_digits_cnn,
        1,
        "digit classifier for 28x28 gray images in [0, 1], trained on shiftlab.digits' MNIST 5k training split: "
        "conv-BN-ReLU, max pool, strided conv, global average pool, linear (zero padding)",
    ),
}


def torchvision_models() -> list[str]:
    """The classification and semantic segmentation architectures torchvision offers (empty without torchvision)."""
    try:
        from shiftlab.zoo import torchvision_architectures

        return list(torchvision_architectures())
    except ImportError:
        return []


def _first_conv_channels(model: nn.Module, default: int = 3) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return default


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


#: The ``weights`` value that asks for an architecture's seeded random initialisation (torchvision, timm, hf specs).
RANDOM_WEIGHTS = "random"

#: A torchvision weights name: an enum member (``DEFAULT``, ``IMAGENET1K_V2``), with its enum's name or without.
_WEIGHTS_NAME = re.compile(r"(?:[A-Za-z0-9]+_Weights\.)?[A-Z][A-Z0-9_]*")


def _weights_kind(weights: str | Path | None) -> str | None:
    """What ``weights`` asks for: ``None``, ``"random"``, ``"name"`` (torchvision's) or ``"file"``.

    An existing file is a file, whatever its name; ``random`` is the word; a name in capitals (``DEFAULT``,
    ``IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V2``) is a weights name; anything else a file.
    """
    if weights is None:
        return None
    if isinstance(weights, Path):
        return "file"
    text = str(weights).strip()
    if text == RANDOM_WEIGHTS:
        return "random"
    if not Path(text).exists() and _WEIGHTS_NAME.fullmatch(text):
        return "name"
    return "file"


def load_model(spec: str, *, weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, ModelInfo]:
    """Build a model from a spec (see the module docstring) and optionally load its weights.

    Args:
        spec: bundled name, torchvision name, ``timm:NAME[.TAG]``, ``hf:ORG/NAME``, or ``module:callable``;
            optionally with conversion suffixes.
        weights: a ``.pt``/``.pth``/``.bin`` state_dict or ``.safetensors`` file; for a torchvision
            architecture a weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...); or ``"random"`` for a zoo
            architecture's seeded random weights. Default: random for torchvision, pretrained for timm and hf.
        seed: seed of the random initialisation.

    Returns:
        ``(model, info)``; the model is on the CPU in eval mode.

    Raises:
        ShiftlabError: unknown spec, a missing optional package (the line names the ``pip install``), an import
            that fails or does not give an ``nn.Module``, weights that are unknown, not cached and not
            downloadable, or do not fit.

    Example:
        >>> model, info = load_model("simple_cnn")
        >>> info.source, info.in_channels
        ('bundled', 3)
    """
    check(isinstance(spec, str) and spec.strip(), "model", f"expected a non-empty spec string, got {spec!r}")
    from shiftlab.layers.spec import split_model_spec

    full_spec, (spec, conversion) = spec.strip(), split_model_spec(spec.strip())
    kind = _weights_kind(weights)
    zoo = spec.startswith(("timm:", "hf:")) or not (spec in BUNDLED_MODELS or ":" in spec)
    if kind == "name" and (spec in BUNDLED_MODELS or ":" in spec):
        fail(
            "weights",
            f"{weights!r} names pretrained weights of a torchvision architecture, and {spec!r} is not one; "
            + (
                "it loads its pretrained weights by itself (pick them in the spec), or give a state_dict FILE or "
                f"{RANDOM_WEIGHTS}"
                if spec.startswith(("timm:", "hf:"))
                else "give a state_dict file (.pt, .pth, .safetensors)"
            ),
        )
    check(
        kind != "random" or zoo,
        "weights",
        f"{RANDOM_WEIGHTS!r} applies to torchvision, timm: and hf: models; {spec!r} has its own weights",
    )
    described_weights = f"random initialisation, seed {seed}"
    if spec in BUNDLED_MODELS:
        factory, channels, description = BUNDLED_MODELS[spec]
        model = _seeded(seed, factory)
        info = ModelInfo(spec, "bundled", channels, "none", description)
        described_weights = f"{DIGITS_CNN_WEIGHTS} (shipped)" if spec == "digits_cnn" else described_weights
    elif spec.startswith("timm:"):
        from shiftlab.zoo import load_timm

        found = _seeded(seed, lambda: load_timm(spec[5:], pretrained=kind is None, spec=spec))
        info = _zoo_info(spec, "timm", found)
        model = found.model
        described_weights = "pretrained (timm)" if kind is None else described_weights
    elif spec.startswith("hf:"):
        from shiftlab.zoo import load_hf

        found = _seeded(seed, lambda: load_hf(spec[3:], pretrained=kind is None, spec=spec))
        info = _zoo_info(spec, "hf", found)
        model = found.model
        described_weights = "pretrained (Hugging Face)" if kind is None else described_weights
    elif ":" in spec:
        model = _seeded(seed, lambda: _import_model(spec, seed))
        info = ModelInfo(spec, "import", _first_conv_channels(model), "none", f"imported from {spec}")
        described_weights = f"the callable's own (any random initialisation seeded with {seed})"
    else:
        _check_torchvision_name(spec)
        from shiftlab.zoo import load_torchvision

        named = str(weights).strip() if kind == "name" else None
        found = _seeded(seed, lambda: load_torchvision(spec, named))
        if named is None:  # no pretrained weights: ImageNet statistics, images otherwise as they are
            own = Preprocess.make(channels=_first_conv_channels(found.model), normalize="imagenet")
            found = dataclasses.replace(
                found,
                preprocess=own,
                preprocess_source="ImageNet mean and std (a torchvision architecture without pretrained weights: "
                "no resize or crop)",
                description=f"{found.description} (seed {seed})" if kind != "file" else f"torchvision {spec}",
            )
        info = _zoo_info(spec, "torchvision", found)
        model = found.model
        described_weights = named or described_weights
    state = read_state_dict(weights) if kind == "file" and weights is not None else None
    if conversion is not None:
        # A published recipe gives the authors' keys: weights that fit the model as it was load before converting.
        if state is not None and conversion.recipe != "shiftlab" and fits(model, state):
            load_state(model, state, f"weights '{weights}'")
            state = None
        model, changes = conversion.apply(model)
        described = f"{info.description}, converted ({conversion.suffix[1:]}: {len(changes)} layers changed)"
        if spec == "digits_cnn" and weights is None:  # a shipped variant's own weights, else the baseline's
            variant = digits_cnn_variant(full_spec)
            if variant is not None:
                _load_asset_weights(model, f"digits_cnn_{variant}.safetensors")
                described += f"; weights digits_cnn_{variant}.safetensors, trained as converted"
                described_weights = f"digits_cnn_{variant}.safetensors (shipped)"
            else:
                described += f"; the baseline's weights ({DIGITS_CNN_WEIGHTS}), converted without retraining"
        info = dataclasses.replace(info, spec=full_spec, description=described)
    if kind == "file":
        if state is not None:
            load_state(model, state, f"weights '{weights}'")
        described_weights = str(weights)
    return model.eval(), dataclasses.replace(info, weights=described_weights)


def _zoo_info(spec: str, source: str, found: Any) -> ModelInfo:
    own = found.preprocess
    return ModelInfo(
        spec,
        source,
        own.channels if own is not None else _first_conv_channels(found.model),
        own.normalize if own is not None else "none",
        found.description,
        own,
        found.preprocess_source,
        found.unsupported,
    )


def _check_torchvision_name(name: str) -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        fail(
            "model",
            f"{name!r} is not a bundled model ({', '.join(BUNDLED_MODELS)}), and torchvision, needed for its "
            "architectures, is not installed: pip install torchvision",
        )
    names = torchvision_models()
    if name not in names:
        close = [candidate for candidate in names if candidate.startswith(name[:3])][:6]
        hint = f"; similar: {', '.join(close)}" if close else ""
        fail(
            "model",
            f"unknown model {name!r}: not bundled ({', '.join(BUNDLED_MODELS)}) nor a torchvision "
            f"architecture{hint}; or give timm:NAME, hf:ORG/NAME or package.module:callable",
        )


def _import_model(spec: str, seed: int = 0) -> nn.Module:
    location, _, attribute = spec.rpartition(":")
    check(location and attribute, "model", f"{spec!r}: expected package.module:callable or path/to/file.py:callable")
    try:
        if location.endswith(".py"):
            path = Path(location)
            check(path.is_file(), "model", f"{spec!r}: file '{location}' not found")
            module_name = f"_shiftlab_user_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                fail("model", f"{spec!r}: '{location}' cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
    except ShiftlabError:
        raise
    except Exception as error:  # the user's module may raise anything while importing
        fail("model", f"{spec!r}: importing '{location}' failed: {type(error).__name__}: {first_line(error)}")
    target: Any = module
    for part in attribute.split("."):
        check(hasattr(target, part), "model", f"{spec!r}: '{location}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        return target
    check(callable(target), "model", f"{spec!r}: '{attribute}' is neither an nn.Module nor callable")
    try:
        torch.manual_seed(seed)  # again: a first import may have drawn random numbers (module-level layers)
        model = target()
    except Exception as error:  # user code
        fail("model", f"{spec!r}: calling '{attribute}()' failed: {type(error).__name__}: {first_line(error)}")
    check(
        isinstance(model, nn.Module),
        "model",
        f"{spec!r}: '{attribute}()' returned {type(model).__name__}, not a torch.nn.Module",
    )
    return model


#: Precisions a model can run in, by name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (see :data:`DTYPES`).

    Example:
        >>> resolve_dtype("bfloat16")
        torch.bfloat16
    """
    return DTYPES[check_choice(name, "dtype", DTYPES)]


def resolve_device(name: str) -> torch.device:
    """The torch device called ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``), refused when it is not available here.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        fail("device", f"{name!r} is not a device name (try cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("device", "CUDA was asked for, but torch sees no CUDA device here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        fail("device", f"{name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail("device", "MPS was asked for, but it is not available here")
    return device


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """The ``models`` in eval mode for the ``with`` block; every module's own train/eval flag restored on the way
    out, also when the block raises (a model may hold modules in both states, as a partly frozen one does).

    Example:
        >>> net = nn.Sequential(nn.Dropout(), nn.Dropout().eval())
        >>> with eval_mode(net):
        ...     [module.training for module in net.modules()]
        [False, False, False]
        >>> [module.training for module in net.modules()]
        [True, True, False]
    """
    flags = {module: module.training for model in models for module in model.modules()}
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in flags.items():
            module.training = training
