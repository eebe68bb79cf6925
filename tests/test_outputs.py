"""Tests for shiftlab.outputs: the main tensor of an output of any structure, and the names of its tensors."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.outputs import MainOutput, main_output, main_output_key, named_tensors, output_parts


def tensors(*shapes):
    return [torch.full(shape, float(position)) for position, shape in enumerate(shapes)]


class TestNamedTensors:
    def test_plain_tensor_is_unnamed(self):
        x = torch.zeros(2, 3)
        assert named_tensors(x) == [("", x)]

    def test_dict_tuple_and_nesting_in_order(self):
        a, b, c, d = tensors((1,), (2,), (3,), (4,))
        output = {"z": a, "a": [b, {"deep": c}], "none": None, "number": 3, "last": (d,)}
        assert [(name, tensor) for name, tensor in named_tensors(output)] == [
            ("z", a),
            ("a.0", b),
            ("a.1.deep", c),
            ("last.0", d),
        ]

    def test_named_tuple_fields_by_name(self):
        # torchvision's Inception returns InceptionOutputs(logits, aux_logits) in training mode
        outputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])
        logits, aux = tensors((2, 10), (2, 10))
        assert named_tensors(outputs(logits, aux)) == [("logits", logits), ("aux_logits", aux)]

    def test_no_tensor(self):
        assert named_tensors({"a": None, "b": (1, "x")}) == []


class TestMainOutput:
    def test_tensor_is_itself(self):
        x = torch.zeros(2, 5)
        assert main_output(x) is x and main_output_key(x) == ""

    def test_logits_before_out_before_first(self):
        first, out, logits = tensors((1,), (1,), (1,))
        assert main_output({"first": first, "out": out, "logits": logits}) is logits
        assert main_output({"first": first, "out": out}) is out
        assert main_output({"first": first, "other": out}) is first

    def test_logits_only_at_the_top_level(self):
        first, nested = tensors((1,), (1,))
        assert main_output({"a": first, "b": {"logits": nested}}) is first

    def test_first_tensor_depth_first(self):
        a, b = tensors((1,), (1,))
        assert main_output((None, [a], b)) is a
        assert main_output_key((None, [a], b)) == "1.0"

    def test_key_overrides_the_rule(self):
        out, aux = tensors((1, 3, 4, 4), (1, 3, 4, 4))
        assert main_output({"out": out, "aux": aux}, key="aux") is aux
        assert main_output((out, aux), key="1") is aux

    def test_torchvision_segmentation_model(self):
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
        with torch.no_grad():
            output = model(torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0)))
        assert isinstance(output, OrderedDict) and main_output_key(output) == "out"
        assert tuple(main_output(output).shape) == (1, 3, 64, 48)

    def test_hugging_face_model_output(self):
        transformers = pytest.importorskip("transformers")
        logits, hidden = tensors((2, 4), (2, 8, 3, 3))
        output = transformers.modeling_outputs.ImageClassifierOutputWithNoAttention(
            logits=logits, hidden_states=(hidden,)
        )
        assert main_output(output) is logits
        assert [name for name, _ in named_tensors(output)] == ["logits", "hidden_states.0"]

    def test_unknown_key(self):
        out, aux = tensors((1,), (1,))
        with pytest.raises(ShiftlabError) as caught:
            main_output({"out": out, "aux": aux}, key="logits")
        assert str(caught.value) == "output: 'logits' is not in the model's output, a dict with tensors out, aux"

    def test_key_on_a_plain_tensor(self):
        with pytest.raises(ShiftlabError) as caught:
            main_output(torch.zeros(1), key="out")
        assert str(caught.value) == "output: 'out' was asked for, but the model returns a plain tensor (no keys)"

    def test_empty_key(self):
        with pytest.raises(ShiftlabError) as caught:
            main_output({"out": torch.zeros(1)}, key="")
        assert str(caught.value) == "output: expected the name of a tensor, got ''"

    def test_no_tensor(self):
        with pytest.raises(ShiftlabError) as caught:
            main_output({"a": None})
        assert str(caught.value) == "model output: is a dict with no tensor: nothing to measure"

    def test_long_structure_is_abbreviated(self):
        output = {f"t{index}": torch.zeros(1) for index in range(10)}
        with pytest.raises(ShiftlabError) as caught:
            main_output(output, key="x")
        assert str(caught.value).endswith("tensors t0, t1, t2, t3, t4, t5, t6, t7, ...")


class TestOutputParts:
    def test_main_first_then_the_others(self):
        a, b, c = tensors((1,), (1,), (1,))
        assert output_parts({"a": a, "logits": b, "c": c}) == [("", b), ("a", a), ("c", c)]

    def test_shared_tensor_listed_once(self):
        a, b = tensors((1,), (1,))
        assert output_parts({"x": a, "y": a, "z": b}) == [("", a), ("z", b)]

    def test_plain_tensor(self):
        x = torch.zeros(1)
        assert output_parts(x) == [("", x)]


class TestMainOutputModule:
    def test_module_equals_function(self):
        class Net(nn.Module):
            def forward(self, x):
                return {"aux": x + 1, "out": x * 3}

        net, x = Net(), torch.rand(2, 3)
        assert torch.equal(MainOutput(net)(x), main_output(net(x)))
        assert torch.equal(MainOutput(net, key="aux")(x), main_output(net(x), key="aux"))
