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


class Segmenter(nn.Module):
    """A dense model with a structured output: a circular, stride-1 map ``out`` (exactly equivariant), a pooled
    map ``aux`` (stride 2) and class scores ``scores``, as torchvision's segmentation models return a dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        out = self.conv(x)
        return {"aux": self.pool(out), "out": out, "scores": out.mean(dim=(2, 3)), "count": 3}


class TestProbeWatchesEveryTensor:
    SHIFTS = [(0, 1), (0, 2), (1, 3)]

    def probe(self, **kwargs):
        from shiftlab import probe

        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        return probe(Segmenter().eval(), x, shifts=self.SHIFTS, mode="circular", **kwargs)

    def test_main_tensor_is_output_and_the_others_output_key(self):
        result = self.probe()
        assert [label for label in result.layers if label.startswith("output")] == [
            "output",
            "output.aux",
            "output.scores",
        ]
        rows = {row["layer"]: row for row in result.summary()}
        assert rows["output"]["layout"] == "NCHW" and rows["output"]["stride"] == [1, 1]
        assert rows["output"]["max_rel_l2"] < 1e-6  # circular, stride 1: exact (the known answer)
        assert rows["output.aux"]["stride"] == [2, 2]
        assert rows["output.aux"]["exact_shifts"] == 1  # only (0, 2) is a multiple of the stride
        assert rows["output.scores"]["layout"] == "global" and rows["output.scores"]["max_rel_l2"] < 1e-6
        assert result.protocol["output"] == (
            "'out' of a dict (the rule: logits, out, else the first tensor; other tensors: aux, scores)"
        )

    def test_same_numbers_as_the_tensor_alone(self):
        from shiftlab import probe

        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        model = Segmenter().eval()
        alone = probe(model.conv, x, shifts=self.SHIFTS, mode="circular")
        structured = self.probe()
        ours = [row["rel_l2"] for row in structured.rows if row["layer"] == "output"]
        theirs = [row["rel_l2"] for row in alone.rows if row["layer"] == "output"]
        assert ours == pytest.approx(theirs, abs=1e-9)

    def test_output_key_chooses_the_main_tensor(self):
        result = self.probe(output="aux")
        rows = {row["layer"]: row for row in result.summary()}
        assert rows["output"]["stride"] == [2, 2] and rows["output.out"]["stride"] == [1, 1]
        assert "given" in result.protocol["output"]

    def test_unknown_output_key(self):
        with pytest.raises(ShiftlabError) as caught:
            self.probe(output="logits")
        assert str(caught.value) == (
            "output: 'logits' is not in the model's output, a dict with tensors aux, out, scores"
        )

    def test_explorer_shows_another_tensor_of_the_output(self):
        from shiftlab.probing.explore import explorer_data

        x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        data = explorer_data(Segmenter().eval(), x, self.SHIFTS, show=["output", "output.aux"], channels=2)
        assert [layer.label for layer in data.layers] == ["output", "output.aux"]
        assert data.layers[1].shape == (4, 8, 8)


class Classifier(nn.Module):
    """A classifier returning a Hugging Face-like dict: ``logits`` after a pooled feature map ``features``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        features = self.conv(x)
        return {"features": features, "logits": features.mean(dim=(2, 3))}


class TestEvaluateReadsStructuredOutputs:
    def images(self):
        return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def test_logits_of_a_dict_as_of_the_tensor_alone(self):
        from shiftlab.invariance.evaluate import EvaluateOptions, evaluate

        class Plain(Classifier):
            def forward(self, x):
                return super().forward(x)["logits"]

        structured = evaluate(Classifier(), self.images(), metrics="consistency", options=EvaluateOptions(seed=1))
        plain = evaluate(Plain(), self.images(), metrics="consistency", options=EvaluateOptions(seed=1))
        assert structured.rows == [dict(row, model="Classifier") for row in plain.rows]
        assert structured.protocol["models"]["Classifier"]["output"] == (
            "'logits' of a dict (the rule: logits, out, else the first tensor; other tensors: features)"
        )

    def test_output_key(self):
        from shiftlab import evaluate

        result = evaluate(Classifier(), self.images(), metrics="cosine", output="features")
        assert result.protocol["models"]["Classifier"]["output"].startswith("'features' of a dict (given")

    def test_unknown_output_key_names_the_model(self):
        from shiftlab import evaluate

        with pytest.raises(ShiftlabError) as caught:
            evaluate(Classifier(), self.images(), metrics="consistency", output="out")
        assert str(caught.value) == (
            "model 'Classifier': output: 'out' is not in the model's output, a dict with tensors features, logits"
        )
