"""Invariance of predictions over a whole data set: :func:`evaluate` -> :class:`EvaluationResult`.

One pass over the data measures every requested metric (:mod:`shiftlab.invariance.protocols`)
for every model, on the same shifted views:

1. Images are loaded (decoded and resized: :class:`~shiftlab.invariance.datasets.EvaluationDataset`)
   by a streaming loader, optionally in worker processes.
2. For each image, every metric lists the views it needs (:mod:`shiftlab.invariance.views`);
   views that several metrics share (the unshifted input above all) are cut once.
3. The views of a *pack* of images go through each model together: ``K`` views per
   image cost ``K`` forward passes' worth of inputs, whatever the number of pairs.
4. Each metric's accumulator turns the outputs into integer counts.

**Exactness.** The float results of many models depend, in the last bits, on
what else is in the batch (we measured up to 2e-6 on torchvision's resnet18 on
the CPU between batch sizes 5 and 8). So the composition of every forward pass
is fixed by the data and the protocol alone: pack ``k`` holds images
``[k P, (k + 1) P)`` with ``P = max(1, batch_size // views_per_image)``, its views
in image order, split into passes of at most ``batch_size`` inputs. Shards,
loader workers and resumption move whole packs, never change them; random
shifts depend on (seed, metric, image index) only; every state is an integer.
Results are therefore identical, number for number, for any number of loader
workers or processes and across an interruption, as long as each process runs
the model with the same number of intra-op threads (float kernels may split
their work differently). ``batch_size`` and the device are part of the
protocol; a resumed run must use the same.

**Nothing lost.** With a ``checkpoint`` path, the counts so far and the packs
done are written there (atomically: a temporary file, then a rename) every
``checkpoint_every`` steps; ``resume=True`` continues from it, and refuses a
checkpoint made with other settings. Images that cannot be read are skipped,
reported by name, and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab._format import name_bytes, printable
from shiftlab._io import (
    atomic_write_bytes,
    atomic_write_text,
    csv_text,
    json_text,
    read_checkpoint,
    to_jsonable,
)
from shiftlab._pandas import data_frame
from shiftlab.accumulate import Accumulator
from shiftlab.data import Preprocess, Resize
from shiftlab.distributed import Processes, gather_objects, process_group, shard
from shiftlab.errors import ShiftlabError, add_note, check, check_int, describe, fail, first_line
from shiftlab.invariance.catalog import AUTO, METRIC_NAMES, MetricChoice, make_protocol
from shiftlab.invariance.datasets import (
    TOO_SMALL,
    UNREADABLE,
    EvaluationDataset,
    ImageSet,
    LoadedImage,
    choose_workers,
    load_batches,
    open_images,
)
from shiftlab.invariance.protocols import InvarianceProtocol, Metric, sample_seed
from shiftlab.invariance.views import Geometry, ViewKey, build_view, view_key
from shiftlab.models import ModelInfo, _first_conv_channels, eval_mode, load_model, resolve_device, resolve_dtype
from shiftlab.outputs import describe_output, main_output, named_tensors

__all__ = ["COLUMNS", "EvaluateOptions", "EvaluationResult", "PreprocessChoices", "evaluate"]

CHECKPOINT_FORMAT = "shiftlab-evaluate-checkpoint/2"

#: The columns of :attr:`EvaluationResult.rows` (and of its CSV).
COLUMNS: tuple[str, ...] = ("model", "metric", "statistic", "at", "value", "count", "ci_low", "ci_high")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class PreprocessChoices:
    """Choices in place of parts of every model's own preprocessing, as the command line's options give them.

    ``None`` (and ``normalize="auto"``) keeps each model's own part (see
    :meth:`shiftlab.models.ModelInfo.preprocessing`): ``PreprocessChoices(resize=256, crop=224)`` resizes and crops
    every model's input alike and normalises it as the model expects. A :class:`~shiftlab.data.Preprocess` given to
    :func:`evaluate` instead is the whole preprocessing of every model.

    Example:
        >>> PreprocessChoices(resize=256, crop=224).normalize
        'auto'
    """

    resize: int | None = None
    crop: int | None = None
    interpolation: str | None = None
    normalize: str = "auto"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`evaluate` runs. ``seed``, ``batch_size``, the device and ``dtype`` are part of the protocol (a
    resumed run must use the same); the others never change a number.

    Attributes:
        seed: seeds the random shifts (and the random initialisation of model specs without weights).
        batch_size: most inputs per forward pass; fixes which images share a pass.
        workers: loader processes that decode images (0: decode in this process), or ``"auto"``: chosen from
            the CPU cores, the device and the number of images (:func:`shiftlab.invariance.datasets.choose_workers`;
            the command line's default). The result's ``protocol["loader"]`` says how many decoded and why.
        device, dtype: where and in which precision the models run.
        checkpoint: file for partial results, written every ``checkpoint_every`` steps.
        resume: continue from ``checkpoint`` (refused if it was made with other settings).
        progress: show a progress bar on stderr (``None``: only on a terminal).

    Example:
        >>> EvaluateOptions(batch_size=256, device="cuda").workers
        0
    """

    seed: int = 0
    batch_size: int = 64
    workers: int | str = 0
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint: str | Path | None = None
    checkpoint_every: int = 50
    resume: bool = False
    progress: bool | None = False


#: The keywords :func:`evaluate` took before its options were grouped and that the README showed, with their group;
#: they still work, with a DeprecationWarning.
DEPRECATED_KEYWORDS: dict[str, str] = {
    "resize": "preprocess",
    "crop": "preprocess",
    "normalize": "preprocess",
    "batch_size": "options",
    "workers": "options",
    "device": "options",
    "checkpoint": "options",
}


