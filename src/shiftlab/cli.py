"""The ``shiftlab`` command: parses arguments, calls the Python API, prints where the results are.

Bad input of any kind ends with one line on stderr, ``shiftlab: error: ...``,
and exit status 2; output is staged and moved into place only when a command
succeeds, so a failed run leaves no half-written files. The output folder is
checked and locked before any work (:func:`shiftlab._io.claim_output_folder`),
so that what cannot be written is refused first and two runs never share it.
Ctrl-C ends with one line and status 130. Anything else is a bug in shiftlab:
its traceback is printed with a line that says so, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from shiftlab._command import EXIT_INTERRUPTED, interrupted_imports, interrupts_held

with interrupted_imports():  # Ctrl-C while the command starts: one line, status 130
    from shiftlab import __version__
    from shiftlab._format import printable
    from shiftlab.errors import InternalError, ShiftlabError, fail, first_line

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1
#: A probe of at least this many images x shifts announces its forward passes on stderr before the first one.
LONG_PROBE_INPUTS = 1000


def _progress(total: int, description: str):
    """A tqdm progress bar on stderr, silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", file=sys.stderr, disable=None, leave=False)


def _default_out(command: str) -> Path:
    return Path("shiftlab-out") / command


def _save_figure(figure, folder: Path, stem: str, fmt: str) -> Path:
    path = folder / f"{stem}.{fmt}"
    figure.savefig(path, dpi=120)
    return path


def _print_written(out: Path, staged: list[Path]) -> None:
    """Where each staged file ended up (staged files are moved into ``out`` under the same name)."""
    for path in staged:
        print(f"wrote {printable(Path(out) / path.name)}")


def _image_stem(source: str) -> str:
    return Path(source).stem or "image"


# --------------------------------------------------------------------------- commands


def run_edges(args: argparse.Namespace) -> int:
    import numpy as np

    from shiftlab._io import staged_directory
    from shiftlab.images import load_image
    from shiftlab.ops import convolve
    from shiftlab.report.figures import show_feature_map

    image = load_image(args.image)
    edges = convolve(image, args.kernel, padding=args.padding, relu=not args.no_relu)
    stem = f"{_image_stem(args.image)}_edges"
    with staged_directory(args.out) as staging:
        figure = show_feature_map(
            image,
            edges,
            titles=(Path(args.image).name, f"{Path(str(args.kernel)).name}{'' if args.no_relu else ' + ReLU'}"),
        )
        written = [_save_figure(figure, staging, stem, args.format)]
        np.save(staging / f"{stem}.npy", edges)
        written.append(staging / f"{stem}.npy")
    print(
        f"{printable(args.image)}: {image.shape[0]}x{image.shape[1]} -> edge map {edges.shape[0]}x{edges.shape[1]}"
        f" (min {edges.min():.4g}, max {edges.max():.4g})"
    )
    _print_written(args.out, written)
    return 0


def run_pool(args: argparse.Namespace) -> int:
    import numpy as np

    from shiftlab._io import staged_directory
    from shiftlab.images import load_image
    from shiftlab.ops import convolve, pool_pyramid
    from shiftlab.report.figures import show_pyramid

    image = load_image(args.image)
    if args.edges:
        image = convolve(image, args.edges)
    levels = pool_pyramid(image, args.iterations, args.kernel_size)
    stem = f"{_image_stem(args.image)}_pyramid"
    with staged_directory(args.out) as staging:
        figure = show_pyramid(
            levels,
            title=f"{Path(args.image).name}: {args.iterations} poolings of {args.kernel_size}x{args.kernel_size}",
        )
        written = [_save_figure(figure, staging, stem, args.format)]
        np.savez(staging / f"{stem}.npz", **{f"level{index}": level for index, level in enumerate(levels)})
        written.append(staging / f"{stem}.npz")
    for index, level in enumerate(levels):
        print(f"level {index}: {level.shape[0]} x {level.shape[1]}")
    _print_written(args.out, written)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from shiftlab._io import staged_directory
    from shiftlab.experiments.article import article_sections, run_article
    from shiftlab.experiments.evaluation import demo_evaluation_sections
    from shiftlab.experiments.probing import demo_probe_sections
    from shiftlab.experiments.variants import demo_variants_sections
    from shiftlab.report.html import write_report

    with _progress(6, "demo") as bar:
        bar.set_postfix_str("article experiments")
        results = run_article()
        bar.update()
        bar.set_postfix_str("figures")
        sections = article_sections(results)
        bar.update()
        bar.set_postfix_str("probing bundled networks")
        sections += demo_probe_sections()
        bar.update()
        bar.set_postfix_str("evaluating the digit classifier")
        sections += demo_evaluation_sections()
        bar.update()
        bar.set_postfix_str("BlurPool and APS variants")
        sections += demo_variants_sections()
        bar.update()
        bar.set_postfix_str("report")
        with staged_directory(args.out) as staging:
            html, _ = write_report(
                sections,
                staging,
                title="shiftlab demo: translation, convolution and pooling",
                summary=DEMO_SUMMARY,
                protocol={"images": "bundled samples (no download)", "kernel": results.kernel},
            )
        bar.update()
    report = Path(args.out) / html.name
    failed = [finding for section in sections for finding in section.findings if finding.holds is False]
    print(f"report: {printable(report.resolve())}")
    print(f"numbers: {printable((Path(args.out) / 'results.json').resolve())}")
    if failed:
        print(f"{len(failed)} finding(s) did not hold; see the report.")
    return 0


DEMO_SUMMARY = (
    "Convolution commutes with translation; pooling is said to make features invariant to it. "
    "This report reruns every experiment of the classic tutorial on these ideas, on images bundled with shiftlab, "
    "and measures what its pictures only suggest. "
    "Each claim is checked against a number: a green mark means it holds, a red one that it does not."
)


