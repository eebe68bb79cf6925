"""Pretrained networks by name, from torchvision, timm and Hugging Face, each through its zoo's own mechanism and cache,
with the preprocessing it was trained with.

* **torchvision**: an architecture (classification, or semantic segmentation from ``torchvision.models.segmentation``)
  with a member of its weights enum, ``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``. The file is
  torch.hub's: ``$TORCH_HOME/hub/checkpoints/<the last part of the weights' url>``. Preprocessing: the weights'
  ``transforms()`` (its resize, crop, interpolation, antialias, mean and std).
* **timm**: ``NAME`` or ``NAME.TAG`` (``convnext_tiny.fb_in22k_ft_in1k``), pretrained as timm resolves it: from the
  Hugging Face repository of its ``pretrained_cfg`` (``timm/NAME.TAG``, ``model.safetensors``) in the Hugging Face
  cache, or from its url in torch.hub's cache. Preprocessing: ``timm.data.resolve_data_config`` of the model: input
  size, ``crop_pct`` (resize to ``floor(size / crop_pct)``, then crop ``size``), ``crop_mode``, interpolation, mean
  and std.
* **Hugging Face**: ``ORG/NAME``, a ``transformers`` image classifier (``AutoModelForImageClassification``), with its
  image processor's size, crop, resampling, mean and std.

**Cache first, never a silent random network.** A file that is cached is used as it is, without a network request.
A missing one is downloaded through the zoo's own cache, unless downloads are off (``HF_HUB_OFFLINE=1`` or
``SHIFTLAB_OFFLINE=1``, for every zoo) or fail: then one line names the file and the folder to put it in. The
Hugging Face cache is ``$HF_HUB_CACHE`` (default ``~/.cache/huggingface/hub``), read when a model is loaded.

**Safe loading.** torchvision's own loader unpickles its checkpoint without ``weights_only``, so the file is first read
with :func:`shiftlab.weights.read_state_dict` (``weights_only=True``) and refused unless it holds only tensors; timm and
transformers read ``.safetensors`` or ``torch.load(weights_only=True)`` themselves.

timm and transformers are optional: ``pip install shiftlab[timm]``, ``pip install shiftlab[hf]``.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from shiftlab.data import INTERPOLATIONS, Preprocess
from shiftlab.errors import ShiftlabError, check, fail, first_line
from shiftlab.weights import read_state_dict

__all__ = [
    "OFFLINE_VARIABLES",
    "ZooModel",
    "hf_cache_dir",
    "load_hf",
    "load_timm",
    "load_torchvision",
    "offline",
    "preprocess_from_hf",
    "preprocess_from_timm",
    "preprocess_from_torchvision",
    "torchvision_architectures",
    "torchvision_weights",
]

#: Environment variables that turn downloads off, for every zoo (the first is Hugging Face's own).
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "SHIFTLAB_OFFLINE")

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ZooModel:
    """A network from a zoo, with its own preprocessing and where both came from.

    ``unsupported`` lists the parts of the zoo's preprocessing that shiftlab cannot reproduce, as
    ``(field, why)``: a caller must then choose those fields itself (``--resize``, ``--crop``, ``--interpolation``).
    """

    model: nn.Module
    preprocess: Preprocess | None
    preprocess_source: str
    description: str
    unsupported: tuple[tuple[str, str], ...] = ()


def offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` or ``SHIFTLAB_OFFLINE`` is set to 1 (true, yes, on)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_VARIABLES)


def _offline_reason() -> str:
    names = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().lower() in _TRUE]
    return f"downloads are off ({names[0]}={os.environ[names[0]]})"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE`` as it is now, else huggingface_hub's own default."""
    given = os.environ.get("HF_HUB_CACHE")
    if given:
        return Path(given)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _require(package: str, extra: str, spec: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        fail("model", f"{spec!r} needs {package}, which is not installed: pip install 'shiftlab[{extra}]'")


# --------------------------------------------------------------------------- files in the zoos' caches


def _torch_hub_file(url: str, subject: str) -> Path:
    """The file at ``url`` in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded if missing and allowed."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(url).path)
    if path.is_file():
        return path
    where = f"download {url} and put it in {folder}"
    if offline():
        fail(subject, f"{path.name} is not in torch's cache, and {_offline_reason()}: {where}")
    digits = re.search(r"-([a-f0-9]{6,})\.", path.name)  # torchvision's file names end in a hash prefix
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), digits.group(1) if digits else None, progress=True)
    except Exception as error:  # no network, a proxy, a full disk, a damaged download: all the same to the user
        fail(subject, f"{path.name} is not in torch's cache, and downloading it failed ({first_line(error)}): {where}")
    return path


def _hf_file(
    repo: str,
    filenames: tuple[str, ...],
    subject: str,
    *,
    required: bool = True,
    whole: bool = False,
    revision: str | None = None,
) -> Path | None:
    """The first of ``filenames`` that the Hugging Face repository ``repo`` has, from the cache or downloaded.

    The message for a missing file says how to fetch it, or the whole repository with ``whole``.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    absent = 0
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str):
            return Path(found)
        absent += found is not None  # the cache remembers that the repository has no such file
    folder = f"models--{repo.replace('/', '--')}"
    where = (
        f"on a machine with a network run `hf download {repo}{'' if whole else ' ' + filenames[0]}` and copy its "
        f"cache folder {folder} into {cache}"
    )
    if absent == len(filenames):
        if not required:
            return None
        fail(subject, f"the Hugging Face repository {repo} has none of {', '.join(filenames)}")
    if offline():
        fail(subject, f"{filenames[0]} of {repo} is not in the Hugging Face cache, and {_offline_reason()}: {where}")
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache, revision=revision))
        except Exception as error:  # no network, an unknown or gated repository, a full disk
            if isinstance(error, EntryNotFoundError) and not isinstance(error, LocalEntryNotFoundError):
                continue  # the repository has no such file: try the next name
            fail(
                subject,
                f"{filename} of {repo} is not in the Hugging Face cache, and downloading it failed "
                f"({type(error).__name__}: {first_line(error)}): {where}",
            )
    if not required:
        return None
    fail(subject, f"the Hugging Face repository {repo} has none of {', '.join(filenames)}")