def _grouped(
    preprocess: Preprocess | PreprocessChoices | None, options: EvaluateOptions | None, deprecated: dict[str, Any]
) -> tuple[Preprocess | PreprocessChoices | None, EvaluateOptions]:
    """``preprocess`` and ``options`` with the deprecated loose keywords folded into them (and one warning)."""
    for name in deprecated:
        if name not in DEPRECATED_KEYWORDS:
            raise TypeError(f"evaluate() got an unexpected keyword argument {name!r}")
    groups = {"preprocess": (preprocess, PreprocessChoices), "options": (options, EvaluateOptions)}
    loose = {
        group: {key: value for key, value in deprecated.items() if DEPRECATED_KEYWORDS[key] == group}
        for group in groups
    }
    for group, (given, _) in groups.items():
        if loose[group] and given is not None:
            fail(next(iter(loose[group])), f"give it in {group}=, not beside it")
    if deprecated:
        replacement = "; ".join(
            f"{group}={groups[group][1].__name__}({', '.join(f'{key}=...' for key in keys)})"
            for group, keys in loose.items()
            if keys
        )
        warnings.warn(
            f"evaluate({', '.join(f'{key}=' for key in deprecated)}) is deprecated: give {replacement}",
            DeprecationWarning,
            stacklevel=3,
        )
    if loose["preprocess"]:
        preprocess = PreprocessChoices(**loose["preprocess"])
    return preprocess, options if options is not None else EvaluateOptions(**loose["options"])


# --------------------------------------------------------------------------- models


@dataclass
class _Model:
    label: str
    module: nn.Module
    channels: int
    preprocess: Preprocess
    record: dict[str, Any]
    output: str | None = None  # the main tensor of a structured output, by name (None: the rule of shiftlab.outputs)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _resolve_models(
    models: Any,
    *,
    weights: Sequence[str | Path | None] | None,
    seed: int,
    preprocess: Preprocess | PreprocessChoices | None,
    output: str | None = None,
) -> list[_Model]:
    """The models with their preprocessing: a spec's own (see :meth:`shiftlab.models.ModelInfo.preprocessing`),
    an ``nn.Module``'s none, with the explicit choices in place of its parts, or the whole given ``Preprocess``."""
    pairs: list[tuple[str | None, Any]]
    if isinstance(models, Mapping):
        pairs = [(str(label), model) for label, model in models.items()]
    elif isinstance(models, (str, nn.Module)):
        pairs = [(None, models)]
    else:
        pairs = [(None, model) for model in models]
    check(pairs, "models", "give at least one model")
    if weights is not None:
        weights = list(weights)
        check(
            len(weights) == len(pairs),
            "weights",
            f"give one weights file per model ({len(pairs)} model(s), {len(weights)} weights file(s))",
        )
    resolved: list[_Model] = []
    for position, (label, model) in enumerate(pairs):
        weight = weights[position] if weights is not None else None
        if isinstance(model, str):
            module, info = load_model(model, weights=weight, seed=seed)
            channels = info.in_channels
            record: dict[str, Any] = {
                **_lossless("spec", model),
                "source": info.source,
                "description": info.description,
            }
            is_file = weight is not None and Path(str(weight)).is_file()
            record["weights"] = (
                {**_lossless("file", str(weight)), "sha256": _file_digest(Path(str(weight)))}
                if is_file
                else info.weights
                if weight is not None
                else f"the spec's own: {info.weights}"
            )
            default_label = model if not is_file else f"{model} ({Path(str(weight)).name})"
            default_label = default_label if weight is None or is_file else f"{model} ({weight})"
        elif isinstance(model, nn.Module):
            check(weight is None, "weights", "apply to model specs only; load them into your nn.Module yourself")
            module, channels = model, _first_conv_channels(model)
            info = ModelInfo(type(model).__name__, "nn.Module", channels, "none", type(model).__name__)
            record = {"spec": None, "source": "nn.Module", "description": type(model).__name__}
            default_label = type(model).__name__
        else:
            fail("model", f"expected an nn.Module or a model spec string, got {describe(model)}")
        chosen, preprocessing = _preprocessing(info, preprocess)
        record["preprocessing"] = preprocessing
        record["normalize"] = chosen.normalize
        record["mean"] = list(chosen.mean) if chosen.mean else None
        record["std"] = list(chosen.std) if chosen.std else None
        record["channels"] = channels
        resolved.append(_Model(printable(label or default_label), module, channels, chosen, record, output))
    labels = [model.label for model in resolved]
    for position, model in enumerate(resolved):
        if labels.count(model.label) > 1:
            model.label = f"{model.label} #{labels[:position].count(labels[position]) + 1}"
    return resolved


def _preprocessing(info: ModelInfo, preprocess: Preprocess | PreprocessChoices | None) -> tuple[Preprocess, dict]:
    """A model's preprocessing and its record: its own, with ``PreprocessChoices`` in place, or a whole ``Preprocess``
    (at the model's channels)."""
    if preprocess is None:
        return info.preprocessing()
    if isinstance(preprocess, PreprocessChoices):
        return info.preprocessing(**{item.name: getattr(preprocess, item.name) for item in fields(preprocess)})
    check(isinstance(preprocess, Preprocess), "preprocess", f"expected a Preprocess, got {describe(preprocess)}")
    chosen = Preprocess.make(
        channels=info.in_channels,
        resize=preprocess.resize,
        crop=preprocess.crop,
        normalize="none",
        mean=preprocess.mean,
        std=preprocess.std,
        interpolation=preprocess.interpolation,
        antialias=preprocess.antialias,
        squash=preprocess.squash,
    )
    parts = ["resize", "crop", "interpolation", "normalize"]
    return chosen, {
        **chosen.describe(),
        "source": "given (a Preprocess, in place of the model's own)",
        "overridden": parts,
    }


def _lossless(key: str, name: str) -> dict[str, str]:
    """``{key: name}`` as shown (:func:`printable`), plus ``{key}_bytes`` (hex) when the name is not UTF-8."""
    raw = name_bytes(name)
    return {key: printable(name)} if raw is None else {key: printable(name), f"{key}_bytes": raw}