def run_probe(args: argparse.Namespace) -> int:
    from shiftlab._io import staged_directory
    from shiftlab.experiments.probing import ExploreOptions, ModelOptions, probe_section
    from shiftlab.experiments.probing import run_probe as probe_model
    from shiftlab.report.html import write_report
    from shiftlab.shifts import parse_shifts

    for option, value in (("--explore-layers", args.explore_layers), ("--explore-channels", args.explore_channels)):
        if value is not None and not args.explore:
            fail(option, "only applies with --explore (add --explore, or leave the option out)")
    shifts = parse_shifts(args.shifts)
    with _progress(1, "probe") as bar:

        def progress(done: int, total: int | None) -> None:
            if done == 0 and len(args.images) * len(shifts) >= LONG_PROBE_INPUTS:  # before the first pass
                passes = "an unknown number of" if total is None else f"{total:,}"
                bar.write(
                    f"probe: {passes} forward passes of up to {args.batch_size} inputs ({len(args.images)} image(s) x "
                    f"{len(shifts):,} shifts); this takes a while",
                    file=sys.stderr,
                )
            bar.total = total
            bar.n = done
            bar.refresh()

        options = ModelOptions(
            weights=args.weights,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            size=args.size,
            normalize=args.normalize,
            interpolation=args.interpolation,
            batch_size=args.batch_size,
            output=args.output,
        )
        explore = None
        if args.explore:
            shown = [name.strip() for name in (args.explore_layers or "").split(",") if name.strip()] or None
            explore = ExploreOptions(shown, 4 if args.explore_channels is None else args.explore_channels)
        result, info, explorer = probe_model(
            args.model,
            args.images,
            shifts=shifts,
            mode=args.mode,
            layers=args.layers,
            layouts=args.layout,
            strides=args.stride,
            options=options,
            explore=explore,
            progress=progress,
        )
        explorers = [] if explorer is None else [(f"Move the input through {printable(args.model)}", explorer)]
        section = probe_section(
            result,
            key="probe",
            title=f"Translation equivariance of {printable(args.model)}, layer by layer",
            intro=f"{info.description}. Each watched layer's output for every shifted input is compared with its "
            "output for the original input, moved by the shift divided by the layer's cumulative stride.",
            heatmap_layers=[name.strip() for name in args.heatmap_layers.split(",")] if args.heatmap_layers else None,
            explorers=explorers,
        )
        with staged_directory(args.out) as staging:
            write_report([section], staging, title=f"shiftlab probe: {printable(args.model)}", protocol=result.protocol)
            result.to_csv(staging / "probe.csv")
            result.to_json(staging / "probe.json")
    print(f"model: {printable(info.description)}")
    print(f"preprocessing: {printable(result.protocol['preprocessing'])}")
    _print_summary(result)
    out = Path(args.out)
    report = out / "report.html"
    size = f" ({report.stat().st_size / 1e6:.1f} MB, with the explorer)" if args.explore else ""
    print(f"report: {printable(report.resolve())}{size}")
    print(
        f"table: {printable((out / 'probe.csv').resolve())} (one row per layer and shift);"
        f" {printable((out / 'probe.json').resolve())}"
    )
    return 0


def _print_summary(result) -> None:
    protocol = result.protocol
    reason = protocol.get("mode_reason", "given")
    print(f"shift mode: {protocol['mode']}" + ("" if reason == "given" else f" ({reason})"))
    headers = ["layer", "type", "layout", "stride", "mean rel L2", "max rel L2", "exact"]
    chosen = (1, 2, 3, 5, 6, 7, 8)  # of ProbeResult.SUMMARY_HEADERS; the shape and depth are in the report
    cells = [[row[index] for index in chosen] for row in result.summary_table()]
    cells = [[*row[:-1], row[-1].replace(" / ", "/")] for row in cells]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]
    left = 3  # the name columns are aligned left, the numbers right
    for row in [headers, *cells]:
        texts = [
            text.ljust(width) if index < left else text.rjust(width)
            for index, (text, width) in enumerate(zip(row, widths))
        ]
        print("  ".join(texts).rstrip())
    for layer, doubt in result.protocol.get("layout_doubts", {}).items():
        print(f"layout of {layer}: {doubt}")
    left_out = result.protocol.get("layers_left_out", {})
    if left_out:
        names = ", ".join(list(left_out)[:4]) + (f" and {len(left_out) - 4} more" if len(left_out) > 4 else "")
        why = "their outputs folding patches into the batch axis, which no layout reads"
        print(f"{len(left_out)} layer(s) left out of the default layers, {why}: {names}")
    unknown = result.unknown_layouts()
    if unknown:
        print(f"{len(unknown)} layer(s) with a layout shiftlab could not establish, and so no number:")
        for item in unknown:
            remedy = f"measure it with {item['override']}" if item["override"] else "no override can measure it"
            print(f"  {item['layer']} {tuple(item['shape'])}: {item['why']}; {remedy}")