# --------------------------------------------------------------------------- torchvision


def torchvision_architectures() -> dict[str, str]:
    """torchvision's image classification and semantic segmentation architectures: name -> task."""
    import torchvision.models as models

    names = {name: "classification" for name in models.list_models(module=models)}
    names.update({name: "segmentation" for name in models.list_models(module=models.segmentation)})
    return dict(sorted(names.items()))


def torchvision_weights(name: str, weights: str) -> Any:
    """The member of ``name``'s weights enum called ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, or with the enum's
    name in front: ``ResNet50_Weights.IMAGENET1K_V2``).

    Example:
        >>> str(torchvision_weights("resnet50", "DEFAULT"))
        'ResNet50_Weights.IMAGENET1K_V2'
    """
    import torchvision.models as models

    enum = models.get_model_weights(name)
    prefix, _, member = weights.rpartition(".")
    choices = [item.name for item in enum] + ["DEFAULT"]
    check(
        prefix in ("", enum.__name__),
        "weights",
        f"{weights!r} are weights of another architecture; {name} takes {enum.__name__}: {', '.join(choices)}",
    )
    check(
        member in enum.__members__,
        "weights",
        f"{weights!r} is not a file, nor a weights name of {name}: choose from {', '.join(choices)}",
    )
    return enum[member]


def preprocess_from_torchvision(transforms: Any, channels: int = 3) -> Preprocess:
    """The :class:`~shiftlab.data.Preprocess` of torchvision's preset transforms (``weights.transforms()``): its
    ``resize_size`` (the shorter side), ``crop_size``, ``interpolation``, ``antialias``, ``mean`` and ``std``.

    Example:
        >>> from torchvision.models import ResNet50_Weights
        >>> prepare = preprocess_from_torchvision(ResNet50_Weights.IMAGENET1K_V2.transforms())
        >>> prepare.resize, prepare.crop, prepare.interpolation, prepare.normalize
        (232, 224, 'bilinear', 'imagenet')
    """
    resize = getattr(transforms, "resize_size", None)
    crop = getattr(transforms, "crop_size", None)
    check(
        (resize is None or len(resize) == 1) and (crop is None or len(crop) == 1),
        "model",
        f"torchvision's transforms {type(transforms).__name__} resize to {resize} and crop {crop}: shiftlab resizes "
        "the shorter side and crops squares",
    )
    antialias = getattr(transforms, "antialias", True)
    return Preprocess.make(
        channels=channels,
        resize=resize[0] if resize else None,
        crop=crop[0] if crop else None,
        mean=list(transforms.mean),
        std=list(transforms.std),
        interpolation=transforms.interpolation.value,
        antialias=True if antialias is None else bool(antialias),
    )


