"""The `shiftlab` command: outputs, messages, exit status 2 on bad input, and no partial output."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab import cli
from shiftlab.models import SimpleCNN


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shiftlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture
def bad_images(tmp_path: Path) -> dict[str, Path]:
    """One file per kind of bad image input."""
    good = tmp_path / "good.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 255).astype(np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    bomb = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )
    nan = tmp_path / "nan.tiff"
    values = np.full((8, 8), 0.5, dtype=np.float32)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(nan)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return {
        "missing": tmp_path / "missing.png",
        "folder": folder,
        "text": text,
        "truncated": truncated,
        "empty": empty,
        "bomb": bomb,
        "nan": nan,
    }


EXPECTED = {
    "missing": "no such file",
    "folder": "is a directory",
    "text": "is not an image",
    "truncated": "truncated or corrupt",
    "empty": "empty file",
    "bomb": "decompression bomb",
    "nan": "NaN or Inf",
}


class TestBadImages:
    @pytest.mark.parametrize("kind", sorted(EXPECTED))
    @pytest.mark.parametrize("command", ["edges", "pool"])
    def test_one_line_exit_2_and_no_output(self, capsys, tmp_path, bad_images, kind, command):
        out = tmp_path / "out"
        status, stdout, err = run(capsys, command, str(bad_images[kind]), "--out", str(out))
        assert_one_line_error(status, err, str(bad_images[kind]), EXPECTED[kind])
        assert stdout == ""
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging")]

    @pytest.mark.parametrize("kind", ["missing", "text", "truncated"])
    def test_probe_images_too(self, capsys, tmp_path, bad_images, kind):
        out = tmp_path / "probe"
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--images", str(bad_images[kind]), "--out", str(out)
        )
        assert_one_line_error(status, err, EXPECTED[kind])
        assert not out.exists()


class TestEdges:
    def test_sample_writes_figure_and_map(self, capsys, tmp_path):
        status, stdout, err = run(capsys, "edges", "chelsea", "--out", str(tmp_path / "e"))
        assert status == 0, err
        assert "300x451 -> edge map 298x449" in stdout
        edges = np.load(tmp_path / "e" / "chelsea_edges.npy")
        assert edges.shape == (298, 449) and edges.min() >= 0
        with Image.open(tmp_path / "e" / "chelsea_edges.png") as figure:
            assert figure.size[0] > 500

    def test_kernel_literal_npy_and_svg(self, capsys, tmp_path):
        kernel = tmp_path / "k.npy"
        np.save(kernel, np.array([[1.0, -1.0]]))
        for spec in ("[[1, -1]]", "1 -1", str(kernel)):
            status, _, err = run(
                capsys,
                "edges",
                "pixel_a",
                "--kernel",
                spec,
                "--no-relu",
                "--format",
                "svg",
                "--out",
                str(tmp_path / "k"),
            )
            assert status == 0, err
            edges = np.load(tmp_path / "k" / "pixel_a_edges.npy")
            assert edges.shape == (10, 9)
            assert edges[2, 1] == -1.0 and edges[2, 2] == 1.0  # [1, -1] . [x, y] = x - y
        assert (tmp_path / "k" / "pixel_a_edges.svg").read_text().lstrip().startswith("<?xml")

    @pytest.mark.parametrize(
        ("kernel", "fragment"),
        [
            ("sobel_q", "unknown name 'sobel_q'"),
            ("[[1, 2], [3]]", "rows of equal length"),
            ("missing.npy", "not found"),
        ],
    )
    def test_bad_kernel(self, capsys, tmp_path, kernel, fragment):
        status, _, err = run(capsys, "edges", "chelsea", "--kernel", kernel, "--out", str(tmp_path / "x"))
        assert_one_line_error(status, err, fragment)
        assert not (tmp_path / "x").exists()

    def test_image_smaller_than_kernel(self, capsys, tmp_path):
        small = tmp_path / "small.png"
        Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(small)
        status, _, err = run(capsys, "edges", str(small), "--out", str(tmp_path / "x"))
        assert_one_line_error(status, err, "smaller than the 3x3 kernel")


class TestPool:
    def test_levels_and_npz(self, capsys, tmp_path):
        status, stdout, _ = run(capsys, "pool", "pixel_b", "--iterations", "3", "--out", str(tmp_path / "p"))
        assert status == 0
        assert stdout.splitlines()[:4] == ["level 0: 10 x 10", "level 1: 5 x 5", "level 2: 2 x 2", "level 3: 1 x 1"]
        levels = np.load(tmp_path / "p" / "pixel_b_pyramid.npz")
        assert np.argwhere(levels["level2"]).tolist() == [[1, 1]]

    def test_edges_first(self, capsys, tmp_path):
        status, stdout, _ = run(
            capsys, "pool", "coffee", "--edges", "sobel_y", "--iterations", "6", "--out", str(tmp_path / "p")
        )
        assert status == 0
        assert "level 6: 6 x 9" in stdout  # the article's last map

    def test_too_many_iterations(self, capsys, tmp_path):
        status, _, err = run(capsys, "pool", "pixel_a", "--iterations", "4", "--out", str(tmp_path / "p"))
        assert_one_line_error(status, err, "at most 3 do")
        assert not (tmp_path / "p").exists()


def summary_lines(stdout: str) -> list[str]:
    """The probe's summary on the command line: from its first line, the shift mode, on."""
    lines = stdout.splitlines()
    return lines[next(index for index, line in enumerate(lines) if line.startswith("shift mode: ")) :]