def run_convert(args: argparse.Namespace) -> int:
    import json

    from shiftlab._io import staged_directory
    from shiftlab.errors import check, check_choice, check_int
    from shiftlab.layers.blurpool import MAX_BLUR_KERNEL_SIZE
    from shiftlab.layers.convert import METHODS, make_shift_invariant
    from shiftlab.layers.recipes import RECIPES, recipe_arguments
    from shiftlab.layers.tables import changes_to_csv
    from shiftlab.models import load_model

    recipe = check_choice(args.recipe, "--recipe", RECIPES)
    method = None if args.method is None else check_choice(args.method, "--method", METHODS)
    check(
        method is not None or recipe != "shiftlab",
        "--method",
        "give blurpool or aps (or a published --recipe, zhang2019 or chaman2021, which implies it)",
    )
    padding = None if args.padding is None else check_choice(args.padding, "--padding", ("circular",))
    recipe, method, padding = recipe_arguments(recipe, method, padding, ("--recipe", "--method", "--padding"))
    kernel_size = None
    if args.kernel_size is not None:
        kernel_size = check_int(_integer(args.kernel_size), "--kernel-size", minimum=1, maximum=MAX_BLUR_KERNEL_SIZE)
    settings = _finetune_settings(args)
    model, info = load_model(args.model, weights=args.weights, seed=args.seed)
    # fine-tuning needs the original as the teacher: the conversion then works on a copy
    converted, changes = make_shift_invariant(
        model, method, recipe=recipe, padding=padding, kernel_size=kernel_size, inplace=settings is None
    )
    suffix = "+circular" if padding and recipe == "shiftlab" else ""  # chaman2021 is circular by itself
    suffix += f"+{method}" + ("" if kernel_size is None else str(kernel_size))
    suffix += "" if recipe == "shiftlab" else f"@{recipe}"
    record = {
        "model": args.model,
        "converted_spec": f"{args.model}{suffix}",
        "recipe": recipe,
        "method": method,
        "padding": padding,
        "kernel_size": kernel_size,
        "weights": info.weights,
        "seed": args.seed if "random" in info.weights else None,
        "changes": changes,
    }
    out = Path(args.out)
    result = None
    if settings is not None:
        result = _finetune_converted(args, model, converted, info, settings)
        if result is None:
            return 0  # a torchrun process other than the first: the first one writes
        record["finetune"] = {stage: result.metrics(stage) for stage in ("original", "converted", "fine-tuned")}
    with staged_directory(out) as staging:
        if result is None:
            _save_state_dict(converted, staging / "weights.safetensors")
        else:
            _write_finetune(result, staging, record["converted_spec"])
        (staging / "changes.csv").write_text(changes_to_csv(changes), encoding="utf-8")
        (staging / "changes.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if result is not None:
        _remove_checkpoint(out / "checkpoint.pt")
    width = min(40, max(len(row["layer"]) for row in changes))
    for row in changes:
        print(f"{row['layer'][:width]:<{width}}  {row['change']:<12}  {row['before']}")
        print(f"{'':<{width}}  {'':<12}  -> {row['after']}" + (f"  ({row['note']})" if row["note"] else ""))
    print(f"{len(changes)} layer(s) changed in {printable(info.spec)}")
    if result is not None:
        _print_finetune(result, out)
    print(
        f"weights: {printable((out / 'weights.safetensors').resolve())};"
        f" table: {printable((out / 'changes.csv').resolve())}, changes.json"
    )
    print(
        f"load with: --model '{printable(record['converted_spec'])}' --weights {printable(out / 'weights.safetensors')}"
    )
    return 0


#: convert's options that apply only with --finetune: (option, attribute).
FINETUNE_ONLY = (
    ("--holdout", "holdout"),
    ("--holdout-fraction", "holdout_fraction"),
    ("--labels", "labels"),
    ("--classes", "classes"),
    ("--epochs", "epochs"),
    ("--batch-size", "batch_size"),
    ("--lr", "lr"),
    ("--momentum", "momentum"),
    ("--weight-decay", "weight_decay"),
    ("--temperature", "temperature"),
    ("--label-weight", "label_weight"),
    ("--shift-mode", "shift_mode"),
    ("--max-shift", "max_shift"),
    ("--views", "views"),
    ("--resize", "resize"),
    ("--crop", "crop"),
    ("--workers", "workers"),
    ("--checkpoint-every", "checkpoint_every"),
    ("--resume", "resume"),
    ("--normalize", "normalize"),
    ("--device", "device"),
)


def _finetune_settings(args: argparse.Namespace):
    """The fine-tuning settings from convert's options, or ``None`` without --finetune (which refuses its options)."""
    if args.finetune is None:
        options = [option for option, attribute in FINETUNE_ONLY if getattr(args, attribute) is not None]
        if options:
            fail(options[0], "only applies with --finetune DATA (add it, or leave the option out)")
        return None
    from shiftlab.finetune import FinetuneSettings

    names = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "label_weight", "shift_mode")
    given = {name: getattr(args, name) for name in (*names, "max_shift") if getattr(args, name) is not None}
    return FinetuneSettings(seed=args.seed, **given)


def _finetune_converted(args: argparse.Namespace, model, converted, info, settings):
    """Fine-tune ``converted`` with ``model`` as its teacher; ``None`` in a torchrun process that writes nothing."""
    import os

    from shiftlab.errors import check
    from shiftlab.finetune import FinetuneOptions, finetune
    from shiftlab.invariance.evaluate import PreprocessChoices

    out = Path(args.out)
    check(not out.exists() or out.is_dir(), f"output folder '{out}'", "exists and is not a folder")
    check(
        args.holdout is None or args.holdout_fraction is None,
        "--holdout-fraction",
        "applies only without --holdout (the held-out images are given)",
    )
    result = finetune(
        model,
        converted,
        args.finetune,
        settings,
        holdout=args.holdout,
        preprocess=PreprocessChoices(
            resize=args.resize,
            crop=args.crop,
            normalize=info.normalize if args.normalize in (None, "auto") else args.normalize,
        ),
        options=FinetuneOptions(
            holdout_fraction=0.1 if args.holdout_fraction is None else args.holdout_fraction,
            labels=args.labels,
            classes=args.classes,
            views=4 if args.views is None else args.views,
            workers=0 if args.workers is None else args.workers,
            device=args.device or "cpu",
            checkpoint=out / "checkpoint.pt",
            checkpoint_every=50 if args.checkpoint_every is None else args.checkpoint_every,
            resume=bool(args.resume),
            progress=None,
        ),
    )
    return result if int(os.environ.get("RANK", "0")) == 0 else None


def _write_finetune(result, staging: Path, spec: str) -> None:
    from shiftlab.experiments.finetuning import finetune_protocol, finetune_sections
    from shiftlab.report.html import write_report

    result.save_weights(staging / "weights.safetensors")
    result.to_json(staging / "finetune.json")
    figure = result.plot_curve()
    figure.savefig(staging / "training_curve.png", dpi=120)
    write_report(
        finetune_sections(result, figure=figure),
        staging,
        title=f"shiftlab convert --finetune: {spec}",
        summary=FINETUNE_SUMMARY,
        protocol=finetune_protocol(result),
    )


FINETUNE_SUMMARY = (
    "A model converted to BlurPool or APS computes another function than the one that was trained. Fine-tuned by "
    "self-distillation, the original teaching its converted copy under shifts, it keeps the original's accuracy "
    "while gaining the conversion's consistency; all numbers are measured on held-out images."
)


def _remove_checkpoint(path: Path) -> None:
    """The run is complete and written: its checkpoint (the model and the optimiser's state) is not needed."""
    path.unlink(missing_ok=True)
    path.with_name(path.stem + ".partial.json").unlink(missing_ok=True)


def _print_finetune(result, out: Path) -> None:
    name = result.accuracy_name
    print(
        f"fine-tuned {len(result.steps)} steps on {result.protocol['data']['usable']} images; held-out images: "
        f"{result.protocol['holdout']['images']}"
    )
    print(f"{'model':<28} {name:>28} {'circular consistency':>22} {'crop consistency':>18}")
    labels = {"original": "original", "converted": "converted, not fine-tuned", "fine-tuned": "converted, fine-tuned"}
    for stage, label in labels.items():
        item = result.metrics(stage)
        accuracy = f"{100 * item['accuracy']:.1f}% ({item['correct']}/{item['images']})"
        crop = "n/a" if item["crop_consistency"] is None else f"{100 * item['crop_consistency']:.2f}%"
        print(f"{label:<28} {accuracy:>28} {100 * item['circular_consistency']:>21.2f}% {crop:>18}")
    print(f"report: {(out / 'report.html').resolve()}; curve: {(out / 'training_curve.png').resolve()}")
    print(f"numbers: {(out / 'finetune.json').resolve()}")