def load_torchvision(name: str, weights: str | None) -> ZooModel:
    """torchvision's ``name``: random weights (``weights=None``) or the pretrained ``weights`` (a weights enum name).

    Call it under a fixed seed for a reproducible random network (:func:`shiftlab.models.load_model` does).
    """
    import torchvision.models as models

    task = torchvision_architectures()[name]
    extra = {"weights_backbone": None} if task == "segmentation" else {}  # never a backbone download
    if weights is None:
        model = models.get_model(name, weights=None, **extra)
        return ZooModel(
            model,
            None,
            "",
            f"torchvision {name}, random weights",
        )
    member = torchvision_weights(name, weights)
    label = f"{type(member).__name__}.{member.name}"
    path = _torch_hub_file(member.url, f"weights {label}")
    read_state_dict(path)  # refuses a file that holds anything but tensors, before torchvision unpickles it
    try:
        model = models.get_model(name, weights=member, progress=False, **extra)
    except ShiftlabError:
        raise
    except Exception as error:  # a damaged or foreign file under the expected name
        fail(f"weights '{path}'", f"do not load into torchvision's {name}: {type(error).__name__}: {first_line(error)}")
    return ZooModel(
        model,
        preprocess_from_torchvision(member.transforms()),
        f"torchvision {label}.transforms()",
        f"torchvision {name}, pretrained weights {label} ({path.name})",
    )


# --------------------------------------------------------------------------- timm


def preprocess_from_timm(config: dict[str, Any]) -> tuple[Preprocess, tuple[tuple[str, str], ...]]:
    """The :class:`~shiftlab.data.Preprocess` of a timm data config (``timm.data.resolve_data_config``), as timm's
    evaluation transform applies it, and the parts shiftlab cannot reproduce.

    ``crop_mode="center"``: the shorter side to ``floor(size / crop_pct)``, then the centre ``size x size``;
    ``"squash"``: both sides to ``floor(size / crop_pct)``, then the centre crop; ``"border"`` (pad to a square)
    and non-square input sizes are not reproduced (listed as unsupported).

    Example:
        >>> config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875,
        ...           "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
        >>> prepare, unsupported = preprocess_from_timm(config)
        >>> prepare.resize, prepare.crop, prepare.interpolation, prepare.squash, unsupported
        (256, 224, 'bicubic', False, ())
    """
    unsupported: list[tuple[str, str]] = []
    channels, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    mode = config.get("crop_mode") or "center"
    interpolation = config.get("interpolation", "bilinear")
    resize: int | None = math.floor(height / crop_pct)
    crop: int | None = height
    if height != width:
        why = f"its input size is {height}x{width}, and shiftlab crops squares"
        unsupported += [("resize", why), ("crop", why)]
        resize = crop = None
    elif mode not in ("center", "squash"):
        why = f"its crop_mode {mode!r} (resize the longer side, pad to a square) is not reproduced"
        unsupported += [("resize", why), ("crop", why)]
        resize = crop = None
    if interpolation not in INTERPOLATIONS:
        unsupported.append(("interpolation", f"its interpolation {interpolation!r} is not one torchvision has"))
        interpolation = "bilinear"
    prepare = Preprocess.make(
        channels=channels,
        resize=resize,
        crop=crop,
        mean=list(config["mean"]),
        std=list(config["std"]),
        interpolation=interpolation,
        squash=mode == "squash",
    )
    return prepare, tuple(unsupported)


