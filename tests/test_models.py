"""Tests for shiftlab.models: model specs, seeded initialisation, safe weight loading, bundled networks."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
from helpers import states_equal
from torch import nn

from shiftlab.data import Preprocess
from shiftlab.errors import ShiftlabError
from shiftlab.models import (
    BUNDLED_MODELS,
    ArticleNet,
    ModelInfo,
    SimpleCNN,
    load_model,
    load_weights,
    torchvision_models,
)


class Opaque:
    """A custom class: pickled by reference, so weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a Python module under a unique name into ``tmp_path`` and make it importable; forget it afterwards."""
    created = []

    def make(source: str) -> str:
        name = f"shiftlab_test_user_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in created:
        sys.modules.pop(name, None)


MODULE_SOURCE = """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            return self.conv(x)

    def build():
        return Tiny()

    class Factory:
        @staticmethod
        def build():
            return Tiny()

    INSTANCE = nn.Conv2d(5, 1, 1)
    NOT_A_MODEL = 3

    def number():
        return 42

    def broken():
        raise RuntimeError("cannot build\\nsecond line")
"""


# --------------------------------------------------------------------------- bundled


class TestBundledModels:
    @pytest.mark.parametrize(
        "name, channels", [("article", 1), ("simple_cnn", 3), ("circular_cnn", 3), ("digits_cnn", 1)]
    )
    def test_load(self, name, channels):
        model, info = load_model(name)
        assert isinstance(model, nn.Module)
        weights = (
            "digits_cnn_baseline.safetensors (shipped)" if name == "digits_cnn" else "random initialisation, seed 0"
        )
        assert info == ModelInfo(name, "bundled", channels, "none", BUNDLED_MODELS[name][2], weights=weights)
        assert not any(module.training for module in model.modules())

    def test_whitespace_is_stripped(self):
        _, info = load_model("  simple_cnn ")
        assert info.spec == "simple_cnn"

    def test_article_net_shape(self):
        model, _ = load_model("article")
        assert model(torch.zeros(1, 1, 34, 34)).shape == (1, 1, 4, 4)
        assert isinstance(model, ArticleNet)

    def test_article_net_known_answer(self):
        # A vertical step edge between columns 8 and 9. The article's sobel_y is [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
        # (it differentiates along x): the valid output columns 7 and 8 see the step (4 = 1 + 2 + 1),
        # and one 2x2 max pooling puts them in columns 3 and 4.
        image = torch.zeros(1, 1, 18, 18)
        image[..., :, 9:] = 1.0
        out = ArticleNet(poolings=1)(image)
        assert out.shape == (1, 1, 8, 8)
        expected = torch.zeros(1, 1, 8, 8)
        expected[..., :, 3:5] = 4.0
        assert torch.equal(out, expected)
        # the opposite edge is removed by the ReLU
        assert ArticleNet(poolings=1)(1.0 - image).abs().sum() == 0

    @pytest.mark.parametrize("name", ["simple_cnn", "circular_cnn"])
    def test_classifier_output(self, name):
        model, _ = load_model(name)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    def test_circular_cnn_has_no_stride_and_circular_padding(self):
        model, _ = load_model("circular_cnn")
        convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
        assert convs and all(conv.padding_mode == "circular" and conv.stride == (1, 1) for conv in convs)
        assert not any(isinstance(module, nn.MaxPool2d) for module in model.modules())

    def test_simple_cnn_options(self):
        model = SimpleCNN(in_channels=1, classes=4, width=8)
        assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 4)

    def test_same_seed_same_weights(self):
        first, _ = load_model("simple_cnn", seed=3)
        second, _ = load_model("simple_cnn", seed=3)
        third, _ = load_model("simple_cnn", seed=4)
        assert states_equal(first.state_dict(), second.state_dict())
        assert not states_equal(first.state_dict(), third.state_dict())

    def test_global_random_state_untouched(self):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        load_model("simple_cnn", seed=9)
        assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- torchvision


class TestTorchvisionModels:
    @pytest.fixture(autouse=True)
    def torchvision(self):
        return pytest.importorskip("torchvision")

    def test_list(self):
        names = torchvision_models()
        assert {"resnet18", "vgg11", "mobilenet_v3_small", "convnext_tiny"} <= set(names)
        assert names == sorted(names)

    def test_load_is_seeded(self):
        first, info = load_model("mobilenet_v3_small", seed=0)
        second, _ = load_model("mobilenet_v3_small", seed=0)
        other, _ = load_model("mobilenet_v3_small", seed=1)
        assert states_equal(first.state_dict(), second.state_dict())
        assert not states_equal(first.state_dict(), other.state_dict())
        assert (info.spec, info.source, info.in_channels, info.normalize, info.description, info.weights) == (
            "mobilenet_v3_small",
            "torchvision",
            3,
            "imagenet",
            "torchvision mobilenet_v3_small, random weights (seed 0)",
            "random initialisation, seed 0",
        )
        assert info.preprocess == Preprocess.make(channels=3, normalize="imagenet")
        assert not first.training

    def test_never_touches_the_network(self, tmp_path, monkeypatch):
        import urllib.request

        import torch.hub

        home = tmp_path / "torch_home"
        monkeypatch.setenv("TORCH_HOME", str(home))
        assert torch.hub.get_dir() == str(home / "hub")

        def no_network(*args, **kwargs):
            raise AssertionError("load_model tried to download something")

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
        monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
        monkeypatch.setattr(urllib.request, "urlopen", no_network)
        model, info = load_model("resnet18")
        assert info.source == "torchvision" and "random weights" in info.description
        assert not home.exists()  # no hub or checkpoint directory was created

    def test_weights_description(self, tmp_path):
        model, _ = load_model("mobilenet_v3_small", seed=5)
        path = tmp_path / "w.pt"
        torch.save(model.state_dict(), path)
        loaded, info = load_model("mobilenet_v3_small", weights=path)
        assert info.description == "torchvision mobilenet_v3_small"
        assert states_equal(loaded.state_dict(), model.state_dict())

    def test_unknown_name_lists_bundled_models(self):
        with pytest.raises(ShiftlabError) as info:
            load_model("zzz_no_such_net")
        assert str(info.value) == (
            "model: unknown model 'zzz_no_such_net': not bundled (article, simple_cnn, circular_cnn, digits_cnn) "
            "nor a torchvision architecture; or give timm:NAME, hf:ORG/NAME or package.module:callable"
        )

    def test_unknown_name_suggests_similar(self):
        with pytest.raises(
            ShiftlabError,
            match=r"^model: unknown model 'resnet19': not bundled \(article, simple_cnn, circular_cnn, digits_cnn\) "
            r"nor a torchvision architecture; similar: resnet101, ",
        ):
            load_model("resnet19")


# --------------------------------------------------------------------------- imports


class TestImportSpecs:
    def test_module_callable(self, user_module):
        name = user_module(MODULE_SOURCE)
        model, info = load_model(f"{name}:build")
        assert type(model).__name__ == "Tiny"
        own = "the callable's own (any random initialisation seeded with 0)"
        assert info == ModelInfo(f"{name}:build", "import", 2, "none", f"imported from {name}:build", weights=own)
        assert not model.training

    def test_class_is_a_callable(self, user_module):
        name = user_module(MODULE_SOURCE)
        model, _ = load_model(f"{name}:Tiny")
        assert type(model).__name__ == "Tiny"

    def test_dotted_attribute(self, user_module):
        name = user_module(MODULE_SOURCE)
        model, _ = load_model(f"{name}:Factory.build")
        assert type(model).__name__ == "Tiny"

    def test_module_instance(self, user_module):
        name = user_module(MODULE_SOURCE)
        model, info = load_model(f"{name}:INSTANCE")
        assert model is sys.modules[name].INSTANCE
        assert info.in_channels == 5

    def test_import_is_seeded(self, user_module):
        # the module draws random numbers when first imported (INSTANCE): the first load must still equal the next
        name = user_module(MODULE_SOURCE)
        first, _ = load_model(f"{name}:build", seed=1)
        second, _ = load_model(f"{name}:build", seed=1)
        other, _ = load_model(f"{name}:build", seed=2)
        assert states_equal(first.state_dict(), second.state_dict())
        assert not states_equal(first.state_dict(), other.state_dict())

    def test_file_path(self, tmp_path, monkeypatch):
        path = tmp_path / "my_net_file.py"
        path.write_text(textwrap.dedent(MODULE_SOURCE))
        monkeypatch.delitem(sys.modules, "_shiftlab_user_my_net_file", raising=False)
        model, info = load_model(f"{path}:build")
        assert type(model).__name__ == "Tiny" and info.source == "import"
        sys.modules.pop("_shiftlab_user_my_net_file", None)

    def test_relative_file_path(self, tmp_path, monkeypatch):
        (tmp_path / "nets").mkdir()
        (tmp_path / "nets" / "relative_net.py").write_text(textwrap.dedent(MODULE_SOURCE))
        monkeypatch.chdir(tmp_path)
        model, _ = load_model("nets/relative_net.py:INSTANCE")
        assert isinstance(model, nn.Conv2d)
        sys.modules.pop("_shiftlab_user_relative_net", None)

    def test_missing_file(self, tmp_path):
        path = tmp_path / "absent.py"
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{path}:build")
        assert str(info.value) == f"model: '{path}:build': file '{path}' not found"

    def test_callable_returning_a_non_module(self, user_module):
        name = user_module(MODULE_SOURCE)
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:number")
        assert str(info.value) == f"model: '{name}:number': 'number()' returned int, not a torch.nn.Module"

    def test_attribute_neither_module_nor_callable(self, user_module):
        name = user_module(MODULE_SOURCE)
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:NOT_A_MODEL")
        assert str(info.value) == f"model: '{name}:NOT_A_MODEL': 'NOT_A_MODEL' is neither an nn.Module nor callable"

    def test_callable_raising(self, user_module):
        name = user_module(MODULE_SOURCE)
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:broken")
        assert str(info.value) == f"model: '{name}:broken': calling 'broken()' failed: RuntimeError: cannot build"

    def test_import_raising(self, user_module):
        name = user_module("raise ImportError('needs a package that is not installed')\n")
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:build")
        assert (
            str(info.value)
            == f"model: '{name}:build': importing '{name}' failed: ImportError: needs a package that is not installed"
        )

    def test_import_with_a_syntax_error(self, user_module):
        name = user_module("def broken(:\n")
        with pytest.raises(ShiftlabError, match=rf"^model: '{name}:build': importing '{name}' failed: SyntaxError: "):
            load_model(f"{name}:build")

    def test_file_raising_at_import(self, tmp_path):
        path = tmp_path / "raising_file.py"
        path.write_text("raise RuntimeError('boom')\n")
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{path}:build")
        assert str(info.value) == f"model: '{path}:build': importing '{path}' failed: RuntimeError: boom"
        sys.modules.pop("_shiftlab_user_raising_file", None)

    def test_missing_module(self):
        with pytest.raises(ShiftlabError) as info:
            load_model("shiftlab_no_such_module_xyz:build")
        assert (
            str(info.value)
            == "model: 'shiftlab_no_such_module_xyz:build': importing 'shiftlab_no_such_module_xyz' failed: "
            "ModuleNotFoundError: No module named 'shiftlab_no_such_module_xyz'"
        )

    def test_missing_attribute(self, user_module):
        name = user_module(MODULE_SOURCE)
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:nope")
        assert str(info.value) == f"model: '{name}:nope': '{name}' has no attribute 'nope'"

    def test_missing_nested_attribute(self, user_module):
        name = user_module(MODULE_SOURCE)
        with pytest.raises(ShiftlabError) as info:
            load_model(f"{name}:Factory.nope")
        assert str(info.value) == f"model: '{name}:Factory.nope': '{name}' has no attribute 'Factory.nope'"

    @pytest.mark.parametrize("spec", [":build", "module:"])
    def test_incomplete_spec(self, spec):
        with pytest.raises(ShiftlabError) as info:
            load_model(spec)
        assert str(info.value) == f"model: {spec!r}: expected package.module:callable or path/to/file.py:callable"

    @pytest.mark.parametrize("spec, shown", [("", "''"), ("   ", "' '"), (None, "None"), (3, "3")])
    def test_not_a_spec(self, spec, shown):
        # (messages are one line with runs of whitespace collapsed)
        with pytest.raises(ShiftlabError) as info:
            load_model(spec)
        assert str(info.value) == f"model: expected a non-empty spec string, got {shown}"

    def test_stdlib_module_attribute(self):
        # torch.nn:Identity is importable and a class: a model
        model, _ = load_model("torch.nn:Identity")
        assert isinstance(model, nn.Identity)


# --------------------------------------------------------------------------- weights


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


class TestLoadWeights:
    def test_pt_round_trip(self, tmp_path):
        source, target = small_model(0), small_model(1)
        source[1].running_mean.fill_(0.25)
        path = tmp_path / "weights.pt"
        torch.save(source.state_dict(), path)
        assert not states_equal(source.state_dict(), target.state_dict())
        assert load_weights(target, path) is target
        assert states_equal(source.state_dict(), target.state_dict())

    @pytest.mark.parametrize("suffix", [".pth", ".bin"])
    def test_other_suffixes(self, tmp_path, suffix):
        source, target = small_model(0), small_model(1)
        path = tmp_path / f"weights{suffix}"
        torch.save(source.state_dict(), path)
        load_weights(target, str(path))
        assert states_equal(source.state_dict(), target.state_dict())

    @pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
    def test_wrapped_state_dict(self, tmp_path, key):
        source, target = small_model(0), small_model(1)
        path = tmp_path / "checkpoint.pt"
        torch.save({key: source.state_dict(), "epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, path)
        load_weights(target, path)
        assert states_equal(source.state_dict(), target.state_dict())

    def test_data_parallel_prefix(self, tmp_path):
        source, target = small_model(0), small_model(1)
        path = tmp_path / "parallel.pt"
        torch.save({f"module.{key}": value for key, value in source.state_dict().items()}, path)
        load_weights(target, path)
        assert states_equal(source.state_dict(), target.state_dict())

    def test_safetensors_round_trip(self, tmp_path):
        from safetensors.torch import save_file

        source, target = small_model(0), small_model(1)
        path = tmp_path / "weights.safetensors"
        save_file(source.state_dict(), str(path))
        load_weights(target, path)
        assert states_equal(source.state_dict(), target.state_dict())

    def test_load_model_with_weights(self, tmp_path):
        source, _ = load_model("simple_cnn", seed=11)
        path = tmp_path / "simple.pt"
        torch.save(source.state_dict(), path)
        loaded, _ = load_model("simple_cnn", weights=path, seed=0)
        assert states_equal(loaded.state_dict(), source.state_dict())
        assert not loaded.training

    def test_missing_keys(self, tmp_path):
        state = small_model(0).state_dict()
        del state["3.bias"]
        path = tmp_path / "partial.pt"
        torch.save(state, path)
        target = small_model(1)
        before = {key: value.clone() for key, value in target.state_dict().items()}
        with pytest.raises(ShiftlabError) as info:
            load_weights(target, path)
        assert str(info.value) == f"weights '{path}': do not fit the model: 1 missing (3.bias)"
        assert states_equal(before, target.state_dict())  # nothing was loaded

    def test_many_missing_and_unexpected_keys(self, tmp_path):
        state = {f"other.{index}": torch.zeros(1) for index in range(5)}
        path = tmp_path / "other.pt"
        torch.save(state, path)
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(0), path)
        assert str(info.value) == (
            f"weights '{path}': do not fit the model: 9 missing (0.weight, 0.bias, 1.weight, ...), "
            "5 unexpected (other.0, other.1, other.2, ...)"
        )

    def test_wrong_shapes(self, tmp_path):
        state = small_model(0).state_dict()
        state["0.weight"] = torch.zeros(4, 3, 5, 5)
        state["3.weight"] = torch.zeros(2, 4, 3, 3)
        state["3.bias"] = torch.zeros(7)
        state["extra"] = torch.zeros(1)
        path = tmp_path / "shapes.pt"
        torch.save(state, path)
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(1), path)
        assert str(info.value) == (
            f"weights '{path}': do not fit the model: 1 unexpected (extra), "
            "3 of the wrong shape (0.weight (4, 3, 5, 5) vs (4, 3, 3, 3); 3.weight (2, 4, 3, 3) vs (2, 4, 1, 1); ...)"
        )

    def test_pickled_custom_object_is_refused(self, tmp_path):
        path = tmp_path / "evil.pt"
        torch.save({"weight": torch.zeros(2), "extra": Opaque()}, path)
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(0), path)
        assert str(info.value) == (
            f"weights '{path}': holds more than plain tensors, and weights_only loading refuses arbitrary objects: "
            f"save model.state_dict() instead (it references {__name__}.Opaque)"
        )
        assert "\x1b" not in str(info.value)  # no terminal escape codes from torch's message

    def test_whole_pickled_module_is_refused(self, tmp_path):
        path = tmp_path / "module.pt"
        torch.save(small_model(0), path)
        with pytest.raises(
            ShiftlabError, match=r"weights_only loading refuses arbitrary objects: save model\.state_dict\(\) instead"
        ):
            load_weights(small_model(0), path)

    def test_not_a_state_dict(self, tmp_path):
        path = tmp_path / "list.pt"
        torch.save([torch.zeros(1)], path)
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(0), path)
        assert (
            str(info.value)
            == f"weights '{path}': is not a state_dict (a dict of names to tensors); save model.state_dict()"
        )

    def test_dict_with_non_tensor_values(self, tmp_path):
        path = tmp_path / "mixed.pt"
        torch.save({"weight": torch.zeros(1), "note": "hello"}, path)
        with pytest.raises(ShiftlabError, match=r"is not a state_dict \(a dict of names to tensors\)"):
            load_weights(small_model(0), path)

    def test_truncated_file(self, tmp_path):
        path = tmp_path / "truncated.pt"
        torch.save(small_model(0).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ShiftlabError, match=rf"^weights '{path}': is not a torch\.save file \("):
            load_weights(small_model(0), path)

    @pytest.mark.parametrize(
        "content",
        [b"", b"this is not a checkpoint at all\x00\x01" * 10, b"\x00" * 100, bytes(range(256)) * 2],
        ids=["empty", "text", "zeros", "bytes"],
    )
    def test_corrupt_file(self, tmp_path, content):
        path = tmp_path / "corrupt.pt"
        path.write_bytes(content)
        with pytest.raises(ShiftlabError, match=rf"^weights '{path}': is not a torch\.save file \("):
            load_weights(small_model(0), path)

    @pytest.mark.parametrize("content", [b"", b"garbage" * 5, b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}'])
    def test_corrupt_safetensors(self, tmp_path, content):
        path = tmp_path / "corrupt.safetensors"
        path.write_bytes(content)
        with pytest.raises(ShiftlabError, match=rf"^weights '{path}': is not a readable \.safetensors file \("):
            load_weights(small_model(0), path)

    def test_directory(self, tmp_path):
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(0), tmp_path)
        assert str(info.value) == f"weights '{tmp_path}': is not a file"

    def test_missing_file(self, tmp_path):
        path = tmp_path / "absent.pt"
        with pytest.raises(ShiftlabError) as info:
            load_weights(small_model(0), path)
        assert str(info.value) == f"weights '{path}': no such file"