def _integer(text: str) -> int | str:
    """A command-line integer, or the text itself (so that the check names it)."""
    try:
        return int(text)
    except ValueError:
        return text


def _save_state_dict(model, path: Path) -> None:
    from shiftlab._io import safetensors_bytes

    path.write_bytes(safetensors_bytes(model.state_dict()))


def _subpixel_shifts(spec: str) -> list[tuple[float, float]]:
    from shiftlab.shifts import parse_pairs

    return parse_pairs(spec, "--subpixel-shifts", fractional=True, example="0,0.5;0.5,0.5")


def _floats(spec: str | None, name: str) -> list[float] | None:
    from shiftlab.errors import fail

    if spec is None:
        return None
    try:
        return [float(value) for value in spec.split(",")]
    except ValueError:
        fail(name, f"cannot read {spec!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406")


def _workers(text: str) -> int | str:
    from shiftlab.errors import fail

    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        fail("--workers", f"expected a number of processes or auto, got {text!r}")


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from shiftlab._io import staged_directory
    from shiftlab.errors import fail
    from shiftlab.experiments.evaluation import evaluation_protocol, evaluation_sections
    from shiftlab.invariance.catalog import AUTO, METRIC_NAMES, MetricChoice, ProtocolOptions
    from shiftlab.invariance.datasets import open_images
    from shiftlab.invariance.evaluate import EvaluateOptions, PreprocessChoices, evaluate
    from shiftlab.report.html import write_report
    from shiftlab.shifts import parse_shifts

    out = Path(args.out)
    images = open_images(args.data, classes=args.classes)
    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    for name in names if names != [AUTO] else []:
        if name not in METRIC_NAMES:
            fail("--metrics", f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)} (or auto)")
    options = ProtocolOptions(
        views=args.views,
        max_shift=args.max_shift,
        shifts=parse_shifts(args.shifts),
        shift_mode=args.shift_mode,
        subpixel_shifts=_subpixel_shifts(args.subpixel_shifts),
        sequence_shift=args.sequence_shift,
        sequence_8bit=args.imagenet_p_8bit,
        diagonal_mode=args.diagonal_mode,
        dense_mode=args.dense_mode,
        dense_step=args.dense_step,
    )
    # made by evaluate once the resize and crop are known: "auto" reads a pretrained model's own
    choice = MetricChoice(AUTO if names == [AUTO] else names, options)
    metrics = choice.protocols(args.resize, args.crop, labelled=images.labels is not None)  # (for the note below)
    main_process = _main_process()
    if main_process and images.labels is not None and not any(metric.needs_labels for metric in metrics):
        kinds = f"{len(images.classes)} classes" if images.classes else "class indices"
        print(
            f"shiftlab: note: the data's labels ({kinds}) are ignored: no metric asked for uses them"
            f" ({', '.join(metric.name for metric in metrics)})",
            file=sys.stderr,
        )
    shown: list[str] = []

    def report_skip(name: str, reason: str) -> None:
        shown.append(name)
        if len(shown) <= SKIPS_SHOWN:
            line = f"shiftlab: skipped {reason}" if name in reason else f"shiftlab: skipped '{name}': {reason}"
            tqdm.write(line, file=sys.stderr)
        if len(shown) == SKIPS_SHOWN + 1:
            tqdm.write(
                "shiftlab: more images skipped: counted, and listed in evaluation.json (a summary follows)",
                file=sys.stderr,
            )

    preprocess = PreprocessChoices(
        resize=args.resize,
        crop=args.crop,
        interpolation=args.interpolation,
        normalize=args.normalize,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
    )
    run_options = EvaluateOptions(
        seed=args.seed,
        batch_size=args.batch_size,
        workers=_workers(args.workers),
        device=args.device,
        dtype=args.dtype,
        checkpoint=out / "checkpoint.pt",
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=None,
    )
    result = evaluate(
        args.model,
        images,
        metrics=choice,
        preprocess=preprocess,
        options=run_options,
        weights=None if args.weights is None else [None if item == "-" else item for item in args.weights],
        output=args.output,
        on_skip=report_skip if main_process else None,
    )
    if not main_process:
        return 0
    if result.images["skipped"] > min(len(shown), SKIPS_SHOWN):
        print(f"shiftlab: {_skip_summary(result.skipped)}; every one is listed in evaluation.json", file=sys.stderr)
    sections = evaluation_sections(result)
    with staged_directory(out) as staging:
        write_report(
            sections,
            staging,
            title=f"shiftlab evaluate: {', '.join(result.models)}",
            summary=EVALUATE_SUMMARY,
            protocol=evaluation_protocol(result),
        )
        result.to_json(staging / "evaluation.json")
        result.to_csv(staging / "evaluation.csv")
    _print_evaluation(result)
    print(f"report: {printable((out / 'report.html').resolve())}")
    print(
        f"numbers: {printable((out / 'evaluation.json').resolve())};"
        f" table: {printable((out / 'evaluation.csv').resolve())}"
    )
    return 0


#: Skipped images named one by one on stderr; the rest are counted per reason (all are in evaluation.json).
SKIPS_SHOWN = 5


def _skip_summary(skipped: list[dict]) -> str:
    """``"7 images skipped: 5 unreadable, 2 too small"``: how many, per kind of reason, the most frequent first."""
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items(), key=lambda pair: -pair[1]))
    return f"{len(skipped)} image(s) skipped: {parts}"


