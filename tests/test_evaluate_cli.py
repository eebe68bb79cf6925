"""`shiftlab evaluate`: outputs, one-line errors with exit status 2 and nothing written, torchrun, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, run_group
from PIL import Image

from shiftlab import cli

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
        " (N, classes); for a model without classes use --metrics cosine",
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
def test_a_killed_run_resumes_to_the_uninterrupted_numbers(capsys, folder, tmp_path):
    arguments = ["evaluate", "--model", f"{NETS}:Slow", "--data", str(folder), *COMMON, "--batch-size", "8"]
    arguments += ["--metrics", "consistency,imagenet-p,diagonal", "--checkpoint-every", "1"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    command = [sys.executable, "-m", "shiftlab", *arguments, "--out", str(interrupted)]
    process = subprocess.Popen(
        command, env=_environment(SHIFTLAB_TEST_SLEEP="0.25"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = interrupted / "checkpoint.partial.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and json.loads(partial.read_text())["packs_done"] >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    done = json.loads(partial.read_text())
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
    assert (tmp_path / "workers" / "evaluation.json").read_text() == (
        tmp_path / "alone" / "evaluation.json"
    ).read_text()


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
