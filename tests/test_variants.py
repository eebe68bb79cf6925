"""The trained BlurPool and APS variants of digits_cnn: shipped weights, loading by spec, exactness, the comparison.

Known answers: APS with circular padding is exactly invariant to circular shifts (Chaman & Dokmanic 2021), checked
on every test digit under every phase of the network's stride; BlurPool (Zhang 2019) is better than strided
downsampling and not exact. The README's table is recomputed here, so it cannot drift from what shiftlab measures.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
import torch
from helpers import ACCURACY_TOLERANCE, ROOT, load_script, states_equal
from safetensors.torch import load_file

from shiftlab._format import ROUNDING_LEVEL, format_error
from shiftlab.digits import load_digits
from shiftlab.errors import ShiftlabError
from shiftlab.experiments.variants import (
    COLUMNS,
    DEMO_VARIANT_DIGITS,
    FINETUNE_COLUMNS,
    VARIANT_SPECS,
    run_variants,
    training_record,
    variants_section,
)
from shiftlab.models import DIGITS_CNN_VARIANTS, DIGITS_CNN_WEIGHTS, DigitsCNN, digits_cnn_variant, load_model

ASSETS = resources.files("shiftlab").joinpath("assets")


@pytest.fixture(scope="module")
def test_digits():
    return load_digits("test")


# --------------------------------------------------------------------------- the shipped weights


class TestShippedVariants:
    def test_six_variants_two_paddings_three_methods(self):
        assert VARIANT_SPECS == {
            "baseline": "digits_cnn",
            "blurpool": "digits_cnn+blurpool",
            "aps": "digits_cnn+aps",
            "circular": "digits_cnn+circular",
            "circular_blurpool": "digits_cnn+circular+blurpool",
            "circular_aps": "digits_cnn+circular+aps",
        }

    @pytest.mark.parametrize("variant", list(DIGITS_CNN_VARIANTS))
    def test_spec_loads_the_variants_own_weights(self, variant):
        record = training_record(variant)
        with resources.as_file(ASSETS.joinpath(f"digits_cnn_{variant}.safetensors")) as path:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == record["weights_sha256"]
            shipped = load_file(str(path))
        model, info = load_model(VARIANT_SPECS[variant], seed=7)  # the seed of a random init plays no part
        assert states_equal(model.state_dict(), shipped) and not model.training
        assert record["variant"] == variant and record["weights"] == f"digits_cnn_{variant}.safetensors"
        if variant != "baseline":
            assert f"weights digits_cnn_{variant}.safetensors, trained as converted" in info.description

    @pytest.mark.parametrize("variant", list(DIGITS_CNN_VARIANTS))
    def test_recorded_accuracy_reproduces(self, variant, test_digits):
        images, labels = test_digits
        record = training_record(variant)
        model, _ = load_model(VARIANT_SPECS[variant])
        with torch.no_grad():
            correct = int((model(images).argmax(1) == labels).sum())
        assert record["test_images"] == 1000 and record["test_correct"] / 1000 == record["test_accuracy"]
        assert abs(correct - record["test_correct"]) <= ACCURACY_TOLERANCE * 1000, (correct, record["test_correct"])

    def test_same_protocol_for_every_variant(self):
        baseline = training_record("baseline")
        for variant in DIGITS_CNN_VARIANTS:
            record = training_record(variant)
            for key in ("seed", "epochs", "steps", "batch_size", "optimizer", "lr_schedule", "threads", "data"):
                assert record[key] == baseline[key], (variant, key)
            assert record.get("spec", VARIANT_SPECS[variant]) == VARIANT_SPECS[variant]

    @pytest.mark.parametrize(
        "spec, variant",
        [
            ("digits_cnn+blurpool4", "blurpool"),
            ("digits_cnn+aps+circular", "circular_aps"),
            ("digits_cnn + circular + blurpool", "circular_blurpool"),
            ("digits_cnn+aps1", "aps"),
            ("digits_cnn+blurpool5", None),
            ("digits_cnn+circular+aps3", None),
            ("simple_cnn+blurpool", None),
        ],
    )
    def test_same_layers_same_variant(self, spec, variant):
        assert digits_cnn_variant(spec) == variant

    def test_other_conversions_convert_the_baseline(self):
        model, info = load_model("digits_cnn+blurpool5")
        expected, _ = load_model("digits_cnn")
        assert states_equal(model.state_dict(), expected.state_dict())
        assert info.description.endswith(f"the baseline's weights ({DIGITS_CNN_WEIGHTS}), converted without retraining")

    def test_weights_option_overrides(self, tmp_path):
        other = DigitsCNN()
        path = tmp_path / "other.pt"
        torch.save(other.state_dict(), path)
        model, info = load_model("digits_cnn+circular+aps", weights=path)
        assert states_equal(model.state_dict(), other.state_dict())
        assert "trained as converted" not in info.description

    def test_bad_variant(self):
        with pytest.raises(ShiftlabError) as info:
            training_record("zeros_aps")
        assert str(info.value) == (
            "variant: must be one of baseline, blurpool, aps, circular, circular_blurpool, circular_aps, "
            "got 'zeros_aps'"
        )


# --------------------------------------------------------------------------- the exact property


class TestAPSExactness:
    def test_every_circular_shift_of_every_test_digit_gives_the_same_class(self, test_digits):
        """All 1,000 test digits, every phase of the stride-4 network (and negative shifts): identical predictions."""
        images, _ = test_digits
        model, _ = load_model("digits_cnn+circular+aps")
        shifts = [(dy, dx) for dy in range(-1, 3) for dx in range(-1, 3)]
        with torch.no_grad():
            reference = model(images)
            for dy, dx in shifts:
                shifted = model(torch.roll(images, (dy, dx), dims=(-2, -1)))
                assert torch.equal(shifted.argmax(1), reference.argmax(1)), (dy, dx)
                assert torch.allclose(shifted, reference, rtol=0, atol=1e-4), (dy, dx)

    def test_zero_padded_aps_is_not_exact(self, test_digits):
        """The same method without the circular padding it needs: some digit changes class under some shift."""
        images, _ = test_digits
        model, _ = load_model("digits_cnn+aps")
        with torch.no_grad():
            reference = model(images[:200]).argmax(1)
            changed = sum(
                int((model(torch.roll(images[:200], (dy, dx), dims=(-2, -1))).argmax(1) != reference).sum())
                for dy, dx in [(0, 1), (1, 0), (1, 1), (2, 3)]
            )
        assert changed > 0


# --------------------------------------------------------------------------- the comparison


@pytest.fixture(scope="module")
def demo_result():
    """The demo's comparison (the README's table): 200 digits, 4 views."""
    return run_variants()


@pytest.mark.slow
class TestComparison:
    def test_aps_with_circular_padding_is_100_percent_consistent(self, demo_result):
        numbers = demo_result.numbers("circular_aps")
        consistency = demo_result.evaluation.results["digits_cnn+circular+aps"]["consistency"]
        assert consistency["agreeing_pairs"] == consistency["pairs"] == DEMO_VARIANT_DIGITS * 6
        assert numbers["circular_consistency"] == 1.0 and numbers["circular_all_views_agree"] == 1.0
        assert numbers["unchanged_under_every_shift"] == 1.0
        assert numbers["worst_case_accuracy"] == numbers["accuracy"]
        assert numbers["per_digit_error"] < 1e-5
        assert numbers["output_error"] < 1e-5

    def test_blurpool_better_than_strided_not_exact(self, demo_result):
        for base, blur in [("baseline", "blurpool"), ("circular", "circular_blurpool")]:
            first, second = demo_result.numbers(base), demo_result.numbers(blur)
            assert first["circular_consistency"] < second["circular_consistency"] < 1.0
            assert first["crop_consistency"] < second["crop_consistency"] < 1.0
            assert 1e-3 < second["aliasing"] < first["aliasing"]
            assert 1e-3 < second["output_error"] < first["output_error"]

    def test_every_finding_holds(self, demo_result):
        section = variants_section(demo_result)
        checked = [finding for finding in section.findings if finding.holds is not None]
        assert len(checked) >= 7
        assert all(finding.holds for finding in checked), [f.statement for f in checked if not f.holds]
        assert [len(table.rows) for table in section.tables[:2]] == [6, 6]
        json.dumps(section.to_dict())  # the report's results.json can hold it

    def test_readme_table_is_what_shiftlab_measures(self, demo_result):
        """The README's table against a fresh computation, cell by cell, each compared as what it is.

        Names, and the accuracy on 1,000 digits (read from the shipped training records), are text. Accuracy,
        consistency and worst-case accuracy are counts of top-1 decisions (of digits, of view pairs): the same on
        any CPU unless a decision sits within float rounding of a tie, and none does. Measured once: the logits
        (up to 16) moved by at most 5e-6 between the AVX-512, AVX2 and plain kernels of one machine
        (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), and the smallest gap between the two largest logits over every
        roll in [-4, 4) and every window of the 200 digits, for all six variants, is 3e-4, sixty times that. So
        their text must match. Aliasing and output error are means of float32 relative errors, whose last digits
        change with the CPU, the thread count and the libraries: they are compared as numbers, to the README's
        rounding (half a unit of its last digit) plus 1e-5 of the value, eighty times the 1.2e-7 (of the value) by
        which they moved between those kernels; a value below the rounding level is printed, and checked, as such
        ("< 1e-05").
        """
        table = variants_section(demo_result).tables[0]  # the report's table, which the README shows
        assert table.columns == [column.replace("model spec", "spec") for column in COLUMNS]
        expected = [table.columns, *table.rows]
        shown = markdown_table((ROOT / "README.md").read_text(), header=expected[0])
        assert len(shown) == len(expected) and shown[0] == expected[0]
        floats = [index for index, column in enumerate(expected[0]) if column in ("aliasing", "output error")]
        assert len(floats) == 2
        for variant, readme_row, measured_row in zip(demo_result.variants, shown[1:], expected[1:], strict=True):
            numbers = demo_result.numbers(variant)
            for index, (readme_cell, measured_cell) in enumerate(zip(readme_row, measured_row, strict=True)):
                if index in floats:
                    key = expected[0][index].replace(" ", "_")
                    assert_printed_as(numbers[key], readme_cell, (variant, key))
                else:
                    assert readme_cell == measured_cell, (variant, expected[0][index])

    def test_readme_finetune_table_is_what_shiftlab_measures(self, demo_result):
        """Before, after and from scratch: counts within 3 of 1,000 digits, percentages within 1 point (a digit or a
        few view pairs of the 200 that another CPU may flip); APS with circular padding exactly 100% consistent."""
        tables = variants_section(demo_result).tables
        table = next(table for table in tables if table.columns == list(FINETUNE_COLUMNS))
        readme = (ROOT / "README.md").read_text()
        shown = markdown_table(readme, header=table.columns)
        assert len(shown) == 1 + len(table.rows) == 1 + 9
        for line, expected in zip(shown[1:], table.rows, strict=True):
            for cell, want in zip(line, expected, strict=True):
                if cell.endswith("%"):
                    assert abs(float(cell[:-1]) - float(want[:-1])) <= 1.0, (line, expected)
                elif " / " in cell:
                    (count, total), (wanted, whole) = (
                        [int(part.replace(",", "")) for part in text.split(" / ")] for text in (cell, want)
                    )
                    assert total == whole and abs(count - wanted) <= 3, (line, expected)
                else:
                    assert cell == want, (line, expected)
        aps = demo_result.finetune_numbers("circular_aps", "fine-tuned")
        assert aps["agreeing_pairs"] == aps["pairs"] and "| converted from digits_cnn, fine-tuned | " in readme

    def test_script_prints_the_readme_tables(self, demo_result):
        """scripts/variants_tables.py: the report's tables as the README's Markdown (specs in backticks)."""
        script = load_script("variants_tables")
        tables = variants_section(demo_result).tables
        text = script.markdown(tables[0])
        assert text.splitlines()[0] == "| " + " | ".join(tables[0].columns) + " |"
        assert text.splitlines()[2].startswith("| `digits_cnn` | zeros | strided | ")
        lines = (ROOT / "README.md").read_text().splitlines()
        assert text.splitlines()[0] in lines and text.splitlines()[1] in lines


def markdown_table(text: str, header: list[str] | None = None) -> list[list[str]]:
    """The cells of the first Markdown table in ``text`` (of the one whose header is ``header``), rule dropped, and
    the backticks around a model spec too (the report's tables, which the README shows, have none)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| ") and (header is None or _cells(line) == header)]
    assert starts, f"no table with the header {header}"
    rows = []
    for line in lines[starts[0] :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip("`") for cell in _cells(line)])
    return [row for row in rows if set("".join(row)) != {"-"}]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