def _main_process() -> bool:
    """Whether this process writes the outputs: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


EVALUATE_SUMMARY = (
    "How often the models' predictions change when the input is translated, measured over a whole data set with the "
    "published protocols (Zhang 2019; Chaman & Dokmanic 2021; Azulay & Weiss 2019; Hendrycks & Dietterich 2019; "
    "Michaeli et al. 2023; Rojas-Gomez et al. 2022 for segmentation maps), under one documented protocol with fixed "
    "seeds."
)


def _print_evaluation(result) -> None:
    from shiftlab.report.sections import format_error, format_number

    rows = result.summary()
    width = max(len(row["model"]) for row in rows)
    from shiftlab.models import describe_preprocessing

    for label, record in result.protocol["models"].items():
        print(f"{label}: {printable(record['description'])}")
        print(f"  preprocessing: {printable(describe_preprocessing(record['preprocessing']))}")
    for reason in result.protocol.get("chosen_by_auto", []):
        print(reason)
    metric_width = max(16, *(len(row["metric"]) for row in rows))
    print(
        f"{result.images['evaluated']} of {result.images['total']} images evaluated, {result.images['skipped']} skipped"
    )
    print(f"{'model':<{width}}  {'metric':<{metric_width}} {'statistic':<30} {'at':<14} {'value':>10}")
    for row in rows:
        value = row["value"]
        text = (format_error if row["statistic"] == "mac" else format_number)(value) if value is not None else "n/a"
        if row["ci_low"] is not None:
            text += f" [{format_number(row['ci_low'])}, {format_number(row['ci_high'])}]"
        print(
            f"{row['model']:<{width}}  {row['metric']:<{metric_width}} {row['statistic']:<30} {row['at']:<14}"
            f" {text:>10}"
        )


def run_samples(args: argparse.Namespace) -> int:
    from shiftlab.images import SAMPLES

    width = max(len(name) for name in SAMPLES)
    for name, sample in SAMPLES.items():
        print(f"{name:<{width}}  {sample.description}")
    return 0


def run_kernels(args: argparse.Namespace) -> int:
    from shiftlab.kernels import KERNEL_NAMES, describe_kernel, named_kernel

    width = max(len(name) for name in KERNEL_NAMES)
    for name in KERNEL_NAMES:
        values = named_kernel(name).astype("float32").tolist()  # as get_kernel's float32 tensor prints them
        print(f"{name:<{width}}  {describe_kernel(name)}")
        if len(values) <= 3:
            print(f"{'':<{width}}  {[[round(v, 4) for v in row] for row in values]}")
    return 0


# --------------------------------------------------------------------------- parser


def _add_out(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--out",
        default=str(_default_out(command)),
        help=f"output folder (default: {_default_out(command)}); created only when the command succeeds",
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("png", "svg", "pdf"), default="png", help="figure format (default: png)")


#: ``add_parser`` of the subcommands: each command's builder makes its parser with it.
AddParser = Callable[..., argparse.ArgumentParser]

#: What a model SPEC may be, for every command that takes one.
MODEL_SPEC_HELP = (
    "SPEC: a bundled network (article, simple_cnn, circular_cnn, digits_cnn), a torchvision architecture (resnet18, "
    "vgg11, deeplabv3_mobilenet_v3_large, ...; random weights, seeded, unless --weights), timm:NAME[.TAG] (timm's "
    "pretrained weights; pip install 'shiftlab[timm]'), hf:ORG/NAME (a Hugging Face image classifier, pretrained; "
    "pip install 'shiftlab[hf]'), or package.module:callable / file.py:callable; each optionally converted by "
    "suffixes such as +blurpool, +aps, +circular (resnet18+circular+aps). Pretrained weights come from the zoos' "
    "caches, downloaded when missing unless HF_HUB_OFFLINE=1 or SHIFTLAB_OFFLINE=1; a pretrained model brings its "
    "own preprocessing (resize, crop, interpolation, mean and std), which explicit options override."
)

#: What --weights may be.
WEIGHTS_HELP = (
    "a state_dict file (.pt/.pth loaded with weights_only=True, or .safetensors); for a torchvision architecture the "
    "name of its pretrained weights (DEFAULT, IMAGENET1K_V1, ...: downloaded into TORCH_HOME); or random (a "
    "timm:/hf: architecture with random weights)"
)


def _add_normalize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--normalize",
        choices=("auto", "imagenet", "none"),
        default="auto",
        help="input normalisation (default: auto = the model's own: a pretrained model's statistics, ImageNet's for "
        "a torchvision architecture, none otherwise)",
    )
    parser.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic", "nearest", "nearest-exact"),
        default=None,
        help="how images are resized (default: the model's own, else bilinear; always antialiased)",
    )
    parser.add_argument(
        "--output",
        metavar="KEY",
        default=None,
        help="the model's main output when it returns a dict, tuple or ModelOutput (default: logits, else out, else "
        "the first tensor)",
    )


def _add_finetune_options(parser: argparse.ArgumentParser) -> None:
    """convert's fine-tuning options; None here means "not given": the defaults are FinetuneSettings' (a test checks
    that the help quotes them; the parser does not import torch)."""
    group = parser.add_argument_group("fine-tuning (with --finetune DATA; defaults explained in the README)")
    group.add_argument(
        "--finetune",
        metavar="DATA",
        default=None,
        help="fine-tune the converted model on these images, the original model teaching it: a folder, a list "
        "file, or digits (the 4,000 bundled training digits; the 1,000 test digits are held out)",
    )
    group.add_argument(
        "--holdout",
        metavar="DATA",
        default=None,
        help="held-out images for the report, never trained on (default: --holdout-fraction of DATA)",
    )
    group.add_argument(
        "--holdout-fraction",
        type=float,
        default=None,
        metavar="F",
        help="without --holdout: the share of DATA held out, chosen by a hash of each image's name (default: 0.1)",
    )
    group.add_argument(
        "--labels",
        choices=("use", "ignore"),
        default=None,
        help="add a cross-entropy term with the data's labels, or distil only (default: use them when DATA has them)",
    )
    group.add_argument("--classes", default=None, help="class names in index order, comma-separated or a file")
    group.add_argument("--epochs", type=int, default=None, help="passes over DATA (default: 3)")
    group.add_argument("--batch-size", type=int, default=None, help="images per step, all processes (default: 64)")
    group.add_argument("--lr", type=float, default=None, help="peak learning rate, cosine to 0 (default: 0.01)")
    group.add_argument("--momentum", type=float, default=None, help="SGD Nesterov momentum (default: 0.9)")
    group.add_argument("--weight-decay", type=float, default=None, help="L2 penalty (default: 0.0001)")
    group.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="distillation temperature T (default: 4)",
    )
    group.add_argument(
        "--label-weight",
        type=float,
        default=None,
        help="weight of the cross-entropy term when labels are used (default: 0.5)",
    )
    group.add_argument(
        "--shift-mode",
        choices=("auto", "circular", "crop"),
        default=None,
        help="the student's views: circular rolls or crop windows (default: auto = circular for APS with circular "
        "padding, crop otherwise)",
    )
    group.add_argument(
        "--max-shift",
        type=int,
        default=None,
        metavar="R",
        help="shifts uniform in [-R, R) per axis (default: an eighth of the input's shorter side, rounded up)",
    )
    group.add_argument(
        "--views", type=int, default=None, help="views per held-out image for the consistency metrics (default: 4)"
    )
    group.add_argument("--resize", type=int, default=None, help="shorter side of every image first (e.g. 256)")
    group.add_argument("--crop", type=int, default=None, help="model input: the centre CROPxCROP window (e.g. 224)")
    group.add_argument(
        "--normalize",
        choices=("auto", "imagenet", "none"),
        default=None,
        help="input normalisation (default: auto = ImageNet statistics for torchvision models)",
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu; under torchrun: one GPU per process)"
    )
    group.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: 0)")
    group.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="write a checkpoint every N steps and after every epoch (default: 50)",
    )
    group.add_argument(
        "--resume", action="store_true", default=None, help="continue the fine-tuning whose checkpoint is in --out"
    )


def _add_precision(parser: argparse.ArgumentParser, device_help: str, dtype_help: str) -> None:
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16", "float64"), default="float32", help=dtype_help
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftlab",
        description="See and measure how convolutional networks respond to translation.",
        epilog="IMAGE is a file path or a bundled sample name (see `shiftlab samples`).",
    )
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (_add_demo, _add_edges, _add_pool, _add_probe, _add_convert, _add_evaluate, _add_listings):
        add_command(commands.add_parser)
    return parser


def _add_demo(add_parser: AddParser) -> None:
    """``shiftlab demo``: the reference article's experiments, as a report."""
    demo = add_parser(
        "demo",
        help="rerun the reference article's experiments on bundled images and write an HTML report",
        description="Rerun every experiment of the reference article on bundled images (no download) and write "
        "report.html and results.json.",
    )
    _add_out(demo, "demo")
    demo.set_defaults(handler=run_demo)