def load_timm(name: str, *, pretrained: bool, spec: str) -> ZooModel:
    """timm's ``name`` (``NAME`` or ``NAME.TAG``): its pretrained weights, or random ones (``pretrained=False``).

    Call it under a fixed seed for a reproducible random network (:func:`shiftlab.models.load_model` does).
    """
    timm = _require("timm", "timm", spec)
    from timm.models import get_pretrained_cfg, split_model_name_tag

    architecture, tag = split_model_name_tag(name)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5)
        hint = f"; similar: {', '.join(close)}" if close else ""
        fail("model", f"{spec!r}: timm {timm.__version__} has no architecture {architecture!r}{hint}")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm's "Invalid pretrained tag"
        tags = timm.list_pretrained(f"{architecture}.*")[:8]
        fail("model", f"{spec!r}: timm has no weights tagged {tag!r} for {architecture}; it has {', '.join(tags)}")
    label = f"{architecture}.{cfg.tag}" if cfg is not None and cfg.tag else architecture
    if not pretrained:
        model = timm.create_model(name, pretrained=False)
        description = f"timm {name}, random weights"
    else:
        path = _timm_weights_file(cfg, label, spec)
        try:  # timm's own loading (its checkpoint filters), from the file found: no network request
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": ""})
        except ShiftlabError:
            raise
        except Exception as error:
            fail(f"weights '{path}'", f"do not load into timm's {name}: {type(error).__name__}: {first_line(error)}")
        description = f"timm {label}, pretrained weights ({path.name})"
    config = timm.data.resolve_data_config(model=model)
    prepare, unsupported = preprocess_from_timm(config)
    return ZooModel(model, prepare, f"timm pretrained_cfg of {label} (resolve_data_config)", description, unsupported)


def _timm_weights_file(cfg: Any, label: str, spec: str) -> Path:
    subject = f"weights of {spec}"
    if cfg is not None and cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")  # timm's "ORG/NAME@REVISION"
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        path = _hf_file(repo, names, subject, revision=revision or None)
        assert path is not None
        return path
    if cfg is not None and cfg.url:
        return _torch_hub_file(cfg.url, subject)
    fail(
        "model",
        f"{spec!r}: timm has no pretrained weights for {label}; give a state_dict with --weights FILE, or "
        "--weights random",
    )


# --------------------------------------------------------------------------- Hugging Face

#: PIL's resampling codes (what Hugging Face image processors store) -> torchvision's interpolation.
_PIL_RESAMPLING = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _size_fields(size: Any) -> dict[str, int]:
    """A processor's size (a dict or transformers' SizeDict), its set fields only."""
    items = size.items() if isinstance(size, dict) else vars(size).items()
    return {key: int(value) for key, value in items if value is not None}


def preprocess_from_hf(processor: Any, channels: int = 3) -> tuple[Preprocess, tuple[tuple[str, str], ...]]:
    """The :class:`~shiftlab.data.Preprocess` of a Hugging Face image processor, and what shiftlab cannot reproduce.

    ``size={"shortest_edge": S}``: the shorter side to ``S`` (ConvNeXt's processors: to ``int(S / crop_pct)`` and
    then the centre ``S x S`` below 384 pixels, both sides to ``S`` from 384 on); ``size={"height": S, "width": S}``:
    both sides to ``S``; then ``crop_size`` when ``do_center_crop``; ``image_mean`` and ``image_std`` when
    ``do_normalize``; ``resample`` as the interpolation (antialiased, as the processors' torchvision backend).
    """
    unsupported: list[tuple[str, str]] = []
    resize: int | None = None
    crop: int | None = None
    squash = False
    kind = type(processor).__name__
    if getattr(processor, "do_resize", True):
        size = _size_fields(processor.size)
        crop_pct = getattr(processor, "crop_pct", None)
        if set(size) == {"shortest_edge"} and crop_pct is not None:
            if not kind.startswith("ConvNext"):
                why = f"{kind} resizes with crop_pct {crop_pct}, reproduced for ConvNeXt's processors only"
                unsupported += [("resize", why), ("crop", why)]
            elif size["shortest_edge"] < 384:
                resize, crop = int(size["shortest_edge"] / crop_pct), size["shortest_edge"]
            else:
                resize, squash = size["shortest_edge"], True
        elif set(size) == {"shortest_edge"}:
            resize = size["shortest_edge"]
        elif set(size) == {"height", "width"} and size["height"] == size["width"]:
            resize, squash = size["height"], True
        else:
            why = f"{kind} resizes to {size}, and shiftlab resizes the shorter side or to a square"
            unsupported += [("resize", why), ("crop", why)]
    if getattr(processor, "do_center_crop", False) and not unsupported:
        crop_size = _size_fields(processor.crop_size)
        if crop_size.get("height") is not None and crop_size.get("height") == crop_size.get("width"):
            crop = crop_size["height"]
        else:
            why = f"{kind} crops {crop_size}, and shiftlab crops squares"
            unsupported += [("crop", why)]
    interpolation = _PIL_RESAMPLING.get(int(getattr(processor, "resample", 2) or 2), "unknown")
    if interpolation not in INTERPOLATIONS:
        unsupported.append(("interpolation", f"{kind} resamples with {interpolation}, which torchvision has not"))
        interpolation = "bilinear"
    normalize = getattr(processor, "do_normalize", False)
    mean = list(processor.image_mean) if normalize else None
    std = list(processor.image_std) if normalize else None
    prepare = Preprocess.make(
        channels=channels, resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation, squash=squash
    )
    return prepare, tuple(unsupported)


