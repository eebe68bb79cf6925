"""`shiftlab evaluate`: outputs, one-line errors with exit status 2 and nothing written, torchrun, kill and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, kill_when, needs_loopback, run_group
from PIL import Image

from shiftlab import cli
from shiftlab.errors import ShiftlabError

TESTS = Path(__file__).parent
SOURCE = TESTS.parent / "src"
NETS = TESTS / "evaluation_nets.py"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, expected: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert lines == [f"shiftlab: error: {expected}"], err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Ten random 24x28 photos in a flat folder, and one that is not an image."""
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(1)
    for index in range(10):
        Image.fromarray((rng.random((24, 28, 3)) * 255).astype(np.uint8)).save(root / f"{index:02d}.png")
    (root / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


COMMON = [
    "--resize",
    "24",
    "--crop",
    "20",
    "--max-shift",
    "4",
    "--views",
    "4",
    "--sequence-shift",
    "3",
    "--workers",
    "0",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())} if folder.exists() else {}


def test_two_models_side_by_side(capsys, folder, tmp_path):
    out = tmp_path / "out"
    status, stdout, stderr = run(
        capsys,
        "evaluate",
        "--model", f"{NETS}:small_classifier",
        "--model", f"{NETS}:ChannelMax",
        "--data", str(folder),
        "--metrics", "consistency,crop-consistency,subpixel,imagenet-p,diagonal",
        *COMMON,
        "--out", str(out),
    )  # fmt: skip
    assert status == 0, stderr
    assert f"shiftlab: skipped image '{folder / 'zz_broken.jpg'}'" in stderr
    assert "10 of 11 images evaluated, 1 skipped" in stdout
    assert sorted(path.name for path in out.iterdir()) == [
        "checkpoint.pt",
        "evaluation.csv",
        "evaluation.json",
        "report.html",
        "results.json",
    ]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["models"] == [f"{NETS}:small_classifier", f"{NETS}:ChannelMax"]
    assert evaluation["results"][f"{NETS}:ChannelMax"]["consistency"]["consistency"] == 1.0
    assert evaluation["skipped"][0]["name"] == str(folder / "zz_broken.jpg")
    report = (out / "report.html").read_text()
    for title in (
        "Consistency under circular shifts",
        "Translation sequences (ImageNet-P)",
        "One-pixel diagonal shift",
    ):
        assert title in report
    assert report.count("data:image/png;base64,") == 3  # two consistency plots, one sequence plot
    sections = json.loads((out / "results.json").read_text())["sections"]
    assert list(sections) == [
        "evaluation",
        "evaluate-consistency",
        "evaluate-crop-consistency",
        "evaluate-subpixel",
        "evaluate-imagenet-p",
        "evaluate-diagonal",
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, folder, tmp_path):
    out = tmp_path / "out"
    model = ["--model", f"{NETS}:small_classifier", "--workers", "0", "--out", str(out)]
    status, _, err = run(capsys, "evaluate", *model, "--data", str(tmp_path / "missing"))
    assert_one_line_error(
        status, err, f"data '{tmp_path / 'missing'}': no such folder or file (and not a bundled data set: digits)"
    )
    (tmp_path / "empty").mkdir()
    status, _, err = run(capsys, "evaluate", *model, "--data", str(tmp_path / "empty"))
    assert err.startswith(f"shiftlab: error: data '{tmp_path / 'empty'}': holds no images") and status == 2
    listing = tmp_path / "val.txt"
    listing.write_text(f"{folder / '00.png'} 3\n{folder / 'gone.png'} 1\n")
    status, _, err = run(capsys, "evaluate", *model, "--data", str(listing))
    assert_one_line_error(status, err, f"label file '{listing}': names 1 missing file(s): {folder / 'gone.png'}")
    classes = tmp_path / "classes"
    for name in ("face", "nonface"):
        (classes / name).mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(classes / name / "a.png")
    status, _, err = run(capsys, "evaluate", *model, "--data", str(classes))
    assert_one_line_error(
        status,
        err,
        f"classes: the data has 2 classes (face, nonface), but model '{NETS}:small_classifier' gives 10 outputs",
    )
    status, _, err = run(capsys, "evaluate", "--model", f"{NETS}:FeatureMap", "--data", str(folder), *model[2:])
    assert_one_line_error(
        status,
        err,
        f"model '{NETS}:FeatureMap': returns tensor of shape (1, 4, 12, 14) and dtype float32, not class logits"
        " (N, classes); for per-pixel class maps (segmentation) use --metrics dense-consistency, for a model without"
        " classes --metrics cosine",
    )
    assert not out.exists()