def _add_edges(add_parser: AddParser) -> None:
    """``shiftlab edges IMAGE``: a convolution and its edge map."""
    edges = add_parser(
        "edges",
        help="convolve an image with a kernel (+ ReLU) and show it beside its edge map",
        description="Cross-correlate IMAGE (as grayscale) with a kernel, apply ReLU, and save the figure and the map "
        "(.npy).",
    )
    edges.add_argument("image", metavar="IMAGE", help="image file or sample name")
    edges.add_argument(
        "--kernel",
        default="sobel_y",
        help="kernel name (see `shiftlab kernels`), literal such as '[[1,0],[0,-1]]' or '1 0; 0 -1', or a .npy file "
        "(default: sobel_y)",
    )
    edges.add_argument(
        "--padding",
        choices=("valid", "same", "circular"),
        default="valid",
        help="border handling (default: valid, as in the article)",
    )
    edges.add_argument("--no-relu", action="store_true", help="keep negative responses")
    _add_format(edges)
    _add_out(edges, "edges")
    edges.set_defaults(handler=run_edges)


def _add_pool(add_parser: AddParser) -> None:
    """``shiftlab pool IMAGE``: repeated max pooling, level by level."""
    pool = add_parser(
        "pool",
        help="max-pool an image repeatedly and show every level with its shape",
        description="Max-pool IMAGE (as grayscale) repeatedly, as the article's visualize_pooling does, and save the "
        "figure and the levels (.npz).",
    )
    pool.add_argument("image", metavar="IMAGE", help="image file or sample name")
    pool.add_argument("--iterations", type=int, default=3, help="number of poolings (default: 3)")
    pool.add_argument("--kernel-size", type=int, default=2, help="pooling window and stride (default: 2)")
    pool.add_argument(
        "--edges",
        metavar="KERNEL",
        default=None,
        help="first convolve with this kernel (+ ReLU), as the article does for photos",
    )
    _add_format(pool)
    _add_out(pool, "pool")
    pool.set_defaults(handler=run_pool)


def _add_probe(add_parser: AddParser) -> None:
    """``shiftlab probe``: a model's equivariance, layer by layer."""
    probe = add_parser(
        "probe",
        help="measure the translation equivariance of a model, layer by layer, and write a report",
        description="Shift the images, run the model with hooks on its layers, and measure per layer and shift how "
        "far its output is from the shifted output of the original image.",
        epilog=MODEL_SPEC_HELP,
    )
    probe.add_argument("--model", required=True, metavar="SPEC", help="the model (see below)")
    probe.add_argument("--weights", metavar="FILE|NAME", default=None, help=WEIGHTS_HELP)
    _add_probe_inputs(probe)
    _add_probe_layers(probe)
    probe.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize the shorter side to SIZE and centre-crop SIZExSIZE (default: the model's own preprocessing, "
        "else images as they are)",
    )
    _add_normalize(probe)
    _add_precision(probe, "cpu, cuda, cuda:1, ... (default: cpu)", "model and input precision (default: float32)")
    probe.add_argument(
        "--seed", type=int, default=0, help="seed of the random initialisation when no weights are given (default: 0)"
    )
    probe.add_argument("--batch-size", type=int, default=64, help="most inputs per forward pass (default: 64)")
    probe.add_argument(
        "--heatmap-layers",
        default=None,
        help="comma-separated layers for the shift heat maps (default: a few representative ones)",
    )
    _add_explore_options(probe)
    _add_out(probe, "probe")
    probe.set_defaults(handler=run_probe)


def _add_probe_inputs(parser: argparse.ArgumentParser) -> None:
    """probe's images, shifts and shift mode."""
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGE",
        default=["chelsea"],
        help="image files or sample names (default: chelsea)",
    )
    parser.add_argument(
        "--shifts",
        default="0:8",
        help="shifts in input pixels: 0:8 (horizontal 0..7), diag:0:8, grid:-2:3 or grid:0:4,0:8, or explicit "
        "'1,2;0,-3' (default: 0:8)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "circular", "zero", "crop", "fourier"),  # borders.PROBE_MODES (a test keeps them equal)
        default="auto",
        help="how images are shifted: auto (default) takes circular when every padding in the model is circular or "
        "there is none, crop otherwise (the summary says which, and why); circular, zero, crop or fourier",
    )


def _add_probe_layers(parser: argparse.ArgumentParser) -> None:
    """probe's watched layers, their layouts and strides."""
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated layer names or glob patterns, or 'all' (default: the repeated blocks, such as residual "
        "or transformer blocks, and every conv, pooling, normalisation, activation and linear layer outside them; "
        "'all': those layers inside the blocks too; 'output', the model's output, is always watched)",
    )
    parser.add_argument(
        "--layout",
        action="append",
        metavar="PATTERN=LAYOUT",
        help="the layout of the outputs of layers matching PATTERN: NCHW, NHWC, tokens or global (repeatable; "
        "default: found from the model, see README)",
    )
    parser.add_argument(
        "--stride",
        action="append",
        metavar="PATTERN=SY,SX",
        help="the cumulative stride of layers matching PATTERN (repeatable; default: found from two input sizes)",
    )