#: The files of a Hugging Face model that shiftlab makes sure are cached before transformers reads them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_hf(repo: str, *, pretrained: bool, spec: str) -> ZooModel:
    """The ``transformers`` image classifier of the Hugging Face repository ``repo`` (``ORG/NAME``), with its image
    processor; random weights of its architecture with ``pretrained=False``.

    Call it under a fixed seed for a reproducible random network (:func:`shiftlab.models.load_model` does).
    """
    transformers = _require("transformers", "hf", spec)
    check(
        re.fullmatch(r"[\w.-]+/[\w.-]+", repo) is not None,
        "model",
        f"{spec!r}: expected hf:ORG/NAME, a Hugging Face model repository",
    )
    subject = f"model {spec}"
    config_file = _hf_file(repo, ("config.json",), subject, whole=True)
    assert config_file is not None
    snapshot = config_file.parent
    processor_file = _hf_file(repo, ("preprocessor_config.json",), subject, required=False, whole=True)
    options = {"cache_dir": str(hf_cache_dir()), "local_files_only": True}  # every file needed is cached by now
    try:
        config = transformers.AutoConfig.from_pretrained(repo, **options)
        if pretrained:
            weights = _hf_file(repo, HF_WEIGHT_FILES, f"weights of {spec}", whole=True)
            assert weights is not None
            # transformers draws a progress bar for loading weights on stderr: the command's one-line contract
            # has no room for it (shiftlab draws its own bars for long work)
            transformers.utils.logging.disable_progress_bar()
            model, loading = transformers.AutoModelForImageClassification.from_pretrained(
                repo, output_loading_info=True, **options
            )
            # transformers leaves parameters the file lacks (or has in another shape) at their random initialisation
            # and only logs it: never a partly random network when pretrained weights were asked for
            left = [*loading.get("missing_keys", ()), *(item[0] for item in loading.get("mismatched_keys", ()))]
            check(
                not left,
                f"weights of {spec}",
                f"{weights.name} leaves {len(left)} parameter(s) of {type(model).__name__} at random "
                f"initialisation ({', '.join(sorted(left)[:3])}{', ...' if len(left) > 3 else ''})",
            )
            description = f"Hugging Face {repo}, pretrained weights ({weights.name}, {type(model).__name__})"
        else:
            model = transformers.AutoModelForImageClassification.from_config(config)
            description = f"Hugging Face {repo}, random weights ({type(model).__name__})"
        processor = None
        if processor_file is not None:
            processor = transformers.AutoImageProcessor.from_pretrained(repo, **options)
    except ShiftlabError:
        raise
    except Exception as error:  # transformers raises ValueError, OSError, KeyError... for a model it cannot build
        fail(
            "model",
            f"{spec!r}: transformers cannot load it as an image classifier from {snapshot}: "
            f"{type(error).__name__}: {first_line(error)}",
        )
    if processor is None:
        return ZooModel(
            model,
            None,
            f"none: {repo} has no image processor (preprocessor_config.json)",
            description,
            (("resize", f"{repo} has no image processor"),),
        )
    prepare, unsupported = preprocess_from_hf(processor, channels=getattr(config, "num_channels", 3) or 3)
    return ZooModel(model, prepare, f"image processor of {repo} ({type(processor).__name__})", description, unsupported)