class TestProbe:
    def test_bundled_model_writes_report_csv_json(self, capsys, tmp_path):
        out = tmp_path / "probe"
        status, stdout, err = run(
            capsys,
            "probe",
            "--model",
            "simple_cnn",
            "--images",
            "pixel_a",
            "chelsea",
            "--size",
            "32",
            "--shifts",
            "0:4",
            "--out",
            str(out),
        )
        assert status == 0, err
        assert {p.name for p in out.iterdir()} == {"report.html", "results.json", "probe.csv", "probe.json"}
        table = json.loads((out / "probe.json").read_text())
        assert table["protocol"]["model"] == "simple_cnn" and table["protocol"]["images"] == 2
        assert len(table["rows"]) == 4 * len(table["summary"])
        assert "features.0" in stdout and "output" in stdout

    CHANNELS_FIRST_TOKENS = (
        "import torch\nfrom torch import nn\n\n"
        "class Tokens(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embed = nn.Conv2d(3, 4, 2, stride=2)\n"
        "        self.mix = nn.Identity()\n\n"
        "    def forward(self, x):\n"
        "        return self.mix(self.embed(x).flatten(2))  # (N, C, L): no layout shiftlab reads\n"
    )

    def test_unknown_layouts_listed_once_with_their_override(self, capsys, tmp_path):
        (tmp_path / "tokens.py").write_text(self.CHANNELS_FIRST_TOKENS)
        spec = f"{tmp_path / 'tokens.py'}:Tokens"
        common = ["probe", "--model", spec, "--images", "chelsea", "--size", "16", "--shifts", "0:3"]
        status, stdout, err = run(capsys, *common, "--layers", "embed,mix", "--out", str(tmp_path / "a"))
        assert status == 0, err
        lines = summary_lines(stdout)
        assert lines[0].startswith("shift mode: circular (auto: no layer pads or cuts the border")
        assert "layout" in lines[1] and any(line.startswith("embed ") and " NCHW " in line for line in lines)
        assert "2 layer(s) with a layout shiftlab could not establish, and so no number:" in stdout
        assert sum("measure it with" in line for line in lines) == 2
        assert any(line.strip().startswith("mix (4, 64): axes [2]") and "--layout 'mix=NCHW'" in line for line in lines)
        # the unknown rows: no stride, no count of exact shifts (n/a), not "global" and "0/2"
        (mix,) = [line.split() for line in lines if line.startswith("mix ")]
        assert mix == ["mix", "Identity", "unknown", "n/a", "n/a", "n/a", "n/a"]
        status, stdout, err = run(
            capsys, *common, "--layers", "embed,mix", "--layout", "mix=global", "--layout", "output=global",
            "--stride", "embed=2,2", "--out", str(tmp_path / "b"),
        )  # fmt: skip
        assert status == 0, err
        assert "could not establish" not in stdout
        rows = json.loads((tmp_path / "b" / "probe.json").read_text())["summary"]
        assert {row["layer"]: row["layout"] for row in rows} == {"embed": "NCHW", "mix": "global", "output": "global"}

    def test_the_default_mode_is_auto_and_says_why(self, capsys, tmp_path):
        # resnet18 pads with zeros: crop shifts, and conv1 exact at the even shifts, 3 of 7 (circular shifts would
        # give 0 of 7, the wrap-around seam at the zero padding)
        out = tmp_path / "o"
        status, stdout, err = run(capsys, "probe", "--model", "resnet18", "--images", "chelsea", "--size", "64",
                                  "--layers", "conv1", "--out", str(out))  # fmt: skip
        assert status == 0, err
        lines = summary_lines(stdout)
        assert lines[0] == (
            "shift mode: crop (auto: 17 layers pad with zeros (conv1, layer1.0.conv1, layer1.0.conv2 and 14 more); 1 "
            "layer pads with -inf (maxpool))"
        )
        (conv1,) = [line.split() for line in lines if line.startswith("conv1 ")]
        assert conv1[3] == "2" and conv1[-1] == "3/7"
        protocol = json.loads((out / "probe.json").read_text())["protocol"]
        assert protocol["mode"] == "crop" and protocol["mode_reason"].startswith("auto: 17 layers pad with zeros")
        assert "(mode auto: 17 layers pad with zeros (conv1, " in (out / "report.html").read_text()
        status, stdout, err = run(capsys, "probe", "--model", "resnet18", "--images", "chelsea", "--size", "64",
                                  "--layers", "conv1", "--mode", "circular", "--out", str(tmp_path / "c"))  # fmt: skip
        assert status == 0, err
        assert summary_lines(stdout)[0] == "shift mode: circular"
        (conv1,) = [line.split() for line in stdout.splitlines() if line.startswith("conv1 ")]
        assert conv1[-1] == "0/7"

    LONG_TYPE_NAME = (
        "from torch import nn\n\n"
        "class SwinTransformerStageWithALongName(nn.Identity):\n"
        "    pass\n\n"
        "def build():\n"
        "    return nn.Sequential(SwinTransformerStageWithALongName(), SwinTransformerStageWithALongName())\n"
    )

    def test_long_type_names_are_not_cut(self, capsys, tmp_path):
        (tmp_path / "long.py").write_text(self.LONG_TYPE_NAME)
        spec = f"{tmp_path / 'long.py'}:build"
        status, stdout, err = run(capsys, "probe", "--model", spec, "--images", "chelsea", "--size", "16",
                                  "--shifts", "0:2", "--layers", "0,1", "--out", str(tmp_path / "o"))  # fmt: skip
        assert status == 0, err
        rows = [line.split() for line in summary_lines(stdout)[2:] if line.startswith(("0 ", "1 "))]
        assert [row[1] for row in rows] == ["SwinTransformerStageWithALongName"] * 2
        header = summary_lines(stdout)[1]
        assert header.index("layout") > header.index("type") + len("SwinTransformerStageWithALongName")

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            (["--layout", "mix"], "layouts: expected PATTERN=VALUE, got 'mix'"),
            (["--layout", "mix=NCWH"], "layout: must be one of NCHW, NHWC, tokens, global, got 'NCWH'"),
            (["--stride", "mix=0,2"], "stride of 'mix': must be an integer >= 1, got 0"),
        ],
    )
    def test_bad_layout_and_stride_options(self, capsys, tmp_path, option, message):
        out = tmp_path / "never"
        status, _, err = run(capsys, "probe", "--model", "simple_cnn", "--images", "chelsea", "--size", "16", *option,
                             "--out", str(out))  # fmt: skip
        assert_one_line_error(status, err, message)
        assert not out.exists()

    def test_user_module_and_weights(self, capsys, tmp_path, monkeypatch):
        module = tmp_path / "mynets.py"
        module.write_text(
            "from shiftlab.models import SimpleCNN\n\ndef build():\n    return SimpleCNN(in_channels=1, classes=3)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        weights = tmp_path / "w.pt"
        torch.save(SimpleCNN(in_channels=1, classes=3).state_dict(), weights)
        status, stdout, err = run(
            capsys,
            "probe",
            "--model",
            "mynets:build",
            "--weights",
            str(weights),
            "--images",
            "pixel_a",
            "--shifts",
            "grid:0:2",
            "--out",
            str(tmp_path / "o"),
        )
        assert status == 0, err
        assert "output" in stdout

    @pytest.mark.parametrize(
        ("argv", "fragment"),
        [
            (["--model", "no_such_net"], "unknown model 'no_such_net'"),
            (["--model", "simple_cnn", "--shifts", "3:1"], "is empty"),
            (["--model", "simple_cnn", "--layers", "nothing*"], "matches no module"),
            (
                ["--model", "simple_cnn", "--device", "cuda:7"]
                if not torch.cuda.is_available()
                else ["--model", "simple_cnn", "--device", "tpu"],
                "device",
            ),
            (
                ["--model", "simple_cnn", "--mode", "zero", "--shifts", "0,40", "--images", "pixel_a"],
                "out of the frame",
            ),
            (["--model", "vgg11", "--images", "pixel_a", "--mode", "circular"], "rejected an input of shape"),
        ],
    )
    def test_bad_input(self, capsys, tmp_path, argv, fragment):
        status, _, err = run(capsys, "probe", *argv, "--out", str(tmp_path / "o"))
        assert_one_line_error(status, err, fragment)
        assert not (tmp_path / "o").exists()

    def test_mismatched_weights(self, capsys, tmp_path):
        weights = tmp_path / "other.pt"
        torch.save(SimpleCNN(classes=7).state_dict(), weights)
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--weights", str(weights), "--out", str(tmp_path / "o")
        )
        assert_one_line_error(status, err, "do not fit the model", "wrong shape")

    def test_pickled_object_refused(self, capsys, tmp_path):
        weights = tmp_path / "model.pt"
        torch.save(SimpleCNN(), weights)  # a whole pickled module, not a state_dict
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--weights", str(weights), "--out", str(tmp_path / "o")
        )
        assert_one_line_error(status, err, "weights_only")