@pytest.mark.parametrize("value", ["0,0.5;0.5", "0,half", "1e-1,0"])
def test_bad_subpixel_shifts(capsys, folder, tmp_path, value):
    out = tmp_path / "out"
    status, _, err = run(
        capsys, "evaluate", "--model", f"{NETS}:small_classifier", "--data", str(folder), "--workers", "0",
        "--metrics", "subpixel", "--subpixel-shifts", value, "--out", str(out),
    )  # fmt: skip
    item = value.split(";")[-1]
    assert_one_line_error(
        status,
        err,
        f"--subpixel-shifts: cannot read {item!r}: expected dy,dx pairs separated by ';', e.g. '0,0.5;0.5,0.5'",
    )
    assert not out.exists()


def test_resume_at_a_run_with_other_settings(capsys, folder, tmp_path):
    out = tmp_path / "out"
    arguments = ["evaluate", "--model", f"{NETS}:small_classifier", "--data", str(folder), *COMMON, "--out", str(out)]
    status, _, err = run(capsys, *arguments, "--metrics", "consistency")
    assert status == 0, err
    before = snapshot(out)
    status, _, err = run(capsys, *arguments, "--metrics", "consistency", "--seed", "3", "--resume")
    assert_one_line_error(
        status,
        err,
        f"--resume: '{out / 'checkpoint.pt'}' was made with other settings (seed: 0 there, 3 here);"
        " start a new run instead",
    )
    status, _, err = run(capsys, *arguments, "--metrics", "consistency,diagonal", "--resume")
    assert status == 2 and "metrics.diagonal is new here" in err
    assert snapshot(out) == before
    status, _, err = run(capsys, *arguments, "--metrics", "consistency", "--resume")
    assert status == 0 and snapshot(out)["evaluation.json"] == before["evaluation.json"]