def _add_explore_options(parser: argparse.ArgumentParser) -> None:
    """probe's explorer in the report."""
    parser.add_argument(
        "--explore",
        action="store_true",
        help="add an explorer to the report: move the input over the shifts and watch a few layers' maps follow it "
        "(the first image; frames packed into the page)",
    )
    parser.add_argument(
        "--explore-layers",
        default=None,
        metavar="LAYERS",
        help="comma-separated probed layers the explorer shows, as the rows name them (conv1, layer1.0, output; "
        "default: the layers --layers names, else four representative ones)",
    )
    parser.add_argument(
        "--explore-channels",
        type=int,
        default=None,
        metavar="N",
        help="channels kept per layer for the explorer, the strongest first (default: 4)",
    )


def _add_convert(add_parser: AddParser) -> None:
    """``shiftlab convert``: BlurPool or APS in a model's downsampling layers, optionally fine-tuned."""
    convert = add_parser(
        "convert",
        help="make a model more shift-invariant (BlurPool or APS) and save its weights and the change table",
        description=(
            "Replace every downsampling layer of a model by BlurPool (anti-aliasing, Zhang 2019) or adaptive "
            "polyphase sampling (APS, Chaman & Dokmanic 2021), keeping its weights, or rebuild it as the authors' "
            "own network (--recipe); write weights.safetensors, changes.csv and changes.json. With --finetune DATA, "
            "the original then teaches the converted model on those images under shifts (self-distillation; no "
            "labels needed), and report.html, finetune.json and training_curve.png show accuracy and consistency "
            "before and after, on held-out images. Runs under torchrun too: torchrun --nproc_per_node N -m shiftlab "
            "convert ... --finetune DATA"
        ),
        epilog=(
            f"{MODEL_SPEC_HELP} The converted weights keep their state_dict keys (with --recipe zhang2019 or "
            "chaman2021: the authors' keys): load them with the spec the command prints, e.g. "
            "resnet18+circular+aps or resnet50+blurpool@zhang2019."
        ),
    )
    convert.add_argument("--model", required=True, metavar="SPEC", help="the model to convert")
    convert.add_argument(
        "--method",
        default=None,
        metavar="METHOD",
        help="blurpool (better consistency) or aps (exact for circular shifts with --padding circular); "
        "a published --recipe implies its own",
    )
    convert.add_argument(
        "--recipe",
        default="shiftlab",
        metavar="RECIPE",
        help="shiftlab (default: every downsampling layer of any model, where it is), zhang2019 (Zhang's released "
        "anti-aliased ResNet, VGG, DenseNet, MobileNetV2, AlexNet, layer for layer) or chaman2021 (Chaman & "
        "Dokmanic's APS ResNets); the published ones take their authors' checkpoints",
    )
    convert.add_argument(
        "--padding",
        default=None,
        metavar="circular",
        help="make every padding circular too (needed for exact APS invariance)",
    )
    convert.add_argument(
        "--kernel-size",
        default=None,
        metavar="K",
        help="binomial filter size 1-7 (default: 4 for blurpool and zhang2019, 1 = none for aps and chaman2021)",
    )
    convert.add_argument(
        "--weights",
        metavar="FILE|NAME",
        default=None,
        help=f"weights of the model before conversion: {WEIGHTS_HELP}",
    )
    convert.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random initialisation when no weights are given, and of the fine-tuning (default: 0)",
    )
    _add_finetune_options(convert)
    _add_out(convert, "convert")
    convert.set_defaults(handler=run_convert)


def _add_evaluate(add_parser: AddParser) -> None:
    """``shiftlab evaluate``: shift metrics of models over a data set."""
    evaluation = add_parser(
        "evaluate",
        help="measure how often models' predictions change under translation, over a whole data set",
        description=(
            "Run one or more models over a data set under the published shift protocols (consistency, accuracy "
            "under shift, sub-pixel shifts, ImageNet-P translation sequences, Azulay & Weiss's one-pixel shift) and "
            "write report.html, evaluation.json and evaluation.csv. Runs under torchrun too: "
            "torchrun --nproc_per_node N -m shiftlab evaluate ..."
        ),
        epilog=(
            f"{MODEL_SPEC_HELP} DATA: a folder of images (flat, or one sub-folder per "
            "class), a text file listing paths with optional labels, or a bundled data set."
        ),
    )
    evaluation.add_argument(
        "--model", action="append", required=True, metavar="SPEC", help="a model; repeat for several, side by side"
    )
    evaluation.add_argument(
        "--weights",
        action="append",
        default=None,
        metavar="FILE|NAME",
        help=f"weights for each --model, in order (- for a model without): {WEIGHTS_HELP}",
    )
    evaluation.add_argument("--data", required=True, metavar="DATA", help="folder, list file or bundled data set")
    evaluation.add_argument(
        "--classes",
        default=None,
        help="class names in index order, comma-separated or a file (default: sorted folder names)",
    )
    _add_metric_options(evaluation)
    _add_input_options(evaluation)
    _add_run_options(evaluation)
    _add_out(evaluation, "evaluate")
    evaluation.set_defaults(handler=run_evaluate)