def _shared_geometry(entries: Sequence[_Model]) -> tuple[Resize | None, int | None]:
    """The resize and crop of every model: views are cut once, from one resized image, for all of them.

    Models without a resize or crop of their own (bundled, imported, random torchvision ones) take any; the others
    must agree (an explicit ``resize`` and ``crop`` make them agree).
    """
    own = {(entry.preprocess.resizing, entry.preprocess.crop) for entry in entries}
    own.discard((None, None))
    if len(own) > 1:
        described = "; ".join(
            f"{entry.label}: resize {entry.preprocess.resizing.describe() if entry.preprocess.resizing else 'none'},"
            f" crop {entry.preprocess.crop or 'none'}"
            for entry in entries
            if entry.preprocess.resizing is not None or entry.preprocess.crop is not None
        )
        fail(
            "models",
            f"their own preprocessing differs ({described}), and their views are cut from one resized image: "
            "give --resize, --crop (and --interpolation) to compare them on the same inputs",
        )
    return next(iter(own), (None, None))


def _model_inputs(views: torch.Tensor, model: _Model, dtype: torch.dtype) -> torch.Tensor:
    """Views in ``[0, 1]`` (the loaded channels) as this model's input: its channels, normalised, its dtype."""
    if views.shape[1] != model.channels:
        if model.channels == 3:
            views = views.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=views.dtype, device=views.device)
            views = (views * weights[None, :, None, None]).sum(dim=1, keepdim=True)
    preprocess = model.preprocess
    if preprocess.mean is not None and preprocess.std is not None:
        mean = torch.tensor(preprocess.mean, dtype=views.dtype, device=views.device)[None, :, None, None]
        std = torch.tensor(preprocess.std, dtype=views.dtype, device=views.device)[None, :, None, None]
        views = (views - mean) / std
    return views.to(dtype).contiguous()


def _forward(model: _Model, inputs: torch.Tensor, metrics: Sequence[InvarianceProtocol]) -> torch.Tensor:
    """The main tensor of the model's output (:func:`shiftlab.outputs.main_output`), checked against every metric."""
    try:
        with torch.inference_mode():
            returned = model.module(inputs)
    except ShiftlabError:
        raise
    except Exception as error:  # the user's model may raise anything
        shape = "x".join(map(str, inputs.shape))
        fail(f"model '{model.label}'", f"fails on inputs of shape {shape}: {type(error).__name__}: {first_line(error)}")
    if not named_tensors(returned):
        fail(f"model '{model.label}'", f"returns a {type(returned).__name__} that holds no tensor: nothing to measure")
    try:
        output = main_output(returned, model.output)
    except ShiftlabError as error:
        fail(f"model '{model.label}'", str(error))
    if "output" not in model.record:  # how a structured output is read, for the protocol (the first pass says)
        model.record["output"] = describe_output(returned, model.output)
    check(
        output.ndim >= 1 and output.shape[0] == inputs.shape[0],
        f"model '{model.label}'",
        f"returns {describe(output)} for {inputs.shape[0]} inputs: expected one output per input",
    )
    for metric in metrics:
        problem = metric.output_problem(output, (int(inputs.shape[-2]), int(inputs.shape[-1])))
        check(problem is None, f"model '{model.label}'", str(problem))
    return output


def _check_finite(model: _Model, outputs: torch.Tensor, images: Sequence[str], counts: Sequence[int]) -> None:
    """Refuse NaN or infinite outputs, naming the model and the first image (``counts``: its rows per image).

    Comparing NaN outputs would count every view pair as agreeing (argmax of NaN rows is 0):
    a perfect score for a broken model.
    """
    if not outputs.is_floating_point():
        return
    finite = torch.isfinite(outputs.flatten(1)).all(dim=1)
    if bool(finite.all()):
        return
    row = int(torch.nonzero(~finite)[0, 0])
    position = int(torch.searchsorted(torch.tensor(counts).cumsum(0), row, right=True))
    fail(
        f"model '{model.label}'",
        f"outputs NaN or infinity for image '{images[position]}': no score can be computed from that"
        " (check the model and its weights)",
    )


# --------------------------------------------------------------------------- the run's own state


class RunState(Accumulator):
    """Which packs are done and which images were skipped: bitmaps, combined by maximum (a union)."""

    def __init__(self, packs: int, images: int) -> None:
        super().__init__()
        self.add_state("packs_done", torch.zeros(packs, dtype=torch.uint8), reduce="max")
        self.add_state("skipped", torch.zeros(images, dtype=torch.uint8), reduce="max")