def test_python_dash_m_shiftlab(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "shiftlab", "evaluate", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SOURCE)},
        timeout=120,
    )
    assert completed.returncode == 0 and "--resume" in completed.stdout


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SOURCE}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
@needs_loopback
def test_two_processes_under_torchrun_give_the_single_process_numbers(capsys, folder, tmp_path):
    arguments = ["--model", f"{NETS}:small_classifier", "--data", str(folder), *COMMON, "--batch-size", "8"]
    arguments += ["--metrics", "consistency,imagenet-p,diagonal", "--checkpoint-every", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun process: kernels may split float work by thread count
    try:
        status, _, err = run(capsys, "evaluate", *arguments, "--out", str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    completed = run_group(
        launcher + ["-m", "shiftlab", "evaluate", *arguments, "--out", str(tmp_path / "two")], 240, env=_environment()
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stderr.count("shiftlab: skipped") == 1  # reported by the main process only
    assert (tmp_path / "two" / "evaluation.json").read_text() == (tmp_path / "one" / "evaluation.json").read_text()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_numbers(capsys, folder, tmp_path, single_thread):
    """The reference runs on one thread, as the subprocesses do (OMP_NUM_THREADS=1): kernels may split float work
    by thread count, and the MAC, summed in units of 2**-32, would see the last bits."""
    arguments = ["evaluate", "--model", f"{NETS}:Slow", "--data", str(folder), *COMMON, "--batch-size", "8"]
    arguments += ["--metrics", "consistency,imagenet-p,diagonal", "--checkpoint-every", "1"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    command = [sys.executable, "-m", "shiftlab", *arguments, "--out", str(interrupted)]
    partial = interrupted / "checkpoint.partial.json"
    done = kill_when(command, _environment(SHIFTLAB_TEST_SLEEP="0.25"), partial, "packs_done", 3, timeout=120)
    assert 3 <= done["packs_done"] < done["packs"]
    assert not (interrupted / "evaluation.json").exists() and not (interrupted / "report.html").exists()
    resumed = run_group(command + ["--resume"], 240, env=_environment())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status, _, err = run(capsys, *arguments, "--out", str(reference))
    assert status == 0, err
    assert (interrupted / "evaluation.json").read_text() == (reference / "evaluation.json").read_text()


@pytest.mark.slow
def test_loader_workers_do_not_change_the_numbers(capsys, folder, tmp_path):
    arguments = ["evaluate", "--model", f"{NETS}:small_classifier", "--data", str(folder), *COMMON]
    arguments += ["--metrics", "consistency,diagonal"]
    status, _, err = run(capsys, *arguments, "--out", str(tmp_path / "alone"))
    assert status == 0, err
    status, _, err = run(capsys, *arguments, "--workers", "2", "--out", str(tmp_path / "workers"))
    assert status == 0, err
    alone, workers = (json.loads((tmp_path / name / "evaluation.json").read_text()) for name in ("alone", "workers"))
    # only the record of how the images were decoded differs
    assert alone["protocol"].pop("loader") == {"workers": 0, "chosen": "given"}
    assert workers["protocol"].pop("loader") == {"workers": 2, "chosen": "given"}
    assert workers == alone


@pytest.mark.slow
def test_bundled_digits_reproduce_the_shipped_accuracy(capsys, tmp_path):
    """evaluate's unshifted accuracy of digits_cnn on --data digits equals what its training script recorded."""
    record = json.loads((SOURCE / "shiftlab" / "assets" / "digits_cnn_baseline.json").read_text())
    out = tmp_path / "digits"
    arguments = ["evaluate", "--model", "digits_cnn", "--data", "digits", "--workers", "0", "--out", str(out)]
    status, stdout, err = run(capsys, *arguments, "--metrics", "shift-accuracy", "--shifts", "0,0")
    assert status == 0, err
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["protocol"]["data"]["classes"] == [str(digit) for digit in range(10)]
    accuracy = evaluation["results"]["digits_cnn"]["shift-accuracy"]
    assert accuracy["images"] == record["test_images"] == 1000
    assert round(accuracy["accuracy_unshifted"] * accuracy["images"]) == record["test_correct"]


@pytest.mark.slow
def test_demo_evaluation_section():
    from shiftlab.experiments.evaluation import DEMO_DIGITS, demo_evaluation_sections

    sections = demo_evaluation_sections()
    assert [section.key for section in sections] == [
        "evaluation",
        "evaluate-consistency",
        "evaluate-diagonal",
        "evaluate-imagenet-p",
    ]
    assert sections[0].data["images"] == {"total": DEMO_DIGITS, "evaluated": DEMO_DIGITS, "skipped": 0}
    consistency = sections[1].data["results"]["digits_cnn"]
    assert 0.5 < consistency["consistency"] < 1.0  # a zero-padded, strided network: high, and not perfect
    assert all(finding.holds is not False for section in sections for finding in section.findings)


def test_weights_per_model(capsys, folder, tmp_path):
    from evaluation_nets import small_classifier

    weights = tmp_path / "trained.pt"
    model = small_classifier()
    with torch.no_grad():
        model[-1].bias.copy_(torch.arange(10.0))  # class 9 wins everywhere: a different model
    torch.save(model.state_dict(), weights)
    spec = f"{NETS}:small_classifier"
    arguments = ["evaluate", "--model", spec, "--weights", str(weights), "--model", spec, "--weights", "-"]
    arguments += ["--data", str(folder), *COMMON, "--metrics", "diagonal", "--out", str(tmp_path / "out")]
    status, _, err = run(capsys, *arguments)
    assert status == 0, err
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert evaluation["models"] == [f"{spec} (trained.pt)", spec]
    assert evaluation["protocol"]["models"][f"{spec} (trained.pt)"]["weights"]["file"] == str(weights)
    status, _, err = run(
        capsys, "evaluate", "--model", spec, "--model", spec, "--weights", str(weights), *arguments[9:]
    )
    assert_one_line_error(status, err, "weights: give one weights file per model (2 model(s), 1 weights file(s))")


def test_bad_workers(capsys, folder, tmp_path):
    out = tmp_path / "out"
    status, _, err = run(capsys, "evaluate", "--model", f"{NETS}:small_classifier", "--data", str(folder),
                         "--workers", "two", "--out", str(out))  # fmt: skip
    assert_one_line_error(status, err, "--workers: expected a number of processes or auto, got 'two'")
    assert not out.exists()


# --------------------------------------------------------------------------- hostile names, bad protocols, failures


def evaluate_cli(capsys, data: Path, out: Path, *options: str, model: str = "small_classifier"):
    """``shiftlab evaluate`` of a test net on ``data`` into ``out``, images decoded in this process."""
    return run(capsys, "evaluate", "--model", f"{NETS}:{model}", "--data", str(data), "--workers", "0", *options,
               "--out", str(out))  # fmt: skip


def _photos(root: Path, count: int, size: tuple[int, int] = (24, 28), seed: int = 1) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(root / f"{index:02d}.png")


def test_names_that_are_not_utf8_or_hold_line_breaks(capsys, tmp_path):
    """Any bytes in a file or model name: the run finishes, every output is written, the JSON keeps the bytes,
    names stay on one line, and --resume works."""
    root = tmp_path / "photos"
    _photos(root, 3)
    Image.open(root / "00.png").save(root / os.fsdecode(b"\xfegood.png"))  # a good image, its name not UTF-8
    (root / os.fsdecode(b"\xff.png")).write_bytes(b"")
    (root / "a\nb.png").write_bytes(b"not an image")
    nets = tmp_path / os.fsdecode(b"n\xffets.py")
    nets.write_bytes(NETS.read_bytes())
    out = tmp_path / "out"
    arguments = ["evaluate", "--model", f"{nets}:small_classifier", "--data", str(root), *COMMON]
    arguments += ["--metrics", "consistency,imagenet-p", "--out", str(out)]
    status, stdout, err = run(capsys, *arguments)
    assert status == 0, err
    assert err.splitlines() == [
        f"shiftlab: skipped image '{root}/a\\nb.png': is not an image Pillow can read (unknown or corrupt format)",
        f"shiftlab: skipped image '{root}/\\xff.png': is an empty file (0 bytes)",
    ]
    assert "4 of 6 images evaluated, 2 skipped" in stdout
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    label = f"{tmp_path}/n\\xffets.py:small_classifier"
    assert evaluation["models"] == [label]
    assert evaluation["protocol"]["models"][label]["spec"] == label
    assert bytes.fromhex(evaluation["protocol"]["models"][label]["spec_bytes"]) == os.fsencode(
        f"{nets}:small_classifier"
    )
    assert evaluation["skipped"] == [
        {
            "index": 3,
            "name": f"{root}/a\\nb.png",
            "kind": "unreadable",
            "reason": f"image '{root}/a\\nb.png': is not an image Pillow can read (unknown or corrupt format)",
        },
        {
            "index": 5,
            "name": f"{root}/\\xff.png",
            "name_bytes": os.fsencode(root / os.fsdecode(b"\xff.png")).hex(),
            "kind": "unreadable",
            "reason": f"image '{root}/\\xff.png': is an empty file (0 bytes)",
        },
    ]
    assert f"{root}/\\xff.png" in (out / "report.html").read_text(encoding="utf-8")
    assert label in (out / "evaluation.csv").read_text(encoding="utf-8")
    before = (out / "evaluation.json").read_bytes()
    (out / "evaluation.json").unlink()
    status, _, err = run(capsys, *arguments, "--resume")
    assert status == 0, err
    assert (out / "evaluation.json").read_bytes() == before


def test_dollar_signs_in_model_and_weights_names_are_text_not_maths(capsys, tmp_path):
    """matplotlib reads '$...$' as maths: a model or weights file named so must still get its figures."""
    from evaluation_nets import small_classifier

    model_file = tmp_path / "d$\\bad$.py"
    model_file.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom evaluation_nets import small_classifier as build\n"
    )
    weights = tmp_path / "w$\\x$.pt"
    torch.save(small_classifier().state_dict(), weights)
    out = tmp_path / "out"
    status, _, err = run(
        capsys, "evaluate", "--model", f"{model_file}:build", "--model", f"{NETS}:small_classifier",
        "--weights", "-", "--weights", str(weights), "--data", str(_folder_of(tmp_path)), *COMMON,
        "--metrics", "consistency,imagenet-p", "--out", str(out),
    )  # fmt: skip
    assert status == 0, err
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2
    assert f"{NETS}:small_classifier (w$\\x$.pt)" in json.loads((out / "evaluation.json").read_text())["models"]


def _folder_of(tmp_path: Path) -> Path:
    root = tmp_path / "few"
    _photos(root, 4)
    return root


def test_a_model_that_outputs_nan_is_refused_naming_it_and_the_image(capsys, tmp_path):
    out = tmp_path / "out"
    root = _folder_of(tmp_path)
    status, _, err = evaluate_cli(capsys, root, out, *COMMON, "--metrics", "consistency", model="NaNLogits")
    assert_one_line_error(
        status,
        err,
        f"model '{NETS}:NaNLogits': outputs NaN or infinity for image '{root / '00.png'}': no score can be computed"
        " from that (check the model and its weights)",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--crop", "64"], "is 40x40, smaller than the 64x64 crop"),
        (
            ["--crop", "32", "--metrics", "crop-consistency", "--max-shift", "100"],
            "too small for crop-consistency: needs 131x131 pixels (a 32x32 window at offsets 0 to 99), the image"
            " has 40x40",
        ),
    ],
)
def test_a_run_in_which_no_image_can_be_evaluated_exits_2(capsys, tmp_path, options, reason):
    root = tmp_path / "small"
    _photos(root, 5, size=(40, 40))
    out = tmp_path / "out"
    status, _, err = evaluate_cli(capsys, root, out, "--metrics", "consistency", *options)
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"shiftlab: error: data: no image could be evaluated (all 5 skipped); the first: image '{root / '00.png'}':"
        f" {reason}"
    )
    assert not (out / "evaluation.json").exists()


def test_a_crop_protocol_without_a_crop_is_refused_up_front(capsys, tmp_path):
    status, _, err = evaluate_cli(
        capsys, _folder_of(tmp_path), tmp_path / "out", "--metrics", "diagonal", "--diagonal-mode", "crop"
    )
    assert_one_line_error(
        status,
        err,
        "metric diagonal: cuts windows around the model input, and without a crop the input is the whole image:"
        " give a crop smaller than the images (e.g. --resize 256 --crop 224)",
    )


def test_offsets_0_to_r_minus_1_fit_crop_plus_r_minus_1_pixels(capsys, tmp_path):
    """25x25 faces, 24x24 windows at offsets 0 and 1: they fit (the issue's reproducer)."""
    root = tmp_path / "faces"
    _photos(root, 5, size=(25, 25))
    out = tmp_path / "out"
    options = ["--crop", "24", "--metrics", "crop-consistency", "--max-shift", "2", "--views", "4"]
    status, stdout, err = evaluate_cli(capsys, root, out, *options)
    assert status == 0, err
    assert "5 of 5 images evaluated, 0 skipped" in stdout


def test_many_skipped_images_are_summarised_not_listed(capsys, tmp_path):
    root = tmp_path / "mixed"
    _photos(root, 2)
    for index in range(8):
        (root / f"broken{index}\n.png").write_bytes(b"garbage")
    for index in range(2):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / f"tiny{index}.png")
    out = tmp_path / "out"
    options = ["--crop", "20", "--metrics", "consistency", "--views", "2", "--max-shift", "2"]
    status, _, err = evaluate_cli(capsys, root, out, *options)
    assert status == 0, err
    lines = err.splitlines()
    assert lines[:5] == [
        f"shiftlab: skipped image '{root}/broken{index}\\n.png': is not an image Pillow can read"
        " (unknown or corrupt format)"
        for index in range(5)
    ]
    assert lines[5:] == [
        "shiftlab: more images skipped: counted, and listed in evaluation.json (a summary follows)",
        "shiftlab: 10 image(s) skipped: 8 unreadable, 2 too small; every one is listed in evaluation.json",
    ]
    skipped = json.loads((out / "evaluation.json").read_text())["skipped"]
    assert [item["kind"] for item in skipped] == ["unreadable"] * 8 + ["too small"] * 2