def _add_metric_options(parser: argparse.ArgumentParser) -> None:
    """evaluate's metrics and their protocols (:func:`shiftlab.invariance.catalog.make_protocol`)."""
    parser.add_argument(
        "--metrics",
        default="auto",
        help=(
            "comma-separated: consistency, crop-consistency, shift-accuracy, subpixel, imagenet-p, diagonal, cosine, "
            "dense-consistency (segmentation maps) (default: auto = every classification metric the data and the "
            "resize and crop allow, the model's own when --resize and --crop are not given)"
        ),
    )
    parser.add_argument(
        "--views",
        type=int,
        default=8,
        help="views per image of the consistency metrics; dense-consistency: the unshifted and K-1 shifts (default: 8)",
    )
    parser.add_argument(
        "--max-shift",
        type=int,
        default=32,
        help="consistency: rolls in [-R, R), crop offsets in [0, R); dense-consistency: shifts in [-R, R] (default 32)",
    )
    parser.add_argument(
        "--shifts",
        default="grid:-2:3",
        help="shift grid of shift-accuracy and cosine, as for probe (default: grid:-2:3)",
    )
    parser.add_argument(
        "--shift-mode",
        choices=("circular", "crop", "zero", "fourier"),
        default="circular",
        help="how shift-accuracy and cosine shift (default: circular)",
    )
    parser.add_argument(
        "--subpixel-shifts",
        default="0,0.5;0.5,0;0.5,0.5",
        help="fractional dy,dx pairs for subpixel (default: 0,0.5;0.5,0;0.5,0.5)",
    )
    parser.add_argument(
        "--sequence-shift", type=int, default=20, help="imagenet-p frames shift by -T..T px (default: 20)"
    )
    parser.add_argument(
        "--imagenet-p-8bit",
        action="store_true",
        help="imagenet-p: round the (resized) picture to 8-bit levels before the frames are cut, as ImageNet-P's "
        "published frames were (default: frames in floating point)",
    )
    parser.add_argument(
        "--diagonal-mode",
        choices=("auto", "crop", "circular", "zero", "fourier"),
        default="auto",
        help="diagonal: crop windows when the resize leaves room around the crop (--resize and --crop, or the model's "
        "own), else circular (default: auto)",
    )
    parser.add_argument(
        "--dense-mode",
        choices=("circular", "crop", "zero"),
        default="circular",
        help="dense-consistency: roll the input, move the crop window, or move the picture with black fill; crop and "
        "zero compare the overlap of the two views (default: circular)",
    )
    parser.add_argument(
        "--dense-step",
        type=int,
        default=1,
        help="dense-consistency: shifts are multiples of this; a model whose maps are smaller than its input by a "
        "stride S needs a multiple of S (default: 1)",
    )


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    """evaluate's preprocessing choices (:class:`shiftlab.invariance.evaluate.PreprocessChoices`)."""
    parser.add_argument(
        "--resize",
        type=int,
        default=None,
        help="shorter side of every image before views are cut (e.g. 256; default: the models' own)",
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        help="model input: the centre CROPxCROP window (e.g. 224; default: the models' own, else the whole image)",
    )
    _add_normalize(parser)
    parser.add_argument(
        "--mean", default=None, help="per-channel mean, e.g. 0.5,0.5,0.5 (with --std; overrides --normalize)"
    )
    parser.add_argument("--std", default=None, help="per-channel standard deviation (with --mean)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """evaluate's run options (:class:`shiftlab.invariance.evaluate.EvaluateOptions`)."""
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random shifts and of random initialisation (default: 0)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="most inputs per forward pass; part of the protocol (default: 64)"
    )
    parser.add_argument(
        "--workers",
        default="auto",
        metavar="N|auto",
        help="image-decoding worker processes; auto: none on 2 CPU cores or fewer, for fewer than 256 images, or when "
        "the model's threads use every core (they would slow the model more than they save); on a GPU, cores - 1, "
        "at most 8 (default: auto)",
    )
    _add_precision(
        parser,
        "cpu, cuda, cuda:1, ... (default: cpu; under torchrun: one GPU per process)",
        "model precision (default: float32)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=50, help="write partial results every N steps (default: 50)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")


def _add_listings(add_parser: AddParser) -> None:
    """``shiftlab samples`` and ``shiftlab kernels``: what the names mean."""
    samples = add_parser(
        "samples",
        help="list the bundled sample images",
        description="List the images bundled with shiftlab; their names work wherever an IMAGE is expected.",
    )
    samples.set_defaults(handler=run_samples)

    kernels = add_parser(
        "kernels", help="list the named kernels", description="List the named kernels and what they respond to."
    )
    kernels.set_defaults(handler=run_kernels)


#: The commands that answer without torch (``--help`` too): a fraction of a second (benchmarks/bench_cli.py).
LIGHT_COMMANDS = ("samples", "kernels")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shiftlab`` command; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        if args.command not in LIGHT_COMMANDS:
            # Ctrl-C inside these imports would abort the process (their C++ runs Python code): after them, one line
            with interrupts_held():
                import torch  # noqa: F401
                import torchvision  # noqa: F401
        with _output_folder(args):
            return handler(args)
    except ShiftlabError as error:
        print(f"shiftlab: error: {_with_notes(str(error), error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # writing, mostly: inputs that cannot be read are refused where they are read
        where = f"'{printable(error.filename)}': " if getattr(error, "filename", None) else ""
        print(f"shiftlab: error: {where}{printable(error.strerror or first_line(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as error:
        print(f"shiftlab: {_with_notes('interrupted', error, default='nothing was written')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as error:  # argparse's own exits (--help, usage errors) pass; code shiftlab ran must not exit
        caller = _exit_caller(error)
        if caller is None:
            raise
        print(
            f"shiftlab: error: {caller} called sys.exit({error.code!r}) while shiftlab ran it; nothing was written"
            " (a model file must define the model, not run a program)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except Exception as error:  # not bad input: a bug in shiftlab, reported as one, with its traceback
        if _interrupted_import(error):
            print("shiftlab: interrupted; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPTED
        traceback.print_exc()
        if not isinstance(error, InternalError):
            error = InternalError(f"{type(error).__name__}: {first_line(error)}")
        print(f"shiftlab: {error}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _interrupted_import(error: BaseException) -> bool:
    """Whether ``error`` is an ImportError raised because Ctrl-C interrupted an import (numpy turns it into one)."""
    if not isinstance(error, ImportError):
        return False
    cause = error.__cause__ or error.__context__
    while cause is not None and not isinstance(cause, KeyboardInterrupt):
        cause = cause.__cause__ or cause.__context__
    return cause is not None


def _output_folder(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Check and lock the command's ``--out`` before it does any work (see :func:`shiftlab._io.claim_output_folder`);
    ``args.out`` becomes a ``Path``. Under torchrun only the main process writes, and so only it claims."""
    if not hasattr(args, "out"):
        return contextlib.nullcontext()
    if not str(args.out).strip():
        fail("--out", "is empty: name a folder (. for the current one)")
    args.out = Path(args.out)
    if not _main_process():
        return contextlib.nullcontext()
    from shiftlab._io import claim_output_folder

    return claim_output_folder(args.out)


def _with_notes(message: str, error: BaseException, default: str = "") -> str:
    """The message, then what the code that raised ``error`` added about it (where the work done so far is)."""
    notes = [printable(note) for note in getattr(error, "__notes__", [])] or ([default] if default else [])
    return "; ".join([message, *notes])


def _exit_caller(error: SystemExit) -> str | None:
    """Where code that is not shiftlab's (a model file, say) raised ``SystemExit``: ``"'file.py' line 3"``, or None
    when it came from shiftlab or Python's own library (argparse's --help and usage errors)."""
    package = Path(__file__).resolve().parent
    library = Path(sysconfig.get_paths()["stdlib"]).resolve()
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
            continue
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package) or path.is_relative_to(library):
            continue
        return f"'{printable(frame.filename)}' line {frame.lineno}"
    return None


if __name__ == "__main__":
    sys.exit(main())