# --------------------------------------------------------------------------- the result


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured: per model and metric, with its protocol, as nested results and tidy rows.

    Attributes:
        protocol: everything that determines the numbers (data, preparation, metrics, seed, batch size, models),
            and ``loader``: how many processes decoded the images and why (which does not change them).
        models: the models' labels, in order.
        images: ``{"total", "evaluated", "skipped"}`` counts.
        skipped: ``[{"index", "name", "kind", "reason"}]`` for every image that could not be used, in index
            order: ``name`` as shown (line breaks, control characters and bytes that are not UTF-8 as
            backslash escapes), ``name_bytes`` (only for a name that is not UTF-8) its bytes in hexadecimal,
            ``kind`` the reason in short (``unreadable``, ``too small``, ``too small for <metric>``).
        results: ``{model: {metric: {...}}}``, each metric's ``compute()``.
        rows: one dict per model, metric, statistic and shift/difficulty/distance (:data:`COLUMNS`).
    """

    protocol: dict[str, Any]
    models: list[str]
    images: dict[str, int]
    skipped: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """The headline rows: those not broken down by shift, difficulty or distance (plus ImageNet-P's)."""
        return [row for row in self.rows if not row["at"] or row["metric"] == "imagenet-p"]

    def value(self, model: str, metric: str, statistic: str, at: str = "") -> float | None:
        """One number: e.g. ``result.value("resnet18", "consistency", "consistency")``."""
        for row in self.rows:
            if (row["model"], row["metric"], row["statistic"], row["at"]) == (model, metric, statistic, at):
                return row["value"]
        fail("value", f"no row for model {model!r}, metric {metric!r}, statistic {statistic!r}, at {at!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "models": self.models,
            "images": self.images,
            "skipped": self.skipped,
            "results": self.results,
            "rows": self.rows,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Everything as JSON (None for undefined numbers); written to ``path`` (atomically) when given."""
        text = json_text(self.to_dict())
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """The tidy rows as CSV text; written to ``path`` (atomically) when given."""
        text = csv_text(({key: row[key] for key in COLUMNS} for row in self.rows), COLUMNS)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_pandas(self) -> Any:
        """The tidy rows as a ``pandas.DataFrame`` (the columns of :data:`COLUMNS`).

        Raises:
            ShiftlabError: pandas is not installed (``pip install pandas``).
        """
        return data_frame(self.rows, COLUMNS, "EvaluationResult.to_pandas()")

    def _repr_html_(self) -> str:
        """The headline rows as an HTML table, for Jupyter (see :mod:`shiftlab.report.notebook`)."""
        from shiftlab.report.notebook import evaluation_html

        return evaluation_html(self)

    def plot_consistency(self, metric: str | None = None, **kwargs: Any):
        """Consistency against the distance between the two views' shifts (dense: the shift's length), per model."""
        from shiftlab.report.invariance_figures import show_consistency_by_distance

        return show_consistency_by_distance(self, metric=metric, **kwargs)

    def plot_dense_positions(self, **kwargs: Any):
        """Where dense-consistency's predicted classes change, by position in the map, one panel per model."""
        from shiftlab.report.invariance_figures import show_dense_positions

        return show_dense_positions(self, **kwargs)

    def plot_sequence(self, **kwargs: Any):
        """Prediction flips along ImageNet-P's translation sequence, one line per model."""
        from shiftlab.report.invariance_figures import show_sequence_flips

        return show_sequence_flips(self, **kwargs)

    def plot_shift_accuracy(self, **kwargs: Any):
        """Accuracy for every shift of the grid, one heat map per model."""
        from shiftlab.report.invariance_figures import show_shift_accuracy

        return show_shift_accuracy(self, **kwargs)


# --------------------------------------------------------------------------- evaluate


def _resolve_metrics(metrics: Any) -> list[InvarianceProtocol] | MetricChoice:
    """The metrics, made; or a :class:`MetricChoice` (``"auto"`` is one), made once the resize and crop are known."""
    if isinstance(metrics, str) and metrics == AUTO:
        metrics = MetricChoice(AUTO)
    if isinstance(metrics, MetricChoice):
        return metrics
    if isinstance(metrics, (str, InvarianceProtocol)):
        metrics = [metrics]
    resolved = [make_protocol(item) if isinstance(item, str) else item for item in metrics]
    for item in resolved:
        check(
            isinstance(item, InvarianceProtocol),
            "metrics",
            f"expected metric names ({', '.join(METRIC_NAMES)}) or InvarianceProtocol objects",
        )
    check(resolved, "metrics", f"give at least one of {', '.join(METRIC_NAMES)}")
    names = [item.name for item in resolved]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    check(not duplicates, "metrics", f"name {', '.join(duplicates)} twice")
    return resolved


def _first_difference(stored: Any, current: Any) -> str | None:
    """The shallowest setting that differs, as ``"path: <there> there, <here> here"`` (``None``: they agree)."""
    level: list[tuple[str, Any, Any]] = [("", stored, current)]
    while level:
        deeper = []
        for path, there, here in level:
            if isinstance(there, dict) and isinstance(here, dict):
                for key in list(here) + [key for key in there if key not in here]:
                    if key not in there or key not in here:
                        return f"{path}{key} is {'new' if key not in there else 'missing'} here"
                    deeper.append((f"{path}{key}.", there[key], here[key]))
            elif there != here:
                return f"{path.rstrip('.')}: {json.dumps(there)} there, {json.dumps(here)} here"
        level = deeper
    return None


def _pack_ranges(count: int, per_pack: int) -> list[tuple[int, int]]:
    return [(start, min(count, start + per_pack)) for start in range(0, count, per_pack)]


@dataclass
class _Run:
    """Everything one process needs while it runs."""

    images: ImageSet
    metrics: list[InvarianceProtocol]
    models: list[_Model]
    crop: int | None
    seed: int
    batch_size: int
    dtype: torch.dtype
    processes: Processes
    run: RunState
    states: dict[tuple[str, str], Metric]
    reasons: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (kind, reason)
    saved: bool = False  # whether the checkpoint holds this run's counts (written, or resumed from)


def evaluate(
    models: Any,
    data: Any,
    *,
    metrics: Any = ("consistency",),
    preprocess: Preprocess | PreprocessChoices | None = None,
    options: EvaluateOptions | None = None,
    weights: Sequence[str | Path | None] | None = None,
    classes: str | Sequence[str] | None = None,
    output: str | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    **deprecated: Any,
) -> EvaluationResult:
    """Measure how the predictions of one or more models change under translation, over a whole data set.

    Args:
        models: an ``nn.Module`` or a model spec (see :func:`shiftlab.load_model`), a list of them,
            or a dict ``{label: model}``.
        data: a folder, a list file, a bundled data set's name, a tensor ``(N, C, H, W)`` in ``[0, 1]``,
            a pair ``(images, labels)``, or an :class:`~shiftlab.invariance.datasets.ImageSet`
            (see :func:`shiftlab.invariance.datasets.open_images`).
        metrics: names from :data:`shiftlab.invariance.catalog.METRIC_NAMES` or
            :class:`~shiftlab.invariance.protocols.InvarianceProtocol` objects (for their options); or ``"auto"``
            or a :class:`~shiftlab.invariance.catalog.MetricChoice`, made once the run's resize and crop (the
            models' own, by default) are known: ``protocol["chosen_by_auto"]`` says what was chosen and why.
        preprocess: how images become model inputs. ``None``: each model's own (a pretrained model's
            preprocessing, ImageNet's normalisation for a torchvision architecture, else the images as they are;
            see :meth:`shiftlab.models.ModelInfo.preprocessing`). A :class:`~shiftlab.data.Preprocess`
            (``Preprocess.make(resize=256, crop=224, normalize="imagenet")``): the whole preprocessing of every
            model, its resize, centre crop, interpolation and normalisation (each model keeps its channels). A
            :class:`PreprocessChoices`: some parts in place of each model's own. Views are cut from one resized
            image for all models, so models whose own resize or crop differ need an explicit one; the crop is the
            model input (without one, the whole image).
        options: how the run goes (:class:`EvaluateOptions`: seed, batch size, loader workers, device, dtype,
            checkpoint, resume, progress bar); ``None``: the defaults.
        weights: one weights file, torchvision weights name or ``"random"`` (or None) per model spec.
        classes: class names in index order (``"a,b"``, a list, or a file); default: sorted folder names.
        output: the name of the main tensor of structured outputs (see :mod:`shiftlab.outputs`); default: the
            rule (``logits``, ``out``, else the first tensor).
        on_skip: called with ``(name, reason)`` for every image that cannot be used.
        deprecated: ``resize``, ``crop``, ``normalize`` (now in ``preprocess``), ``batch_size``, ``workers``,
            ``device``, ``checkpoint`` (now in ``options``): still accepted, with a DeprecationWarning.

    Returns:
        An :class:`EvaluationResult`; in every process of a torchrun group, the same.

    Raises:
        ShiftlabError: bad data, models, metrics or settings (checked before anything is written);
            a model that outputs NaN or infinity (naming the first image); a run in which no image
            could be evaluated (naming the first reason); a checkpoint to resume that is damaged,
            inconsistent or made with other settings.

    Example:
        >>> from shiftlab.models import SimpleCNN
        >>> images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> model = SimpleCNN(padding_mode="circular", strided=False).eval()
        >>> result = evaluate(model, images, metrics="consistency")
        >>> result.value("SimpleCNN", "consistency", "consistency")
        1.0
    """
    preprocess, options = _grouped(preprocess, options, deprecated)
    check(isinstance(options, EvaluateOptions), "options", f"expected EvaluateOptions, got {describe(options)}")
    seed = check_int(options.seed, "seed", minimum=0)
    batch_size = check_int(options.batch_size, "batch size", minimum=1)
    workers = options.workers
    if isinstance(workers, str):
        check(workers == "auto", "workers", f"expected a number of processes or 'auto', got {workers!r}")
    else:
        workers = check_int(workers, "workers", minimum=0)
    checkpoint_every = check_int(options.checkpoint_every, "checkpoint every", minimum=1)
    check(
        not options.resume or options.checkpoint is not None,
        "resume",
        "needs the checkpoint file of the run to continue",
    )
    target, precision = resolve_device(options.device), resolve_dtype(options.dtype)
    chosen = _resolve_metrics(metrics)
    image_set = data if isinstance(data, ImageSet) else open_images(data, classes=classes)
    entries = _resolve_models(models, weights=weights, seed=seed, preprocess=preprocess, output=output)
    resizing, crop = _shared_geometry(entries)
    resize = resizing.size if resizing is not None else None
    reasons: list[str] = []
    if isinstance(chosen, MetricChoice):  # made now: an auto choice reads the models' own resize and crop
        metric_list = chosen.protocols(resize, crop, labelled=image_set.labels is not None)
        reasons = chosen.reasons(resize, crop)
    else:
        metric_list = chosen
    for entry in entries:  # a model without a resize or crop of its own gets the shared ones: its record says so
        if (entry.preprocess.resizing, entry.preprocess.crop) != (resizing, crop):
            entry.record["preprocessing"].update(
                resize=resizing.describe() if resizing else "none",
                crop=f"{crop}x{crop} centre" if crop else "none",
                source=entry.record["preprocessing"]["source"] + "; resize and crop shared with the other models",
            )
    for metric in metric_list:
        check(
            not metric.needs_labels or image_set.labels is not None,
            f"metric {metric.name}",
            f"needs labels, and the data has none ({image_set.description})",
        )
        check(
            crop is not None or not metric.needs_margin,
            f"metric {metric.name}",
            "cuts windows around the model input, and without a crop the input is the whole image:"
            " give a crop smaller than the images (e.g. --resize 256 --crop 224)",
        )
    if resize is not None:
        smallest = Geometry.of(resize, resize, crop)
        for metric in metric_list:
            problem = metric.problem(smallest)
            check(problem is None, f"metric {metric.name}", f"{problem} (--resize {resize}, --crop {crop})")
    base_channels = 3 if any(entry.channels == 3 for entry in entries) else 1
    dataset = EvaluationDataset(image_set, channels=base_channels, resize=resizing)

    validated = {"seed": seed, "batch_size": batch_size, "workers": workers, "checkpoint_every": checkpoint_every}
    given = {item.name: getattr(options, item.name) for item in fields(options)}
    settings = _Settings(
        **{**given, **validated}, resize=resizing, crop=crop, precision=precision, chosen_by_auto=tuple(reasons)
    )
    with eval_mode(*(entry.module for entry in entries)), process_group(target) as processes:
        return _evaluate(entries, image_set, dataset, metric_list, settings, processes, on_skip)  # flags restored


@dataclass(frozen=True)
class _Settings(EvaluateOptions):
    """The run's options, validated, and what :func:`evaluate` resolved: the shared resize and crop, the precision."""

    resize: Resize | None = None
    crop: int | None = None
    precision: torch.dtype = torch.float32
    chosen_by_auto: tuple[str, ...] = ()  # what metrics="auto" and diagonal mode auto chose, and why


def _evaluate(
    entries: list[_Model],
    image_set: ImageSet,
    dataset: EvaluationDataset,
    metrics: list[InvarianceProtocol],
    settings: _Settings,
    processes: Processes,
    on_skip: Callable[[str, str], None] | None,
) -> EvaluationResult:
    """The run itself, inside the process group (see :func:`evaluate`)."""
    for entry in entries:
        entry.module.to(device=processes.device, dtype=settings.precision).eval()
    classes_out = _check_models(entries, dataset, metrics, settings.crop, processes.device, settings.precision)
    per_pack = max(1, settings.batch_size // sum(metric.max_views() for metric in metrics))
    packs = _pack_ranges(len(image_set), per_pack)
    protocol = _protocol(image_set, entries, metrics, settings, per_pack, processes)
    states = {
        (entry.label, metric.name): metric.metric(classes_out[entry.label]) for entry in entries for metric in metrics
    }
    run = RunState(len(packs), len(image_set))
    checkpoint = Path(settings.checkpoint) if settings.checkpoint is not None else None
    if settings.resume and checkpoint is not None:
        _load_checkpoint(checkpoint, protocol, run, states, processes, packs)
    if settings.workers == "auto":  # not part of the protocol: the number of decoders never changes a result
        count = math.ceil(len(image_set) / processes.world)
        workers, reason = choose_workers(image_set, count, processes.device)
        loader = {"workers": workers, "chosen": f"auto: {reason}"}
    else:
        workers, loader = int(settings.workers), {"workers": int(settings.workers), "chosen": "given"}
    context = _Run(
        image_set,
        metrics,
        entries,
        settings.crop,
        settings.seed,
        settings.batch_size,
        settings.precision,
        processes,
        run,
        states,
    )
    context.saved = settings.resume
    try:
        _loop(
            context,
            dataset,
            packs,
            workers,
            checkpoint,
            settings.checkpoint_every,
            protocol,
            settings.progress,
            on_skip,
        )
    except BaseException as error:  # interrupted or failed: say where the work done so far is
        if checkpoint is not None and context.saved and processes.main:
            note = (
                f"the counts so far are kept in '{printable(checkpoint)}': the same run with --resume"
                " (resume=True) continues from there"
            )
            add_note(error, note)
        raise
    run.all_reduce()
    for state in states.values():
        state.all_reduce()
    if checkpoint is not None and processes.main:
        _write_checkpoint(checkpoint, protocol, run, states)
        _partial_path(checkpoint).unlink(missing_ok=True)
    reasons: dict[int, tuple[str, str]] = {}
    for part in gather_objects(context.reasons, processes.world):
        reasons.update(part)
    result = _result(context, dataset, protocol, reasons)
    if result.images["total"] and not result.images["evaluated"]:  # every number would be n/a
        fail(
            "data",
            f"no image could be evaluated (all {result.images['total']} skipped);"
            f" the first: {result.skipped[0]['reason']}",
        )
    result.protocol = {**result.protocol, "loader": loader}  # a new dict: the checkpoint's settings stay as they were
    return result


def _check_models(
    entries: list[_Model],
    dataset: EvaluationDataset,
    metrics: list[InvarianceProtocol],
    crop: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, int]:
    """Run every model once on the first image that loads: its output must suit the metrics and the classes."""
    sample, sample_name = None, ""
    for index in range(min(len(dataset), 16)):
        try:
            sample = dataset.load(index)
            geometry = Geometry.of(sample.shape[-2], sample.shape[-1], crop)
            sample, sample_name = build_view(sample, ("identity",), geometry), dataset.images.name(index)
            break
        except ShiftlabError:
            sample = None
    if sample is None and crop is not None:
        sample, sample_name = torch.zeros(dataset.channels, crop, crop), f"(a black {crop}x{crop} test input)"
    images = dataset.images
    outputs: dict[str, int] = {}
    for entry in entries:
        if sample is None:
            outputs[entry.label] = 0
            continue
        output = _forward(entry, _model_inputs(sample[None].to(device), entry, dtype), metrics)
        _check_finite(entry, output, [sample_name], [1])
        classes = int(output.shape[1]) if output.ndim in (2, 4) else 0  # logits, or per-pixel class scores
        outputs[entry.label] = classes
        if not any(metric.needs_labels for metric in metrics):
            continue  # labels only matter to the metrics that use them (the command line says they are ignored)
        if images.classes is not None:
            names = ", ".join(images.classes[:5]) + (", ..." if len(images.classes) > 5 else "")
            check(
                len(images.classes) == classes,
                "classes",
                f"the data has {len(images.classes)} classes ({names}),"
                f" but model '{entry.label}' gives {classes} outputs",
            )
        if images.labels is not None:
            largest = max(images.labels)
            check(
                largest < classes,
                "labels",
                f"class index {largest} is out of range for model '{entry.label}' with {classes} outputs",
            )
    return outputs


def _protocol(
    images: ImageSet,
    entries: list[_Model],
    metrics: list[InvarianceProtocol],
    settings: _Settings,
    per_pack: int,
    processes: Processes,
) -> dict[str, Any]:
    resize, crop = settings.resize, settings.crop
    return to_jsonable(
        {
            "data": {
                "description": images.description,
                "images": len(images),
                "classes": list(images.classes) if images.classes else None,
                "labels": images.labels is not None,
                "labels_used": images.labels is not None and any(metric.needs_labels for metric in metrics),
                "fingerprint": images.fingerprint(),
            },
            "preparation": {
                "resize": resize.describe() if resize else "none",
                "model_input": f"centre {crop}x{crop} window" if crop else "the whole image",
                "loaded_channels": 3 if any(entry.channels == 3 for entry in entries) else 1,
            },
            "metrics": {metric.name: metric.describe() for metric in metrics},
            **({"chosen_by_auto": list(settings.chosen_by_auto)} if settings.chosen_by_auto else {}),
            "seed": settings.seed,
            "seeding": (
                "each image's shifts from torch.Generator seeded with"
                " splitmix64(splitmix64(splitmix64(seed) ^ crc32(metric name)) ^ image index)"
            ),
            "batch_size": settings.batch_size,
            "images_per_pack": per_pack,
            "device": processes.device.type,
            "dtype": settings.dtype,
            "models": {entry.label: entry.record for entry in entries},
        }
    )


# --------------------------------------------------------------------------- the loop


def _loop(
    context: _Run,
    dataset: EvaluationDataset,
    packs: list[tuple[int, int]],
    workers: int,
    checkpoint: str | Path | None,
    every: int,
    protocol: dict[str, Any],
    progress: bool | None,
    on_skip: Callable[[str, str], None] | None,
) -> None:
    from tqdm.auto import tqdm

    processes = context.processes
    done = context.run.packs_done
    remaining = [index for index in range(len(packs)) if not done[index]]
    mine = shard(remaining, processes.rank, processes.world)
    steps = math.ceil(len(remaining) / processes.world)  # every process takes part in every checkpoint
    batches = [list(range(*packs[index])) for index in mine]
    total = sum(len(batch) for batch in batches)
    bar = tqdm(
        total=total,
        desc="evaluate",
        unit="img",
        file=sys.stderr,
        disable=True if progress is False or not processes.main else (None if progress is None else False),
        leave=False,
        dynamic_ncols=True,
    )
    loader = load_batches(dataset, batches, workers=workers) if batches else iter(())
    try:
        for step in range(steps):
            if step < len(mine):
                items: list[LoadedImage] = next(loader)
                _process_pack(context, items, on_skip)
                context.run.packs_done[mine[step]] = 1
                bar.update(len(items))
            if checkpoint is not None and (step + 1) % every == 0 and step + 1 < steps:
                _checkpoint_now(context, Path(checkpoint), protocol)
    finally:
        bar.close()


@dataclass
class _Prepared:
    """One usable image of a pack: its pixels, geometry, distinct views, and each metric's views among them."""

    index: int
    label: int
    image: torch.Tensor
    geometry: Geometry
    keys: list[ViewKey]
    slots: list[list[int]]  # per metric: positions in ``keys``
    infos: list[torch.Tensor | None]  # per metric: what its state needs about the draws


def _prepare(context: _Run, item: LoadedImage) -> _Prepared | tuple[str, str]:
    """The views every metric needs for one image, or why the image cannot be used: ``(kind, reason)``."""
    name = context.images.name(item.index)
    if item.image is None:
        return item.kind or UNREADABLE, item.reason or f"image '{name}': could not be read"
    height, width = item.image.shape[-2:]
    crop = context.crop
    if crop is not None and (crop > height or crop > width):
        return TOO_SMALL, f"image '{name}': is {height}x{width}, smaller than the {crop}x{crop} crop"
    geometry = Geometry.of(height, width, crop)
    for metric in context.metrics:
        problem = metric.problem(geometry)
        if problem is not None:
            return f"too small for {metric.name}", f"image '{name}': too small for {metric.name}: {problem}"
    unique: dict[ViewKey, int] = {}
    slots: list[list[int]] = []
    infos: list[torch.Tensor | None] = []
    for metric in context.metrics:
        generator = torch.Generator().manual_seed(sample_seed(context.seed, metric.stream, item.index))
        keys, info = metric.views(geometry, generator)
        slots.append([unique.setdefault(view_key(key, geometry), len(unique)) for key in keys])
        infos.append(info)
    return _Prepared(item.index, item.label, item.image, geometry, list(unique), slots, infos)


def _process_pack(context: _Run, items: list[LoadedImage], on_skip: Callable[[str, str], None] | None) -> None:
    """Cut every view of the pack's images, run each model on them, and update every metric's state."""
    prepared: list[_Prepared] = []
    for item in items:
        outcome = _prepare(context, item)
        if isinstance(outcome, tuple):
            context.run.skipped[item.index] = 1
            context.reasons[item.index] = outcome
            if on_skip is not None:
                on_skip(context.images.name(item.index), outcome[1])
        else:
            prepared.append(outcome)
    if not prepared:
        return
    device = context.processes.device
    bases = [record.image.to(device, non_blocking=True) for record in prepared]
    # images of one size share forward passes: their views in image order, at most batch_size per pass
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, record in enumerate(prepared):
        groups.setdefault((record.image.shape[0], *record.geometry.size), []).append(position)
    for entry in context.models:
        for positions in groups.values():
            views = [
                build_view(bases[position], key, prepared[position].geometry)
                for position in positions
                for key in prepared[position].keys
            ]
            passes = []
            for start in range(0, len(views), context.batch_size):
                chunk = torch.stack(views[start : start + context.batch_size])
                passes.append(_forward(entry, _model_inputs(chunk, entry, context.dtype), context.metrics))
            counts = [len(prepared[position].keys) for position in positions]
            output = torch.cat(passes)
            _check_finite(
                entry, output, [context.images.name(prepared[position].index) for position in positions], counts
            )
            outputs = torch.split(output, counts)
            # every state is a sum (or a minimum): updating image group by group gives the same counts, and the
            # outputs of one group share a shape (a spatial output's size follows the image's without a crop)
            records = [prepared[position] for position in positions]
            labels = torch.tensor([record.label for record in records], dtype=torch.int64)
            for number, metric in enumerate(context.metrics):
                gathered = torch.stack([output[record.slots[number]] for output, record in zip(outputs, records)])
                if gathered.dtype in (torch.float16, torch.bfloat16):
                    gathered = gathered.float()  # exact; ranking and softmax in full precision
                parts = [record.infos[number] for record in records]
                infos = torch.stack([part for part in parts if part is not None]) if parts[0] is not None else None
                context.states[(entry.label, metric.name)].update(gathered, labels, infos)


# --------------------------------------------------------------------------- checkpoints


def _partial_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".partial.json")


def _clone_reduced(context: _Run) -> tuple[RunState, dict[tuple[str, str], Metric]]:
    """Copies of the states combined over every process (a collective: every process calls it)."""
    run = context.run.clone().all_reduce()
    states = {key: state.clone().all_reduce() for key, state in context.states.items()}
    return run, states


def _checkpoint_now(context: _Run, path: Path, protocol: dict[str, Any]) -> None:
    context.saved = True
    if context.processes.world > 1:
        run, states = _clone_reduced(context)
    else:
        run, states = context.run, context.states
    if context.processes.main:
        _write_checkpoint(path, protocol, run, states)
        partial = {
            "complete": False,
            "packs_done": int(run.packs_done.sum()),
            "packs": int(run.packs_done.numel()),
            "results": {f"{model} | {metric}": state.compute() for (model, metric), state in states.items()},
        }
        atomic_write_text(_partial_path(path), json_text(partial))


def _checksum(settings: str, run: Mapping[str, torch.Tensor], states: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """SHA-256 over a checkpoint's settings and every state's name, dtype, shape and bytes, in a fixed order."""
    digest = hashlib.sha256(settings.encode("utf-8", "surrogateescape"))
    for owner, tensors in [("run", run), *sorted(states.items())]:
        for name, tensor in sorted(tensors.items()):
            values = tensor.detach().cpu().contiguous()
            header = f"\0{owner}\0{name}\0{values.dtype}\0{tuple(values.shape)}\0"
            digest.update(header.encode("utf-8", "surrogateescape"))
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _write_checkpoint(
    path: Path, protocol: dict[str, Any], run: RunState, states: Mapping[tuple[str, str], Metric]
) -> None:
    settings = json.dumps(protocol, sort_keys=True)
    run_state = run.state_dict()
    metric_states = {f"{model}\n{metric}": state.state_dict() for (model, metric), state in states.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "settings": settings,
        "run": run_state,
        "states": metric_states,
        "checksum": _checksum(settings, run_state, metric_states),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)  # only now: bad input found before the run writes nothing
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(
    path: Path,
    protocol: dict[str, Any],
    run: RunState,
    states: Mapping[tuple[str, str], Metric],
    processes: Processes,
    packs: Sequence[tuple[int, int]],
) -> None:
    """Continue from ``path``: refused unless it is intact (checksum), made with these settings, and consistent
    (the images of the packs it marks done, less those it skipped, are exactly what every count covers)."""
    subject = "--resume"
    foreign = f"is not a shiftlab evaluate checkpoint of this version ({CHECKPOINT_FORMAT}); start a new run"
    payload = read_checkpoint(path, CHECKPOINT_FORMAT, foreign)
    damaged = f"'{path}' is damaged: its contents do not match their checksum; start a new run instead"
    try:
        settings, run_state, metric_states = payload["settings"], payload["run"], payload["states"]
        intact = payload["checksum"] == _checksum(settings, run_state, metric_states)
    except Exception:  # missing or mistyped fields: not what _write_checkpoint wrote
        intact = False
    check(intact, subject, damaged)
    stored = json.loads(settings)
    current = json.loads(json.dumps(protocol))  # the protocol's own order: the first difference reads best
    difference = _first_difference(stored, current)
    check(difference is None, subject, f"'{path}' was made with other settings ({difference}); start a new run instead")
    fresh = {"run": run.state_dict()} | {f"{m}\n{n}": state.state_dict() for (m, n), state in states.items()}
    found = {"run": run_state} | dict(metric_states)
    for key, state_dict in fresh.items():
        check(
            _same_layout(state_dict, found.get(key)),
            subject,
            f"'{path}' does not hold the states these settings need; start a new run instead",
        )
    loaded_run = run.clone().load_state_dict(run_state)
    done, skipped = loaded_run.packs_done.to(torch.int64), loaded_run.skipped.to(torch.int64)
    flags_valid = bool(((done == 0) | (done == 1)).all() and ((skipped == 0) | (skipped == 1)).all())
    covered = torch.zeros_like(skipped)
    for number, (start, stop) in enumerate(packs):
        covered[start:stop] = done[number]
    expected = int((covered * (1 - skipped)).sum())
    check(
        flags_valid and bool((skipped <= covered).all()),
        subject,
        f"'{path}' is inconsistent: it marks images skipped in packs it does not mark done; start a new run instead",
    )
    for (model, metric), state in states.items():
        counted = state.clone().load_state_dict(metric_states[f"{model}\n{metric}"]).count()
        check(
            counted == expected,
            subject,
            f"'{path}' is inconsistent: its packs done hold {expected} usable image(s), but the counts of"
            f" model '{model}', metric {metric} cover {counted}; start a new run instead",
        )
    run.load_state_dict(run_state)
    if processes.main:  # the counts so far enter once, through the main process
        for (model, metric), state in states.items():
            state.load_state_dict(metric_states[f"{model}\n{metric}"])


def _same_layout(expected: Mapping[str, torch.Tensor], found: Any) -> bool:
    """Whether ``found`` has the states of ``expected``: the same names, dtypes and shapes."""
    if not isinstance(found, dict) or set(found) != set(expected):
        return False
    return all(
        isinstance(found[name], torch.Tensor)
        and found[name].dtype == tensor.dtype
        and found[name].shape == tensor.shape
        for name, tensor in expected.items()
    )


# --------------------------------------------------------------------------- the result


def _result(
    context: _Run, dataset: EvaluationDataset, protocol: dict[str, Any], reasons: dict[int, tuple[str, str]]
) -> EvaluationResult:
    images = context.images
    skipped_indices = torch.nonzero(context.run.skipped).flatten().tolist()
    skipped = []
    for index in skipped_indices:
        kind_reason = reasons.get(index)
        if kind_reason is None:  # skipped before a resume: the reason is found again
            outcome = _prepare(context, dataset[index])
            kind_reason = (
                outcome
                if isinstance(outcome, tuple)
                else ("skipped earlier", "was skipped in the interrupted part of the run (it can be used now)")
            )
        kind, reason = kind_reason
        item: dict[str, Any] = {"index": index, "name": images.name(index)}
        raw = images.name_bytes(index)
        if raw is not None:
            item["name_bytes"] = raw
        skipped.append({**item, "kind": kind, "reason": reason})
    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for entry in context.models:
        results[entry.label] = {}
        for metric in context.metrics:
            state = context.states[(entry.label, metric.name)]
            results[entry.label][metric.name] = state.compute()
            rows += [{"model": entry.label, "metric": metric.name, **row} for row in state.rows()]
    counts = {"total": len(images), "evaluated": len(images) - len(skipped), "skipped": len(skipped)}
    return EvaluationResult(protocol, [entry.label for entry in context.models], counts, skipped, results, rows)