def test_labels_no_metric_uses_are_ignored_with_a_note(capsys, tmp_path):
    """3 class folders and a model with 10 outputs: consistency uses no labels, so the run goes ahead."""
    for name in ("cat", "dog", "fox"):
        _photos(tmp_path / "classes" / name, 2)
    out = tmp_path / "out"
    model = ["evaluate", "--model", f"{NETS}:small_classifier", "--data", str(tmp_path / "classes"), *COMMON]
    status, stdout, err = run(capsys, *model, "--metrics", "consistency", "--out", str(out))
    assert status == 0, err
    assert err.splitlines() == [
        "shiftlab: note: the data's labels (3 classes) are ignored: no metric asked for uses them (consistency)"
    ]
    assert "6 of 6 images evaluated" in stdout
    status, _, err = run(capsys, *model, "--metrics", "consistency,shift-accuracy", "--out", str(out))
    assert_one_line_error(
        status,
        err,
        f"classes: the data has 3 classes (cat, dog, fox), but model '{NETS}:small_classifier' gives 10 outputs",
    )


def test_an_interrupted_run_says_where_its_counts_are_and_resumes(capsys, tmp_path, monkeypatch):
    arguments = ["evaluate", "--model", f"{NETS}:Stopping", "--data", str(_folder_of(tmp_path)), *COMMON]
    arguments += ["--metrics", "consistency", "--batch-size", "4", "--checkpoint-every", "1"]
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    monkeypatch.setenv("SHIFTLAB_TEST_FAIL", "interrupt")
    monkeypatch.setenv("SHIFTLAB_TEST_FAIL_AT", "1")  # the check before the run: nothing written yet
    status, _, err = run(capsys, *arguments, "--out", str(interrupted))
    assert (status, err) == (130, "shiftlab: interrupted; nothing was written\n")
    assert not interrupted.exists()
    monkeypatch.setenv("SHIFTLAB_TEST_FAIL_AT", "4")  # the third pack: two are in the checkpoint
    status, _, err = run(capsys, *arguments, "--out", str(interrupted))
    checkpoint = interrupted / "checkpoint.pt"
    assert (status, err) == (
        130,
        f"shiftlab: interrupted; the counts so far are kept in '{checkpoint}': the same run with --resume"
        " (resume=True) continues from there\n",
    )
    monkeypatch.delenv("SHIFTLAB_TEST_FAIL")
    monkeypatch.delenv("SHIFTLAB_TEST_FAIL_AT")
    status, _, err = run(capsys, *arguments, "--out", str(interrupted), "--resume")
    assert status == 0, err
    status, _, err = run(capsys, *arguments, "--out", str(reference))
    assert status == 0, err
    assert (interrupted / "evaluation.json").read_text() == (reference / "evaluation.json").read_text()


