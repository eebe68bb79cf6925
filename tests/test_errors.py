"""Tests for shiftlab.errors: the one error type and the helpers that build its messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shiftlab
from shiftlab.errors import ShiftlabError, check, describe, fail


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
            ("image 'a.png'", "is\ntruncated", "image 'a.png': is truncated"),
            ("  padded  subject ", "  many   spaces\t\tand tabs ", "padded subject: many spaces and tabs"),
            ("multi\nline\r\nsubject", "line one\nline two", "multi line subject: line one line two"),
        ],
    )
    def test_message_is_one_line(self, subject, problem, expected):
        with pytest.raises(ShiftlabError) as info:
            fail(subject, problem)
        message = str(info.value)
        assert message == expected
        assert "\n" not in message and "\r" not in message

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
