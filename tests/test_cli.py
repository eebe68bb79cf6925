"""The `shiftlab` command: outputs, messages, exit status 2 on bad input, and no partial output."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
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

        monkeypatch.setattr("shiftlab.equivariance.pair_sums", broken)
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