def test_a_long_data_path_is_an_input_that_cannot_be_read(capsys, tmp_path):
    data = tmp_path / ("d" * 300)
    status, _, err = evaluate_cli(capsys, data, tmp_path / "o")
    assert_one_line_error(status, err, f"data '{data}': cannot be read (File name too long)")


def test_links_that_lead_nowhere_are_skipped_and_counted(capsys, tmp_path):
    root = _folder_of(tmp_path)
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    out = tmp_path / "out"
    status, stdout, err = evaluate_cli(capsys, root, out, *COMMON, "--metrics", "consistency")
    assert status == 0, err
    assert err.splitlines() == [
        f"shiftlab: skipped image '{root / 'dangling.png'}': is a symbolic link to '{tmp_path / 'gone.png'}',"
        " which does not exist",
        f"shiftlab: skipped image '{root / 'loop.png'}': is a symbolic link loop (it never reaches a file)",
    ]
    assert "4 of 6 images evaluated, 2 skipped" in stdout


@pytest.mark.slow
def test_too_many_workers_warn_once(monkeypatch):
    """torch warns when the loader has more workers than this machine's CPUs, once when it is made and again when
    it starts: shown once. (One CPU, as torch sees it, and two workers.)"""
    import warnings

    from shiftlab.invariance.datasets import EvaluationDataset, load_batches, open_images

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    dataset = EvaluationDataset(open_images(torch.rand(2, 3, 8, 8)), channels=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [len(batch) for batch in load_batches(dataset, [[0], [1]], workers=2)] == [1, 1]
    messages = [str(item.message) for item in caught if "worker processes" in str(item.message)]
    assert len(messages) == 1, messages


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail", "kill"])
@needs_loopback
def test_under_torchrun_a_failed_or_killed_process_is_named_as_such_by_the_other(folder, tmp_path, how):
    """Process 1 fails (its own one line) or is killed: process 0 says it lost its peer, in one line, never
    'internal error'."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    arguments = ["evaluate", "--model", f"{NETS}:Stopping", "--data", str(folder), *COMMON, "--batch-size", "8"]
    arguments += ["--metrics", "consistency", "--checkpoint-every", "1", "--out", str(tmp_path / "out")]
    environment = _environment(SHIFTLAB_TEST_FAIL=how, SHIFTLAB_TEST_FAIL_AT="3", SHIFTLAB_TEST_FAIL_RANK="1")
    completed = run_group(launcher + ["-m", "shiftlab", *arguments], 240, env=environment)
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line.startswith("shiftlab:")]
    survivor = (
        "shiftlab: error: torchrun: process 0 of 2 stops: another process of the group failed or was killed (see its"
        " own message), and the connection to it broke; the counts so far are kept in"
        f" '{tmp_path / 'out' / 'checkpoint.pt'}': the same run with --resume (resume=True) continues from there"
    )
    failed = (
        f"shiftlab: error: model '{NETS}:Stopping': fails on inputs of shape 6x3x20x20: RuntimeError: out of memory"
        " (a test)"
    )
    assert sorted(lines) == sorted([survivor] + ([failed] if how == "fail" else [])), completed.stderr[-3000:]
    assert "internal error" not in completed.stderr


def test_auto_metrics_take_crop_consistency_when_the_images_hold_its_windows():
    """metrics auto: crop-consistency once the resize holds crop + R - 1 pixels (224 + 31 = 255); diagonal mode auto:
    crop windows once the resize leaves any room around the crop."""
    from shiftlab.invariance.catalog import MetricChoice, ProtocolOptions

    choice = MetricChoice("auto", ProtocolOptions(max_shift=32, diagonal_mode="auto"))

    def auto(resize: int | None, crop: int | None = 224) -> dict[str, str]:
        return {metric.name: getattr(metric, "mode", "") for metric in choice.protocols(resize, crop, labelled=False)}

    assert "crop-consistency" in auto(255) and "crop-consistency" not in auto(254)
    assert auto(225)["diagonal"] == "crop" and auto(224)["diagonal"] == "circular"
    assert auto(None, None) == {"consistency": "circular", "subpixel": "", "imagenet-p": "", "diagonal": "circular"}
    named = MetricChoice(["cosine"], ProtocolOptions(diagonal_mode="auto"))  # names given: no auto choice of metrics
    assert [metric.name for metric in named.protocols(None, None, True)] == ["cosine"]
    with pytest.raises(ShiftlabError) as error:
        MetricChoice(["consistency", "colour"])
    assert str(error.value) == (
        "metrics: unknown metric 'colour'; choose from consistency, crop-consistency, shift-accuracy, subpixel, "
        "imagenet-p, diagonal, cosine, dense-consistency (or auto)"
    )
