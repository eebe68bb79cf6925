"""Tests for shiftlab.errors: the one error type and the helpers that build its messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shiftlab
from shiftlab.errors import (
    ShiftlabError,
    check,
    check_choice,
    check_int,
    check_pair,
    check_real,
    describe,
    fail,
)


class TestShiftlabError:
    def test_is_a_value_error(self):
        assert issubclass(ShiftlabError, ValueError)

    def test_exported_from_package(self):
        assert shiftlab.ShiftlabError is ShiftlabError

    def test_caught_as_value_error(self):
        with pytest.raises(ValueError, match="^x: bad$"):
            fail("x", "bad")


class TestFail:
    def test_message_shape(self):
        with pytest.raises(ShiftlabError) as info:
            fail("kernel_size", "must be a positive integer, got 0")
        assert str(info.value) == "kernel_size: must be a positive integer, got 0"

    @pytest.mark.parametrize(
        ("subject", "problem", "expected"),
        [
            ("image 'a.png'", "is\ntruncated", "image 'a.png': is\\ntruncated"),
            ("  padded  subject ", "  spaces\t\tand tabs\n", "padded  subject: spaces\\t\\tand tabs"),
            ("multi\nline\r\nsubject", "line one\u2028line two", "multi\\nline\\r\\nsubject: line one\\u2028line two"),
            ("image 'caf\udcff.png'", "x\x00y", "image 'caf\\xff.png': x\\x00y"),
        ],
    )
    def test_message_is_one_line(self, subject, problem, expected):
        """Names may hold line breaks, control characters and bytes that are not UTF-8: escaped, never lost."""
        with pytest.raises(ShiftlabError) as info:
            fail(subject, problem)
        message = str(info.value)
        assert message == expected
        assert "\n" not in message and "\r" not in message
        message.encode("utf-8")  # writable to any UTF-8 terminal or file

    def test_non_string_arguments_are_converted(self):
        with pytest.raises(ShiftlabError, match="^3: 4$"):
            fail(3, 4)  # type: ignore[arg-type]


class TestCheck:
    @pytest.mark.parametrize("condition", [True, 1, "x", [0], np.True_, torch.tensor(True)])
    def test_true_conditions_pass(self, condition):
        assert check(condition, "x", "never raised") is None

    @pytest.mark.parametrize("condition", [False, 0, "", [], None, np.False_, torch.tensor(False)])
    def test_false_conditions_raise(self, condition):
        with pytest.raises(ShiftlabError) as info:
            check(condition, "stride", "must be >= 1, got 0")
        assert str(info.value) == "stride: must be >= 1, got 0"


class TestDescribe:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (np.zeros((2, 3), dtype=np.float32), "numpy array of shape (2, 3) and dtype float32"),
            (np.zeros((), dtype=np.int64), "numpy array of shape () and dtype int64"),
            (np.zeros((4,), dtype=bool), "numpy array of shape (4,) and dtype bool"),
            (torch.zeros(1, 3, 5, dtype=torch.float64), "tensor of shape (1, 3, 5) and dtype float64"),
            (torch.zeros(2, dtype=torch.uint8), "tensor of shape (2,) and dtype uint8"),
            (5, "5"),
            ("abc", "'abc'"),
            (None, "None"),
            ([1, 2], "[1, 2]"),
        ],
    )
    def test_known_descriptions(self, value, expected):
        assert describe(value) == expected

    def test_never_prints_array_data(self):
        text = describe(np.full((3, 3), 123456.0))
        assert "123456" not in text

    def test_long_reprs_are_cut(self):
        value = list(range(100))
        text = describe(value)
        assert text == "list " + repr(value)[:57] + "..."
        assert len(text) == len("list ") + 60

    def test_sixty_characters_are_kept_whole(self):
        value = "x" * 58  # repr adds two quotes: exactly 60 characters
        assert describe(value) == repr(value)


class TestValidationVocabulary:
    """The recurring checks: every accepted form, and the exact message for each refusal."""

    @pytest.mark.parametrize("value", [3, np.int64(3), np.int8(3), 3.0, np.float32(3.0), torch.tensor(3)])
    def test_check_int_accepts_python_numpy_and_scalar_tensors(self, value):
        result = check_int(value, "size")
        assert result == 3 and type(result) is int

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (True, "size: must be an integer, got True"),
            (2.5, "size: must be an integer, got 2.5"),
            ("3", "size: must be an integer, got '3'"),
            (float("inf"), "size: must be an integer, got inf"),
            (None, "size: must be an integer, got None"),
        ],
    )
    def test_check_int_refuses(self, value, message):
        with pytest.raises(ShiftlabError) as caught:
            check_int(value, "size")
        assert str(caught.value) == message

    def test_check_int_bounds(self):
        assert check_int(5, "n", minimum=1, maximum=5) == 5
        with pytest.raises(ShiftlabError, match=r"^n: must be an integer >= 1 and <= 5, got 6$"):
            check_int(6, "n", minimum=1, maximum=5)
        with pytest.raises(ShiftlabError, match=r"^n: must be an integer <= 5, got 6$"):
            check_int(6, "n", maximum=5)

    @pytest.mark.parametrize("value", [0.5, np.float64(0.5), np.float16(0.5), torch.tensor(0.5)])
    def test_check_real_accepts(self, value):
        result = check_real(value, "sigma")
        assert result == 0.5 and type(result) is float

    @pytest.mark.parametrize(
        ("value", "kwargs", "message"),
        [
            (False, {}, "sigma: must be a finite number, got False"),
            (float("nan"), {}, "sigma: must be a finite number, got nan"),
            ("x", {}, "sigma: must be a finite number, got 'x'"),
            (0.0, {"positive": True}, "sigma: must be a positive number, got 0.0"),
            (-1, {"minimum": 0}, "sigma: must be >= 0, got -1"),
        ],
    )
    def test_check_real_refuses(self, value, kwargs, message):
        with pytest.raises(ShiftlabError) as caught:
            check_real(value, "sigma", **kwargs)
        assert str(caught.value) == message

    def test_check_pair(self):
        assert check_pair(np.int64(2), "stride") == (2, 2)
        assert check_pair([4, np.int32(1)], "stride", minimum=1) == (4, 1)
        for bad in ((1, 2, 3), "ab", None):
            with pytest.raises(ShiftlabError, match=r"^stride: must be an integer or a pair of integers, got"):
                check_pair(bad, "stride")
        with pytest.raises(ShiftlabError, match=r"^stride: must be an integer >= 1, got 0$"):
            check_pair((0, 1), "stride", minimum=1)

    def test_check_choice(self):
        assert check_choice("crop", "mode", ("circular", "crop")) == "crop"
        with pytest.raises(ShiftlabError) as caught:
            check_choice("roll", "mode", ("circular", "crop"))
        assert str(caught.value) == "mode: must be one of circular, crop, got 'roll'"
