"""Models from a spec string, weights loaded safely, and small reference networks that ship with shiftlab.

A model spec is one of:

* the name of a bundled network (:data:`BUNDLED_MODELS`: ``article``, ``simple_cnn``, ``circular_cnn``,
  ``digits_cnn``);
* a torchvision architecture name (``resnet18``, ``vgg11``, ``mobilenet_v3_small``,
  ``convnext_tiny``, ...), when torchvision is installed; built with random weights
  (``weights=None``: nothing is ever downloaded);
* ``package.module:callable`` (or ``path/to/file.py:callable``): a function or class
  returning an ``nn.Module``, called with no arguments, or an ``nn.Module`` object;
* any of these followed by conversion suffixes (see :mod:`shiftlab.layers.spec`):
  ``resnet18+blurpool``, ``resnet18+aps``, ``resnet18+circular+aps``, ``resnet18+blurpool5``.
  The conversion (:func:`shiftlab.layers.make_shift_invariant`) happens before weights are loaded;
  it keeps state_dict keys, so weights of the unconverted model load too.

Random initialisation is seeded (``seed=0`` by default) without touching the
caller's global random state, so the same spec gives the same network every time.

Weights come from a ``state_dict`` saved with ``torch.save`` (``.pt``, ``.pth``,
``.bin``), read with ``torch.load(weights_only=True)`` so that no arbitrary
object is ever unpickled, or from a ``.safetensors`` file.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from shiftlab.errors import ShiftlabError, check, check_choice, check_int, fail, first_line
from shiftlab.ops import Convolve, MaxPool

__all__ = [
    "BUNDLED_MODELS",
    "ArticleNet",
    "DIGITS_CNN_VARIANTS",
    "DigitsCNN",
    "ModelInfo",
    "SimpleCNN",
    "DTYPES",
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
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
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


PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]

#: The padding modes of :class:`torch.nn.Conv2d`.
PADDING_MODES: tuple[PaddingMode, ...] = ("zeros", "reflect", "replicate", "circular")


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
    """Where a model came from and what input it expects."""

    spec: str
    source: str  # "bundled", "torchvision" or "import"
    in_channels: int
    normalize: str  # "imagenet" or "none": what the CLI applies to images for this model
    description: str = ""


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
    """The classification architectures torchvision offers (empty when torchvision is not installed)."""
    try:
        import torchvision
    except ImportError:
        return []
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _first_conv_channels(model: nn.Module, default: int = 3) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return default


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def load_model(spec: str, *, weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, ModelInfo]:
    """Build a model from a spec (see the module docstring) and optionally load its weights.

    Args:
        spec: bundled name, torchvision name, or ``module:callable``.
        weights: optional ``.pt``/``.pth``/``.bin`` state_dict or ``.safetensors`` file.
        seed: seed of the random initialisation.

    Returns:
        ``(model, info)``; the model is on the CPU in eval mode.

    Raises:
        ShiftlabError: unknown spec, torchvision missing, an import that fails
            or does not give an ``nn.Module``, weights that do not fit.

    Example:
        >>> model, info = load_model("simple_cnn")
        >>> info.source, info.in_channels
        ('bundled', 3)
    """
    check(isinstance(spec, str) and spec.strip(), "model", f"expected a non-empty spec string, got {spec!r}")
    from shiftlab.layers.spec import split_model_spec

    full_spec, (spec, conversion) = spec.strip(), split_model_spec(spec.strip())
    if spec in BUNDLED_MODELS:
        factory, channels, description = BUNDLED_MODELS[spec]
        model = _seeded(seed, factory)
        info = ModelInfo(spec, "bundled", channels, "none", description)
    elif ":" in spec:
        model = _seeded(seed, lambda: _import_model(spec, seed))
        info = ModelInfo(spec, "import", _first_conv_channels(model), "none", f"imported from {spec}")
    else:
        model = _seeded(seed, lambda: _torchvision_model(spec))
        info = ModelInfo(
            spec,
            "torchvision",
            _first_conv_channels(model),
            "imagenet",
            f"torchvision {spec}, random weights (seed {seed})" if weights is None else f"torchvision {spec}",
        )
    state = None if weights is None else _read_state_dict(Path(weights))
    if conversion is not None:
        # A published recipe gives the authors' keys: weights that fit the model as it was load before converting.
        if state is not None and conversion.recipe != "shiftlab" and not _mismatches(model, state)[1]:
            _load_state(model, state, Path(str(weights)))
            state = None
        model, changes = conversion.apply(model)
        described = f"{info.description}, converted ({conversion.suffix[1:]}: {len(changes)} layers changed)"
        if spec == "digits_cnn" and weights is None:  # a shipped variant's own weights, else the baseline's
            variant = digits_cnn_variant(full_spec)
            if variant is not None:
                _load_asset_weights(model, f"digits_cnn_{variant}.safetensors")
                described += f"; weights digits_cnn_{variant}.safetensors, trained as converted"
            else:
                described += f"; the baseline's weights ({DIGITS_CNN_WEIGHTS}), converted without retraining"
        info = dataclasses.replace(info, spec=full_spec, description=described)
    if state is not None:
        _load_state(model, state, Path(str(weights)))
    return model.eval(), info


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
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
            f"architecture{hint}; or give package.module:callable",
        )
    return torchvision.models.get_model(name, weights=None)


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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    subject = f"weights '{path}'"
    check(path.exists(), subject, "no such file")
    check(path.is_file(), subject, "is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            fail(subject, f"is not a readable .safetensors file ({first_line(error)})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Unsupported operand" in text:  # bytes that are not a pickle at all: a damaged or foreign file
            fail(subject, "is not a torch.save file (unreadable pickle data)")
        refused = re.search(
            r"GLOBAL (\S+) was not an allowed global|Unsupported class (\S+)|whose module (\S+) is blocked", text
        )
        detail = f"it references {next(group for group in refused.groups() if group)}" if refused else first_line(error)
        fail(
            subject,
            "holds more than plain tensors, and weights_only loading refuses arbitrary objects: save "
            f"model.state_dict() instead ({detail})",
        )
    except (
        Exception
    ) as error:  # a damaged file makes the unpickler raise almost anything (IndexError, EOFError, RuntimeError, ...)
        fail(subject, f"is not a torch.save file ({first_line(error)})")
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    check(
        isinstance(loaded, dict)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()),
        subject,
        "is not a state_dict (a dict of names to tensors); save model.state_dict()",
    )
    return loaded


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict into ``model``, refusing anything but plain tensors; every key must match.

    Keys saved from ``nn.DataParallel`` (``module.`` in front) and the old keys of torchvision's DenseNet layers
    (``denselayer1.norm.1.weight`` for ``denselayer1.norm1.weight``, as in the DenseNet checkpoints torchvision and
    antialiased-cnns published) are renamed, as torchvision does; a batch norm's ``num_batches_tracked`` may be
    absent where its statistics are there (files saved before PyTorch 0.4.1; the model keeps its own count).

    Raises:
        ShiftlabError: unreadable file, not a state_dict, missing or unexpected
            keys, or tensors of the wrong shape (the message names a few).
    """
    path = Path(path)
    return _load_state(model, _read_state_dict(path), path)