#: How far a mean of float32 errors may move from one CPU, thread count or library version to another (relative):
#: eighty times what was seen between the kernels of one machine (see the README test).
FLOAT_TOLERANCE = 1e-5


def assert_printed_as(value: float, text: str, where: object, digits: int = 3) -> None:
    """``text`` is what :func:`format_error` prints, with ``digits`` digits, for a value within
    :data:`FLOAT_TOLERANCE` of ``value`` (rounding is monotonic: the two ends of the interval bound the text)."""
    if text == format_error(ROUNDING_LEVEL / 2):  # "< 1e-05": rounding, exactly zero on some machines
        assert 0 <= value < ROUNDING_LEVEL, (where, value)
        return
    low, high = value * (1 - FLOAT_TOLERANCE), value * (1 + FLOAT_TOLERANCE)
    if text == format_error(low, digits) or text == format_error(high, digits):
        return
    assert low >= ROUNDING_LEVEL, f"{where}: {value} is float rounding, printed as {text!r}"
    assert float(format_error(low, digits)) <= float(text) <= float(format_error(high, digits)), (where, value, text)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def script():
    return load_script("train_reference")


class TestTraining:
    def test_every_variant_starts_from_the_same_weights(self, script):
        baseline = script.build_model("baseline", seed=0).state_dict()
        for variant in DIGITS_CNN_VARIANTS:
            model = script.build_model(variant, seed=0)
            assert states_equal(model.state_dict(), baseline), variant
            assert digits_cnn_variant(f"digits_cnn{script.VARIANTS[variant]}") == variant

    @pytest.mark.parametrize("variant", [name for name in DIGITS_CNN_VARIANTS if name != "baseline"])
    def test_short_run_is_deterministic(self, script, variant):
        first, protocol = script.train(variant, max_steps=4, batch_size=16)
        second, _ = script.train(variant, max_steps=4, batch_size=16)
        assert states_equal(first.state_dict(), second.state_dict())
        assert not states_equal(first.state_dict(), script.build_model(variant, seed=0).state_dict())
        assert protocol["variant"] == variant and protocol["spec"] == VARIANT_SPECS[variant]

    def test_file_is_the_same_byte_for_byte(self, script, tmp_path):
        """safetensors writes its metadata in an order that changes between processes; the script fixes it."""
        shipped = load_file(str(ASSETS.joinpath(DIGITS_CNN_WEIGHTS)))
        data = script.safetensors_bytes(shipped, {"variant": "baseline", "seed": "0"})
        assert hashlib.sha256(data).hexdigest() == training_record("baseline")["weights_sha256"]
        reordered = script.safetensors_bytes(shipped, {"seed": "0", "variant": "baseline"})
        assert reordered != data and len(reordered) == len(data)
        path = tmp_path / "w.safetensors"
        path.write_bytes(reordered)
        assert states_equal(load_file(str(path)), shipped)


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"digits": 1}, "digits: must be an integer >= 2 and <= 1000, got 1"),
            ({"digits": 1001}, "digits: must be an integer >= 2 and <= 1000, got 1001"),
            ({"views": 1}, "views: must be an integer >= 2, got 1"),
            ({"digits": 10, "probe_digits": 11}, "probe digits: must be an integer >= 1 and <= 10, got 11"),
            (
                {"per_digit_variants": ("zeros_aps",)},
                "variant: must be one of baseline, blurpool, aps, circular, circular_blurpool, circular_aps, "
                "got 'zeros_aps'",
            ),
        ],
    )
    def test_messages(self, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            run_variants(**kwargs)
        assert str(info.value) == message


def test_printed_float_cells_are_held_to_their_rounding():
    """The README test's comparison of float cells: the text must be the value's, to float rounding."""
    assert_printed_as(0.5680942, "0.568", "aliasing")
    assert_printed_as(5.729e-08, "< 1e-05", "output error")
    assert_printed_as(0.0, "< 1e-05", "output error")  # exactly invariant on some machine: still rounding level
    assert_printed_as(0.0685, "0.0685", "rounded half up or down: either end of the interval")
    for value, text in [(0.5686, "0.568"), (5.729e-08, "5.73e-08"), (0.3, "< 1e-05"), (2e-5, "< 1e-05")]:
        with pytest.raises(AssertionError):
            assert_printed_as(value, text, "wrong")