class TestRoundingLevel:
    def test_errors_at_rounding_level_are_printed_as_such(self, capsys, tmp_path):
        """circular_cnn is exactly equivariant to circular shifts: its errors are float rounding, whose digits
        differ from one CPU to the next; the table, the report and the findings print them as '< 1e-05'."""
        out = tmp_path / "o"
        status, stdout, err = run(
            capsys, "probe", "--model", "circular_cnn", "--images", "chelsea", "--size", "24", "--shifts", "grid:0:3",
            "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        summary = json.loads((out / "probe.json").read_text())["summary"]
        assert any(0 < row["max_rel_l2"] < 1e-5 for row in summary)  # rounding, not exact zeros
        report = json.loads((out / "results.json").read_text())["sections"]["probe"]
        for text in (stdout, json.dumps([report["tables"], report["findings"]])):
            assert "< 1e-05" in text and not re.search(r"\de-0[6-9]|\de-1\d", text), text


class TestProbeShiftsAndLayers:
    def test_shifts_beyond_the_image_refused_in_one_line(self, capsys, tmp_path):
        """The report's case: 0:1000 on a 10x10 image ran 1,000 forward passes of shifts that repeat."""
        common = ["probe", "--model", "simple_cnn", "--images", "pixel_a", "--shifts", "0:1000"]
        status, _, err = run(capsys, *common, "--mode", "circular", "--out", str(tmp_path / "o"))
        assert_one_line_error(
            status,
            err,
            "shifts: (0, 10) is not smaller than the 10x10 image: circular shifts repeat with its size, so it is "
            "(0, 0) again",
        )
        assert not (tmp_path / "o").exists()
        status, _, err = run(capsys, *common, "--mode", "crop", "--out", str(tmp_path / "o"))
        assert_one_line_error(
            status,
            err,
            "shifts: crop windows for shifts up to (0, 999) need an input of at least 1x1999 pixels, got 10x10",
        )
        assert not (tmp_path / "o").exists()

    def test_long_probe_announced_before_the_first_pass(self, capsys, tmp_path, monkeypatch):
        monkeypatch.setattr(cli, "LONG_PROBE_INPUTS", 8)
        common = ["probe", "--model", "simple_cnn", "--images", "pixel_a", "pixel_b", "--batch-size", "4"]
        status, _, err = run(capsys, *common, "--shifts", "0:4", "--out", str(tmp_path / "long"))
        assert status == 0, err
        # an image and its 3 shifted copies (the zero shift costs no input) fill a pass of 4: one pass per image
        assert "probe: 2 forward passes of up to 4 inputs (2 image(s) x 4 shifts); this takes a while" in err
        status, _, err = run(capsys, *common, "--shifts", "0:3", "--out", str(tmp_path / "short"))
        assert status == 0 and "forward passes" not in err

    def test_layers_output(self, capsys, tmp_path):
        """Every result has an output row; --layers output asks for it alone (and the explorer shows it)."""
        out = tmp_path / "o"
        status, stdout, err = run(
            capsys, "probe", "--model", "simple_cnn", "--images", "pixel_a", "--shifts", "0:3", "--layers", "output",
            "--explore", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        assert [row["layer"] for row in json.loads((out / "probe.json").read_text())["summary"]] == ["output"]
        (explorer,) = json.loads((out / "results.json").read_text())["sections"]["probe"]["explorers"]
        assert [layer["layer"] for layer in explorer["layers"]] == ["output"]
        lines = stdout.splitlines()
        header = next(index for index, line in enumerate(lines) if line.startswith("layer "))
        assert lines[header + 1].startswith("output ")


class TestAtomicOutput:
    def test_failure_while_writing_leaves_nothing(self, capsys, tmp_path, monkeypatch):
        def explode(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(np, "save", explode)
        out = tmp_path / "nested" / "out"
        status, _, err = run(capsys, "edges", "chelsea", "--out", str(out))
        assert_one_line_error(status, err, "No space left on device")
        assert not (tmp_path / "nested").exists()

    def test_existing_files_kept_and_replaced(self, capsys, tmp_path):
        out = tmp_path / "o"
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        assert run(capsys, "edges", "pixel_a", "--out", str(out))[0] == 0
        assert (out / "mine.txt").read_text() == "keep me"
        assert (out / "pixel_a_edges.npy").exists()

    def test_out_is_a_file(self, capsys, tmp_path):
        target = tmp_path / "file"
        target.write_text("x")
        status, _, err = run(capsys, "edges", "pixel_a", "--out", str(target))
        assert_one_line_error(status, err, "exists and is not a folder")


class TestEntryPoint:
    def test_console_script_help(self):
        # One real process for the entry point; every command's --help in this process (a process each costs
        # an import of torch, seconds).
        result = subprocess.run(
            [sys.executable, "-m", "shiftlab.cli", "--help"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "usage: shiftlab" in result.stdout

    @pytest.mark.parametrize("command", ["demo", "edges", "pool", "probe", "samples", "kernels"])
    def test_help_everywhere(self, command, capsys):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: shiftlab {command}" in capsys.readouterr().out

    def test_usage_error_is_exit_2(self, capsys):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["pool"])
        assert exit_info.value.code == 2
        assert "IMAGE" in capsys.readouterr().err

    def test_a_bug_in_shiftlab_is_reported_as_one_with_status_1(self, capsys, monkeypatch):
        # A fault inside the probe's hook: the traceback, a line asking for a report, status 1, nothing written.
        def broken(*args, **kwargs):
            raise IndexError("list index out of range")

        monkeypatch.setattr("shiftlab.probing.equivariance.pair_sums", broken)
        status, _, err = run(capsys, "probe", "--model", "circular_cnn", "--images", "pixel_a", "--out", "never")
        assert status == 1
        assert "Traceback (most recent call last)" in err and "IndexError: list index out of range" in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("shiftlab: shiftlab internal error: the probe's hook on layer")
        assert "a bug in shiftlab" in last and "please report it" in last
        assert not Path("never").exists()

    def test_samples_and_kernels_listed(self, capsys):
        status, stdout, _ = run(capsys, "samples")
        assert status == 0 and "chelsea_right" in stdout and "pixel_b" in stdout
        status, stdout, _ = run(capsys, "kernels")
        assert status == 0 and "sobel_y" in stdout and "vertical edges" in stdout


class TestProbeExplore:
    def test_explorer_in_the_report(self, capsys, tmp_path):
        out = tmp_path / "probe"
        status, printed, _ = run(
            capsys, "probe", "--model", "simple_cnn", "--images", "chelsea", "coffee", "--size", "24",
            "--shifts", "grid:0:3", "--mode", "crop", "--explore", "--explore-layers", "features.2,features.3,output",
            "--explore-channels", "2", "--out", str(out),
        )  # fmt: skip
        assert status == 0
        assert "MB, with the explorer)" in printed
        html = (out / "report.html").read_text()
        assert (
            html.count('class="explorer"') == 1 and '<script type="application/json" id="shiftlab-colormaps">' in html
        )
        report = json.loads((out / "results.json").read_text())
        (explorer,) = report["sections"]["probe"]["explorers"]
        assert [layer["layer"] for layer in explorer["layers"]] == ["features.2", "features.3", "output"]
        assert all(len(layer["channels"]) == 2 for layer in explorer["layers"][:2])
        probed = {
            (row["layer"], row["dy"], row["dx"]): row["rel_l2"]
            for row in json.loads((out / "probe.json").read_text())["rows"]
        }
        for layer in explorer["layers"]:
            assert len(layer["rows"]) == 9
            for row in layer["rows"]:
                assert row["rel_l2"] == probed[layer["layer"], row["dy"], row["dx"]]

    def test_explore_a_layer_not_probed(self, capsys, tmp_path):
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--images", "chelsea", "--size", "16", "--shifts", "0:2",
            "--explore", "--explore-layers", "nope", "--out", str(tmp_path / "probe"),
        )  # fmt: skip
        assert_one_line_error(status, err, "show: 'nope' was not probed; probed: features.0")
        assert not (tmp_path / "probe").exists()

    @pytest.mark.parametrize("option, value", [("--explore-layers", "features.2"), ("--explore-channels", "2")])
    def test_explore_options_need_explore(self, capsys, tmp_path, option, value):
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--images", "chelsea", "--size", "16", "--shifts", "0:2",
            option, value, "--out", str(tmp_path / "probe"),
        )  # fmt: skip
        assert_one_line_error(
            status, err, f"{option}: only applies with --explore (add --explore, or leave the option out)"
        )
        assert not (tmp_path / "probe").exists()

    def test_without_explore_no_explorer(self, capsys, tmp_path):
        out = tmp_path / "probe"
        status, printed, _ = run(
            capsys, "probe", "--model", "simple_cnn", "--images", "chelsea", "--size", "16", "--shifts", "0:2",
            "--out", str(out),
        )  # fmt: skip
        assert status == 0 and "explorer" not in (out / "report.html").read_text()
        assert "with the explorer" not in printed


# --------------------------------------------------------------------------- hostile names, output folders, exits


def _image(path: Path, size: int = 20) -> Path:
    Image.fromarray((np.arange(size * size).reshape(size, size) * 7 % 255).astype(np.uint8)).save(path, format="png")
    return path


class TestHostileNames:
    def test_a_file_name_that_is_not_utf8(self, capsys, tmp_path):
        """The name's bad byte is shown as \\xff everywhere (stdout, the figure); the files keep the real bytes."""
        image = _image(tmp_path / os.fsdecode(b"\xff.png"))
        out = tmp_path / "o"
        status, stdout, err = run(capsys, "edges", str(image), "--out", str(out))
        assert status == 0, err
        assert stdout.splitlines()[0].startswith(f"{tmp_path}/\\xff.png: 20x20 -> edge map 18x18 (min 0, max ")
        assert sorted(path.name for path in out.iterdir()) == [
            os.fsdecode(b"\xff_edges.npy"),
            os.fsdecode(b"\xff_edges.png"),
        ]
        status, _, err = run(
            capsys,
            "probe",
            "--model",
            "simple_cnn",
            "--images",
            str(image),
            "--shifts",
            "0:2",
            "--out",
            str(tmp_path / "p"),
        )
        assert status == 0, err
        protocol = json.loads((tmp_path / "p" / "probe.json").read_text(encoding="utf-8"))["protocol"]
        assert protocol["images_used"] == [f"{tmp_path}/\\xff.png"]
        assert [bytes.fromhex(item) for item in protocol["images_used_bytes"]] == [os.fsencode(image)]
        not_an_image = tmp_path / os.fsdecode(b"\xfe.png")
        not_an_image.write_text("text")
        status, _, err = run(capsys, "edges", str(not_an_image), "--out", str(out))
        assert err == (
            f"shiftlab: error: image '{tmp_path}/\\xfe.png': is not an image Pillow can read (unknown or corrupt"
            " format)\n"
        )
        assert status == 2

    @pytest.mark.parametrize("command", ["edges", "pool"])
    def test_dollar_signs_are_text_not_maths(self, capsys, tmp_path, command):
        image = _image(tmp_path / "x$\\x$.png")
        status, _, err = run(capsys, command, str(image), "--out", str(tmp_path / "o"))
        assert status == 0, err

    def test_figure_titles_show_user_text_as_it_is(self):
        import io

        from shiftlab import show_feature_map, show_pyramid

        figure = show_feature_map(np.zeros((4, 4)), np.zeros((3, 3)), titles=("x$\\x$.png", "d$\\bad$"))
        figure.savefig(io.BytesIO(), format="png")  # drawing parses every text
        assert figure.axes[0].title.get_text() == "x\\$\\x\\$.png (4 x 4)"  # matplotlib shows \$ as $
        show_pyramid([np.zeros((4, 4))], title="a$b$" + chr(10) + "\udcff").savefig(io.BytesIO(), format="png")

    def test_a_model_named_with_dollars_is_probed(self, capsys, tmp_path):
        module = tmp_path / "d$\\bad$.py"
        module.write_text(
            "from shiftlab.models import SimpleCNN\n\ndef build():\n    return SimpleCNN(in_channels=1)\n"
        )
        status, _, err = run(
            capsys, "probe", "--model", f"{module}:build", "--images", "pixel_a", "--shifts", "0:2",
            "--out", str(tmp_path / "o"),
        )  # fmt: skip
        assert status == 0, err


class TestOutputFolder:
    @pytest.mark.parametrize(
        "argv",
        [
            ["edges", "pixel_a"],
            ["pool", "pixel_a"],
            ["demo"],
            ["probe", "--model", "simple_cnn"],
            ["convert", "--model", "simple_cnn", "--method", "blurpool"],
            ["evaluate", "--model", "digits_cnn", "--data", "digits"],
        ],
        ids=lambda argv: argv[0],
    )
    def test_empty_out_is_refused(self, capsys, argv):
        status, _, err = run(capsys, *argv, "--out", "")
        assert (status, err) == (2, "shiftlab: error: --out: is empty: name a folder (. for the current one)\n")

    def test_out_inside_a_file_is_refused_before_any_work(self, capsys, tmp_path):
        afile = tmp_path / "afile"
        afile.write_text("x")
        status, stdout, err = run(capsys, "demo", "--out", str(afile / "sub"))
        assert (status, stdout) == (2, "")
        assert (
            err == f"shiftlab: error: output folder '{afile / 'sub'}': cannot be created: '{afile}' is not a folder\n"
        )

    def test_an_unwritable_folder_is_refused_before_any_work(self, capsys, tmp_path):
        if os.geteuid() == 0:  # root writes anywhere a mode forbids: a file system that takes no folders
            if not Path("/sys").is_dir():
                pytest.skip("running as root, and no /sys to stand for an unwritable folder")
            parent = Path("/sys")
        else:
            parent = tmp_path / "locked"
            parent.mkdir(mode=0o555)
        out = parent / "shiftlab-out"
        status, stdout, err = run(capsys, "evaluate", "--model", "digits_cnn", "--data", "digits", "--out", str(out))
        assert (status, stdout) == (2, "")
        assert err.startswith(f"shiftlab: error: output folder '{out}': cannot be created (") and err.count("\n") == 1

    def test_a_folder_another_run_holds_is_refused(self, capsys, tmp_path):
        from shiftlab._io import claim_output_folder

        out = tmp_path / "o"
        with claim_output_folder(out):
            status, _, err = run(capsys, "edges", "pixel_a", "--out", str(out))
        assert err == (
            f"shiftlab: error: output folder '{out}': is in use by another shiftlab run (process {os.getpid()});"
            " wait for it to finish, or choose another --out\n"
        )
        assert status == 2
        assert run(capsys, "edges", "pixel_a", "--out", str(out))[0] == 0  # released
        assert sorted(path.name for path in tmp_path.iterdir()) == ["o"]  # no lock file left

    def test_the_current_folder_is_locked_by_its_name(self, capsys, tmp_path, monkeypatch):
        from shiftlab._io import claim_output_folder

        (tmp_path / "here").mkdir()
        monkeypatch.chdir(tmp_path / "here")
        with claim_output_folder(tmp_path / "here"):
            status, _, err = run(capsys, "edges", "pixel_a", "--out", ".")
        assert status == 2 and "is in use by another shiftlab run" in err
        assert run(capsys, "edges", "pixel_a", "--out", ".")[0] == 0
        assert sorted(path.name for path in tmp_path.iterdir()) == ["here"]

    def test_the_lock_of_a_killed_run_is_released(self, capsys, tmp_path):
        out = tmp_path / "o"
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom shiftlab._io import claim_output_folder\n"
             f"with claim_output_folder({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SOURCE)},
        )  # fmt: skip
        try:
            assert holder.stdout.readline() == "held\n"
            status, _, err = run(capsys, "edges", "pixel_a", "--out", str(out))
            assert status == 2 and f"(process {holder.pid})" in err
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        finally:
            holder.kill()
        assert (tmp_path / ".o.lock").exists()  # left behind by kill -9, and no longer held
        status, _, err = run(capsys, "edges", "pixel_a", "--out", str(out))
        assert status == 0, err
        assert not (tmp_path / ".o.lock").exists()

    def test_leftovers_of_killed_runs_are_removed_by_the_next_success(self, capsys, tmp_path):
        from shiftlab._io import _owner

        host = _owner().split("-")[0]
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended.wait()
        out = tmp_path / "o"
        out.mkdir()
        stale = [tmp_path / f".o.staging-{host}-{ended.pid}-x1", out / f".tmp-{host}-{ended.pid}-checkpoint.pt.a.tmp"]
        kept = [
            tmp_path / f".o.staging-{host}-1-x2",
            tmp_path / ".o.staging-old",
            tmp_path / f".o.staging-other-{ended.pid}-x",
        ]
        for path in stale + kept:
            if path.suffix == ".tmp":
                path.write_bytes(b"partial")
            else:
                path.mkdir()
                (path / "report.html").write_text("half")
        status, _, err = run(capsys, "edges", "pixel_a", "--out", str(out))
        assert status == 0, err
        assert [path.exists() for path in stale] == [False, False]
        assert all(path.exists() for path in kept)  # a running process's, an old one without a process, another host's


SOURCE = Path(__file__).resolve().parents[1] / "src"


class TestExits:
    def test_a_model_file_that_exits(self, capsys, tmp_path):
        module = tmp_path / "exits.py"
        module.write_text("import sys\n\nsys.exit(0)\n")
        for command in (["probe", "--images", "pixel_a"], ["evaluate", "--data", "digits"]):
            status, stdout, err = run(
                capsys, command[0], "--model", f"{module}:build", *command[1:], "--out", str(tmp_path / "o")
            )
            assert err == (
                f"shiftlab: error: '{module}' line 3 called sys.exit(0) while shiftlab ran it; nothing was written"
                " (a model file must define the model, not run a program)\n"
            )
            assert (status, stdout) == (2, "")
        assert not (tmp_path / "o").exists()

    def test_ctrl_c_is_held_back_until_the_block_ends(self):
        """interrupts_held: Ctrl-C inside torch's import (C++ running Python code) would abort the process; held, it
        comes as a KeyboardInterrupt once the block is done, and the previous handler is back."""
        from shiftlab._command import interrupts_held

        previous = signal.getsignal(signal.SIGINT)
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the signal is delivered here, and held
                finished.append(True)
        assert finished == [True] and signal.getsignal(signal.SIGINT) is previous
        with interrupts_held():  # no Ctrl-C: nothing raised
            pass

    def test_ctrl_c_while_the_command_starts(self, tmp_path):
        """Ctrl-C during the imports (a second or more): one line and status 130, no traceback."""
        script = tmp_path / "shiftlab"  # what the installed console script does
        script.write_text(
            "import sys\nfrom shiftlab.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"
        )
        environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
        edges = ["edges", "chelsea", "--out", str(tmp_path / "edges")]  # imports torch and matplotlib: seconds
        for command in ([sys.executable, str(script), *edges], [sys.executable, "-m", "shiftlab", *edges]):
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
            )
            time.sleep(0.5)  # Python has started, and imports the command's modules (torch: seconds)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 130, stderr
            assert stderr in ("shiftlab: interrupted\n", "shiftlab: interrupted; nothing was written\n"), stderr
            assert not (tmp_path / "edges").exists()

    @pytest.mark.parametrize("arguments", [["--help"], ["probe", "--help"], ["samples"], ["kernels"]])
    def test_the_quick_commands_import_neither_torch_nor_matplotlib(self, arguments):
        """--help, samples and kernels answer in a fraction of a second: they load no heavy module (the timing is
        benchmarks/bench_cli.py's; this checks what makes it)."""
        runner = (
            "import runpy, sys\n"
            "sys.argv = ['shiftlab', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('shiftlab', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
            "heavy = sorted(name for name in ('torch', 'matplotlib', 'torchvision', 'scipy', 'pandas')"
            " if name in sys.modules)\n"
            "print('heavy:', ','.join(heavy), file=sys.stderr)\n"
        )
        environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
        process = subprocess.run(
            [sys.executable, "-c", runner, *arguments], capture_output=True, text=True, env=environment, timeout=60
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout.strip(), "the command printed nothing"
        assert process.stderr.splitlines()[-1] == "heavy: ", process.stderr

    def test_a_nan_model_is_refused_by_the_probe(self, capsys, tmp_path):
        module = tmp_path / "nan_net.py"
        module.write_text(
            "import torch\nfrom shiftlab.models import SimpleCNN\n\n"
            "class Broken(SimpleCNN):\n    def forward(self, x):\n        return super().forward(x) * float('nan')\n\n"
            "def build():\n    return Broken(in_channels=1)\n"
        )
        for mode in ("circular", "zero"):  # zero: the border pass feeds NaN on purpose, and is not what is refused
            status, _, err = run(
                capsys, "probe", "--model", f"{module}:build", "--images", "pixel_a", "--shifts", "0:2",
                "--mode", mode, "--out", str(tmp_path / "o"),
            )  # fmt: skip
            assert err == (
                "shiftlab: error: model Broken: outputs NaN or infinity for input image 0 (unshifted): no equivariance"
                " can be measured from that (check the model and its weights)\n"
            )
            assert status == 2

    def test_a_malicious_weights_file_is_refused_without_torchs_advice(self, capsys, tmp_path):
        class Payload:
            def __reduce__(self):
                return (os.system, ("echo never",))

        weights = tmp_path / "evil.pt"
        torch.save({"conv.weight": Payload()}, weights)
        status, _, err = run(
            capsys, "probe", "--model", "simple_cnn", "--weights", str(weights), "--out", str(tmp_path / "o")
        )
        assert err == (
            f"shiftlab: error: weights '{weights}': holds more than plain tensors, and weights_only loading refuses"
            f" arbitrary objects: save model.state_dict() instead (it references {os.system.__module__}.system)\n"
        )
        assert status == 2


def test_the_command_lines_choices_are_the_librarys_names():
    """The parser spells its choices out (importing the modules that own them would load torch for --help); this
    keeps each equal to the tuple the library validates against."""
    import typing

    from shiftlab.cli import build_parser
    from shiftlab.invariance.dense import DENSE_MODES
    from shiftlab.invariance.protocols import GRID_MODES
    from shiftlab.ops import Padding
    from shiftlab.probing.borders import AUTO, PROBE_MODES

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices

    def choices(command: str, option: str) -> set[str]:
        action = next(action for action in commands[command]._actions if option in action.option_strings)
        return set(action.choices)

    assert choices("probe", "--mode") == set(PROBE_MODES)
    assert choices("evaluate", "--shift-mode") == set(GRID_MODES)
    assert choices("evaluate", "--diagonal-mode") == {AUTO, *GRID_MODES}
    assert choices("evaluate", "--dense-mode") == set(DENSE_MODES)
    assert choices("edges", "--padding") == set(typing.get_args(Padding))