#: A key of torchvision's DenseNet layers before its modules lost their dots (``norm.1`` is now ``norm1``).
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with its keys renamed to the model's (see :func:`load_weights`), and what still does not fit."""
    own = model.state_dict()
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        legacy = _DENSENET_LEGACY_KEY.match(key)
        if key not in own and legacy and legacy.group(1) + legacy.group(2) in own:
            key = legacy.group(1) + legacy.group(2)
        renamed[key] = value
    missing = [key for key in own if key not in renamed and not _count_before_pytorch_041(key, renamed)]
    unexpected = [key for key in renamed if key not in own]
    wrong = [
        f"{key} {tuple(renamed[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in renamed and renamed[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape ({'; '.join(wrong[:2])}{'; ...' if len(wrong) > 2 else ''})")
    return renamed, problems


def _count_before_pytorch_041(key: str, state: dict[str, torch.Tensor]) -> bool:
    """A batch norm's ``num_batches_tracked`` absent from a file that has the norm's statistics (an old file)."""
    prefix, _, name = key.rpartition(".")
    return name == "num_batches_tracked" and f"{prefix}.running_mean" in state


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    renamed, problems = _mismatches(model, state)
    check(not problems, f"weights '{path}'", "do not fit the model: " + ", ".join(problems))
    model.load_state_dict(renamed, strict=True)
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
