"""Pretrained models by name, offline: torchvision, timm and Hugging Face caches built in a temporary folder.

The caches hold small random weights under the names the zoos expect (torch.hub's
``$TORCH_HOME/hub/checkpoints/<file of the weights' url>``; the Hugging Face cache's
``models--ORG--NAME/snapshots/<revision>/...`` with ``refs/main``), so loading, preprocessing and output finding
are tested without a network (``HF_HUB_OFFLINE=1``, set in conftest.py). A model loaded by shiftlab must give the
same outputs as the zoo's own loading of the same file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shiftlab.data import Preprocess
from shiftlab.errors import ShiftlabError
from shiftlab.images import load_image
from shiftlab.models import load_model
from shiftlab.outputs import main_output

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

#: The torchvision weights the cache holds, with the architecture's own arguments for them.
TORCHVISION_CACHED = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1", {}),
    "deeplabv3_mobilenet_v3_large": (
        "DeepLabV3_MobileNet_V3_Large_Weights",
        "COCO_WITH_VOC_LABELS_V1",
        {"num_classes": 21, "aux_loss": True, "weights_backbone": None},
    ),
}
#: timm models whose pretrained weights the Hugging Face cache holds (tiny test architectures).
TIMM_CACHED = ("test_vit.r160_in1k", "test_resnet.r160_in1k")
#: The tiny transformers classifiers in the cache.
HF_RESNET = "shiftlab-test/tiny-resnet"
HF_VIT = "shiftlab-test/tiny-vit"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def hf_snapshot(cache: Path, repo: str) -> Path:
    """An empty snapshot folder of ``repo`` in a Hugging Face cache, as huggingface_hub lays it out."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="session")
def caches(tmp_path_factory) -> dict[str, Path]:
    """A torch hub home and a Hugging Face cache with small random weights under the zoos' names (built once)."""
    import torchvision.models as models

    root = tmp_path_factory.mktemp("zoo_caches")
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name, (enum_name, member, options) in TORCHVISION_CACHED.items():
        weights = getattr(models, enum_name, None) or getattr(models.segmentation, enum_name)
        torch.manual_seed(1)
        model = models.get_model(name, weights=None, **options)
        torch.save(_state(model), checkpoints / Path(weights[member].url).name)
    hub = root / "hf"
    for name in TIMM_CACHED:
        torch.manual_seed(2)
        model = timm.create_model(name, pretrained=False)
        save_file(_state(model), str(hf_snapshot(hub, f"timm/{name}") / "model.safetensors"))
    torch.manual_seed(3)
    resnet = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4
    )
    snapshot = hf_snapshot(hub, HF_RESNET)
    transformers.ResNetForImageClassification(resnet).save_pretrained(snapshot)
    transformers.ConvNextImageProcessor(
        size={"shortest_edge": 64}, crop_pct=0.875, resample=3, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]
    ).save_pretrained(snapshot)
    torch.manual_seed(4)
    vit = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    snapshot = hf_snapshot(hub, HF_VIT)
    transformers.ViTForImageClassification(vit).save_pretrained(snapshot)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(snapshot)
    return {"torch_home": root / "torch", "hf_cache": hub, "root": root}


@pytest.fixture
def zoo(caches, monkeypatch) -> dict[str, Path]:
    """The cached zoos, in this test's environment (offline, as every test is)."""
    monkeypatch.setenv("TORCH_HOME", str(caches["torch_home"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(caches["hf_cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return caches


@pytest.fixture
def empty_zoo(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty caches, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"torch_home": tmp_path / "torch", "hf_cache": tmp_path / "hf"}


def photo(size: tuple[int, int] = (90, 120)) -> torch.Tensor:
    """A real photo, as shiftlab decodes it: (3, H, W) float32 in [0, 1], resized from the bundled sample."""
    image = torch.from_numpy(load_image("chelsea"))
    return torch.nn.functional.interpolate(image[None], size=size, mode="area")[0].clamp(0, 1)


def same_outputs(first, second) -> bool:
    return torch.equal(main_output(first), main_output(second))


# --------------------------------------------------------------------------- torchvision


class TestTorchvisionWeights:
    def test_same_logits_as_torchvision_loading_the_same_file(self, zoo):
        from torchvision.models import ResNet18_Weights, resnet18

        model, info = load_model("resnet18", weights="IMAGENET1K_V1")
        theirs = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1).eval()
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(model(x), theirs(x))
            random, _ = load_model("resnet18")
            assert not torch.allclose(model(x), random(x))
        assert info.source == "torchvision" and info.weights == "IMAGENET1K_V1"
        assert info.description == "torchvision resnet18, pretrained weights ResNet18_Weights.IMAGENET1K_V1 " + (
            "(resnet18-f37072fd.pth)"
        )

    @pytest.mark.parametrize("name", ["DEFAULT", "ResNet18_Weights.IMAGENET1K_V1", " IMAGENET1K_V1"])
    def test_every_way_to_name_them(self, zoo, name):
        model, info = load_model("resnet18", weights=name.strip())
        assert info.preprocess_source == "torchvision ResNet18_Weights.IMAGENET1K_V1.transforms()"

    def test_their_preprocessing(self, zoo):
        _, info = load_model("resnet18", weights="DEFAULT")
        assert info.preprocess == Preprocess.make(
            channels=3, resize=256, crop=224, normalize="imagenet", interpolation="bilinear"
        )
        prepare, record = info.preprocessing(crop=192)
        assert (prepare.resize, prepare.crop) == (256, 192)
        assert record["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1.transforms()"
        assert record["overridden"] == ["crop"]

    def test_segmentation_model_and_its_dict_output(self, zoo):
        from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights, deeplabv3_mobilenet_v3_large

        model, info = load_model("deeplabv3_mobilenet_v3_large", weights="DEFAULT")
        theirs = deeplabv3_mobilenet_v3_large(weights=DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT).eval()
        x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model(x)
            assert set(ours) == {"out", "aux"} and torch.equal(ours["out"], theirs(x)["out"])
        assert main_output(ours).shape == (1, 21, 48, 40)
        assert (info.preprocess.resize, info.preprocess.crop) == (520, None)

    def test_random_segmentation_model_downloads_no_backbone(self, empty_zoo):
        model, info = load_model("deeplabv3_mobilenet_v3_large")
        assert info.weights == "random initialisation, seed 0"
        assert not (empty_zoo["torch_home"] / "hub").exists()

    def test_not_cached_and_offline(self, empty_zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("resnet34", weights="DEFAULT")
        folder = empty_zoo["torch_home"] / "hub" / "checkpoints"
        assert str(caught.value) == (
            "weights ResNet34_Weights.IMAGENET1K_V1: resnet34-b627a593.pth is not in torch's cache, and downloads are "
            "off (HF_HUB_OFFLINE=1): download https://download.pytorch.org/models/resnet34-b627a593.pth and put it in "
            f"{folder}"
        )

    def test_shiftlab_offline_switch(self, empty_zoo, monkeypatch):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("SHIFTLAB_OFFLINE", "yes")
        with pytest.raises(ShiftlabError, match=r"downloads are off \(SHIFTLAB_OFFLINE=yes\)"):
            load_model("resnet34", weights="DEFAULT")

    def test_not_cached_and_the_download_fails(self, empty_zoo, monkeypatch):
        import torch.hub

        def no_network(url, destination, *args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
        with pytest.raises(ShiftlabError) as caught:
            load_model("resnet34", weights="IMAGENET1K_V1")
        folder = empty_zoo["torch_home"] / "hub" / "checkpoints"
        assert str(caught.value) == (
            "weights ResNet34_Weights.IMAGENET1K_V1: resnet34-b627a593.pth is not in torch's cache, and downloading it "
            "failed (<urlopen error [Errno -3] Temporary failure in name resolution>): download "
            f"https://download.pytorch.org/models/resnet34-b627a593.pth and put it in {folder}"
        )

    def test_a_cached_file_that_is_more_than_tensors_is_refused(self, empty_zoo):
        folder = empty_zoo["torch_home"] / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        path = folder / "resnet34-b627a593.pth"
        torch.save({"weights": torch.zeros(1), "extra": Preprocess()}, path)
        with pytest.raises(ShiftlabError) as caught:
            load_model("resnet34", weights="DEFAULT")
        assert str(caught.value).startswith(
            f"weights '{path}': holds more than plain tensors, and weights_only loading refuses arbitrary objects"
        )

    def test_unknown_weights_name(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("resnet18", weights="IMAGENET1K_V9")
        assert str(caught.value) == (
            "weights: 'IMAGENET1K_V9' is not a file, nor a weights name of resnet18: choose from IMAGENET1K_V1, DEFAULT"
        )

    def test_weights_of_another_architecture(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2")
        assert str(caught.value) == (
            "weights: 'ResNet50_Weights.IMAGENET1K_V2' are weights of another architecture; resnet18 takes "
            "ResNet18_Weights: IMAGENET1K_V1, DEFAULT"
        )

    @pytest.mark.parametrize(
        "spec, message",
        [
            (
                "timm:test_vit",
                "weights: 'DEFAULT' names pretrained weights of a torchvision architecture, and 'timm:test_vit' is not "
                "one; it loads its pretrained weights by itself (pick them in the spec), or give a state_dict FILE or "
                "random",
            ),
            (
                "simple_cnn",
                "weights: 'DEFAULT' names pretrained weights of a torchvision architecture, and 'simple_cnn' is not "
                "one; give a state_dict file (.pt, .pth, .safetensors)",
            ),
        ],
    )
    def test_a_weights_name_for_another_zoo(self, zoo, spec, message):
        with pytest.raises(ShiftlabError) as caught:
            load_model(spec, weights="DEFAULT")
        assert str(caught.value) == message

    def test_random_applies_to_zoo_models_only(self):
        with pytest.raises(ShiftlabError) as caught:
            load_model("digits_cnn", weights="random")
        assert str(caught.value) == (
            "weights: 'random' applies to torchvision, timm: and hf: models; 'digits_cnn' has its own weights"
        )

    def test_converted_pretrained_model(self, zoo):
        model, info = load_model("resnet18+blurpool", weights="IMAGENET1K_V1")
        plain, _ = load_model("resnet18", weights="IMAGENET1K_V1")
        assert torch.equal(model.conv1.weight, plain.conv1.weight)
        assert "converted (blurpool" in info.description and info.weights == "IMAGENET1K_V1"


# --------------------------------------------------------------------------- timm


class TestTimm:
    @pytest.mark.parametrize("spec", ["timm:test_vit", "timm:test_vit.r160_in1k", "timm:test_resnet"])
    def test_same_logits_as_timm_loading_the_same_file(self, zoo, spec):
        name = spec.removeprefix("timm:")
        model, info = load_model(spec)
        theirs = timm.create_model(name, pretrained=True, cache_dir=str(zoo["hf_cache"])).eval()
        x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(model(x), theirs(x))
            random, _ = load_model(spec, weights="random")
            assert not torch.allclose(model(x), random(x))
        assert info.source == "timm" and info.weights == "pretrained (timm)"
        assert info.description.endswith("pretrained weights (model.safetensors)")

    def test_their_preprocessing(self, zoo):
        _, info = load_model("timm:test_vit")
        # input 160, crop_pct 0.95: the shorter side to floor(160 / 0.95) = 168, then the centre 160x160
        assert info.preprocess == Preprocess.make(
            channels=3, resize=168, crop=160, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic"
        )
        assert info.preprocess_source == "timm pretrained_cfg of test_vit.r160_in1k (resolve_data_config)"
        _, info = load_model("timm:test_resnet")
        assert info.preprocess.interpolation == "bilinear"

    def test_weights_file_into_a_timm_architecture(self, zoo, tmp_path):
        torch.manual_seed(7)
        source = timm.create_model("test_resnet", pretrained=False)
        path = tmp_path / "mine.safetensors"
        save_file(_state(source), str(path))
        model, info = load_model("timm:test_resnet", weights=str(path))
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(model(x), source.eval()(x))
        assert info.weights == str(path) and info.preprocess.resize == 168  # the architecture's preprocessing

    def test_random_is_seeded(self, zoo):
        first, info = load_model("timm:test_resnet", weights="random", seed=3)
        second, _ = load_model("timm:test_resnet", weights="random", seed=3)
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
        assert info.weights == "random initialisation, seed 3"

    def test_not_cached_and_offline(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("timm:test_convnext")
        cache = zoo["hf_cache"]
        assert str(caught.value) == (
            "weights of timm:test_convnext: model.safetensors of timm/test_convnext.r160_in1k is not in the Hugging "
            "Face cache, and downloads are off (HF_HUB_OFFLINE=1): on a machine with a network run `hf download "
            "timm/test_convnext.r160_in1k model.safetensors` and copy its cache folder "
            f"models--timm--test_convnext.r160_in1k into {cache}"
        )

    def test_unknown_architecture(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("timm:convnext_tinny")
        assert str(caught.value).startswith(
            f"model: 'timm:convnext_tinny': timm {timm.__version__} has no architecture 'convnext_tinny'; similar: "
            "convnext_tiny, "
        )

    def test_unknown_tag(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("timm:test_vit.nope")
        assert str(caught.value) == (
            "model: 'timm:test_vit.nope': timm has no weights tagged 'nope' for test_vit; it has test_vit.r160_in1k"
        )

    def test_missing_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
        with pytest.raises(ShiftlabError) as caught:
            load_model("timm:test_vit")
        assert str(caught.value) == (
            "model: 'timm:test_vit' needs timm, which is not installed: pip install 'shiftlab[timm]'"
        )


# --------------------------------------------------------------------------- Hugging Face


class TestHuggingFace:
    @pytest.mark.parametrize("repo", [HF_RESNET, HF_VIT])
    def test_same_logits_as_transformers_loading_the_same_files(self, zoo, repo):
        model, info = load_model(f"hf:{repo}")
        theirs = transformers.AutoModelForImageClassification.from_pretrained(
            repo, cache_dir=str(zoo["hf_cache"])
        ).eval()
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model(x)
            assert same_outputs(ours, theirs(x))
            assert main_output(ours).shape[0] == 2 and main_output(ours).ndim == 2
        assert info.source == "hf" and info.weights == "pretrained (Hugging Face)"

    def test_image_processor_preprocessing(self, zoo):
        _, info = load_model(f"hf:{HF_RESNET}")
        # ConvNeXt's processor, shortest_edge 64 and crop_pct 0.875: the shorter side to int(64 / 0.875) = 73
        assert info.preprocess == Preprocess.make(
            channels=3, resize=73, crop=64, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25], interpolation="bicubic"
        )
        assert info.preprocess_source == f"image processor of {HF_RESNET} (ConvNextImageProcessor)"
        _, info = load_model(f"hf:{HF_VIT}")
        assert (info.preprocess.resize, info.preprocess.squash, info.preprocess.crop) == (32, True, None)

    def test_random_weights_of_the_architecture(self, zoo):
        model, info = load_model(f"hf:{HF_RESNET}", weights="random", seed=1)
        assert type(model).__name__ == "ResNetForImageClassification" and info.weights.startswith("random")

    def test_not_cached_and_offline(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("hf:microsoft/resnet-50")
        assert str(caught.value) == (
            "model hf:microsoft/resnet-50: config.json of microsoft/resnet-50 is not in the Hugging Face cache, and "
            "downloads are off (HF_HUB_OFFLINE=1): on a machine with a network run `hf download microsoft/resnet-50` "
            f"and copy its cache folder models--microsoft--resnet-50 into {zoo['hf_cache']}"
        )

    def test_bad_repository_name(self, zoo):
        with pytest.raises(ShiftlabError) as caught:
            load_model("hf:resnet-50")
        assert str(caught.value) == "model: 'hf:resnet-50': expected hf:ORG/NAME, a Hugging Face model repository"

    def test_missing_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "transformers", None)
        with pytest.raises(ShiftlabError) as caught:
            load_model(f"hf:{HF_RESNET}")
        assert str(caught.value) == (
            f"model: 'hf:{HF_RESNET}' needs transformers, which is not installed: pip install 'shiftlab[hf]'"
        )

    def test_not_an_image_classifier(self, zoo, tmp_path, monkeypatch):
        cache = tmp_path / "hf"
        snapshot = hf_snapshot(cache, "shiftlab-test/text")
        (snapshot / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
        (snapshot / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViTImageProcessor"}))
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        with pytest.raises(ShiftlabError) as caught:
            load_model("hf:shiftlab-test/text", weights="random")
        assert str(caught.value).startswith(
            "model: 'hf:shiftlab-test/text': transformers cannot load it as an image classifier from "
        )


# --------------------------------------------------------------------------- preprocessing against the zoos' own


def clamped(expected: torch.Tensor, mean, std) -> torch.Tensor:
    """A zoo's normalised output with the resized image clamped to [0, 1] first, as shiftlab (and an 8-bit image)
    has it: the zoos' tensor transforms leave bicubic's and antialiasing's overshoot in."""
    mean = torch.tensor(mean, dtype=expected.dtype)[:, None, None]
    std = torch.tensor(std, dtype=expected.dtype)[:, None, None]
    return ((expected * std + mean).clamp(0, 1) - mean) / std


def assert_same_input(ours: torch.Tensor, theirs: torch.Tensor, mean, std) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, clamped(theirs, mean, std), atol=2e-5, rtol=0)
    inside = (ours - clamped(theirs, mean, std)).abs() <= 2e-5
    assert inside.float().mean() == 1.0


IMAGES = [(3, 301, 417), (3, 480, 353), (3, 640, 640)]


class TestPreprocessingMatchesTheZoos:
    """shiftlab's resize, crop and normalisation against each zoo's own transform on the same decoded image."""

    @pytest.mark.parametrize("shape", IMAGES)
    @pytest.mark.parametrize(
        "weights",
        [
            "ResNet50_Weights.IMAGENET1K_V2",  # 232 -> 224, bilinear
            "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1",  # 384 -> 384, bicubic
            "EfficientNet_B3_Weights.IMAGENET1K_V1",  # 320 -> 300, bicubic
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",  # 236 -> 224
            "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",  # 520, no crop
        ],
    )
    def test_torchvision_weights_transforms(self, weights, shape):
        import torchvision.models as models

        from shiftlab.zoo import preprocess_from_torchvision

        transforms = models.get_weight(weights).transforms()
        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        ours = preprocess_from_torchvision(transforms).apply(image)
        assert_same_input(ours, transforms(image), transforms.mean, transforms.std)

    @pytest.mark.parametrize("shape", IMAGES)
    @pytest.mark.parametrize(
        "name",
        [
            "convnext_tiny.fb_in22k_ft_in1k",  # center, crop_pct 0.875, bicubic
            "test_resnet.r160_in1k",  # crop_pct 0.95, bilinear
            "convnext_tiny.fb_in22k_ft_in1k_384",  # squash, crop_pct 1.0
            "deit_small_patch16_224.fb_in1k",  # crop_pct 0.875, bicubic
            "resnet50.a1_in1k",  # crop_pct 0.95, test-time 224
        ],
    )
    def test_timm_eval_transform(self, name, shape):
        from timm.data import create_transform, resolve_data_config
        from timm.models import get_pretrained_cfg

        from shiftlab.zoo import preprocess_from_timm

        config = resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())
        prepare, unsupported = preprocess_from_timm(config)
        assert unsupported == ()
        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert_same_input(prepare.apply(image), create_transform(**config)(image), config["mean"], config["std"])

    @pytest.mark.parametrize("shape", IMAGES)
    @pytest.mark.parametrize(
        "processor",
        [
            lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3),
            lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 384}, resample=3),  # squash from 384
            lambda: transformers.ViTImageProcessor(size={"height": 224, "width": 224}, resample=2),
            lambda: transformers.BitImageProcessor(
                size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3
            ),
        ],
        ids=["convnext-224", "convnext-384", "vit", "bit"],
    )
    def test_hugging_face_image_processor(self, processor, shape):
        from shiftlab.zoo import preprocess_from_hf

        processor = processor()
        prepare, unsupported = preprocess_from_hf(processor)
        assert unsupported == ()
        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        theirs = processor(image, do_rescale=False, return_tensors="pt")["pixel_values"][0]
        assert_same_input(prepare.apply(image), theirs, processor.image_mean, processor.image_std)

    @pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut"])
    @pytest.mark.parametrize(
        "weights, largest, mean",
        [
            ("ResNet50_Weights.IMAGENET1K_V2", 1.0, 0.35),  # bilinear: the 8-bit rounding, at most one level
            ("ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1", 13.0, 0.35),  # bicubic: PIL also clips between its passes
        ],
    )
    def test_a_photo_against_the_8_bit_pipeline(self, photo, weights, largest, mean):
        """The README's figures: on a photo decoded by PIL, torchvision's transform of the 8-bit image and
        shiftlab's of the float image differ by the 8-bit pipeline's rounding (in levels of 1/255, before
        normalising): at most one level for bilinear; for bicubic up to 12 at the sharpest edges (coffee), 0.3 on
        average."""
        from importlib import resources

        import torchvision.models as models
        from PIL import Image

        from shiftlab.zoo import preprocess_from_torchvision

        transforms = models.get_weight(weights).transforms()
        with resources.as_file(resources.files("shiftlab") / "assets" / f"{photo}.png") as path:
            ours = preprocess_from_torchvision(transforms)(path)  # shiftlab's own decoding, as the CLI reads a file
            with Image.open(path) as opened:
                theirs = transforms(opened.convert("RGB"))
        levels = (ours - theirs).abs() * torch.tensor(transforms.std)[:, None, None] * 255
        assert float(levels.max()) <= largest + 1e-3 and float(levels.mean()) <= mean

    @pytest.mark.parametrize(
        "config, why",
        [
            ({"input_size": (3, 256, 192)}, "its input size is 256x192, and shiftlab crops squares"),
            (
                {"crop_mode": "border"},
                "its crop_mode 'border' (resize the longer side, pad to a square) is not reproduced",
            ),
        ],
    )
    def test_timm_preprocessing_it_cannot_reproduce(self, config, why):
        from shiftlab.models import ModelInfo
        from shiftlab.zoo import preprocess_from_timm

        base = {"input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "center", "interpolation": "bicubic"}
        prepare, unsupported = preprocess_from_timm({**base, "mean": (0.5,) * 3, "std": (0.5,) * 3, **config})
        assert unsupported == (("resize", why), ("crop", why))
        info = ModelInfo("timm:x", "timm", 3, "custom", preprocess=prepare, unsupported=unsupported)
        with pytest.raises(ShiftlabError) as caught:
            info.preprocessing()
        assert str(caught.value) == (
            f"model timm:x: {why}: choose its resize yourself (resize and crop: --size, or --resize and --crop; "
            "--interpolation; --normalize)"
        )
        prepare, record = info.preprocessing(resize=200, crop=180)
        assert (prepare.resize, prepare.crop, prepare.interpolation) == (200, 180, "bicubic")


# --------------------------------------------------------------------------- evaluate: the models' own preprocessing


class TestEvaluateUsesTheModelsPreprocessing:
    def test_views_come_from_the_models_resize_and_crop(self, zoo, photos):
        from shiftlab import evaluate

        result = evaluate("timm:test_resnet", str(photos), metrics="consistency")
        preparation = result.protocol["preparation"]
        assert preparation["resize"] == "shorter side 168 (bilinear, antialiased)"
        assert preparation["model_input"] == "centre 160x160 window"
        record = result.protocol["models"]["timm:test_resnet"]
        assert record["mean"] == [0.5, 0.5, 0.5] and record["preprocessing"]["overridden"] == []

    def test_models_whose_own_preprocessing_differs(self, zoo, photos):
        from shiftlab.invariance.evaluate import PreprocessChoices, evaluate

        with pytest.raises(ShiftlabError) as caught:
            evaluate(["timm:test_resnet", "timm:test_vit"], str(photos), metrics="consistency")
        assert str(caught.value) == (
            "models: their own preprocessing differs (timm:test_resnet: resize shorter side 168 (bilinear, "
            "antialiased), crop 160; timm:test_vit: resize shorter side 168 (bicubic, antialiased), crop 160), and "
            "their views are cut from one resized image: give --resize, --crop (and --interpolation) to compare "
            "them on the same inputs"
        )
        result = evaluate(
            ["timm:test_resnet", "timm:test_vit", "simple_cnn"],
            str(photos),
            metrics="consistency",
            preprocess=PreprocessChoices(interpolation="bicubic"),
        )
        models = result.protocol["models"]
        assert models["timm:test_resnet"]["preprocessing"]["overridden"] == ["interpolation"]
        own = models["simple_cnn"]["preprocessing"]  # the others' views, not normalised
        assert own["source"] == "none of its own (images as they are); resize and crop shared with the other models"
        assert (own["resize"], own["crop"], own["normalize"]) == (
            "shorter side 168 (bicubic, antialiased)",
            "160x160 centre",
            "none",
        )
        assert models["simple_cnn"]["mean"] is None


# --------------------------------------------------------------------------- the command line, offline


def run(capsys, *argv: str) -> tuple[int, str, str]:
    from shiftlab import cli

    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of three small photos (no labels)."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for index, name in enumerate(("chelsea", "coffee", "astronaut")):
        array = (load_image(name, grayscale=False) * 255).round().astype("uint8")
        image = Image.fromarray(array.transpose(1, 2, 0) if array.shape[0] == 3 else array)
        image.resize((96 + 8 * index, 80)).save(folder / f"{name}.png")
    return folder


class TestCommands:
    """The four commands of the README's pretrained section, against the small caches."""

    def test_evaluate_torchvision_weights(self, zoo, photos, tmp_path, capsys):
        out = tmp_path / "eval"
        status, stdout, err = run(
            capsys, "evaluate", "--model", "resnet18", "--weights", "IMAGENET1K_V1", "--data", str(photos),
            "--resize", "72", "--crop", "64", "--metrics", "consistency", "--views", "3", "--max-shift", "8",
            "--workers", "0", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        record = json.loads((out / "evaluation.json").read_text())["protocol"]["models"]["resnet18 (IMAGENET1K_V1)"]
        assert record["weights"] == "IMAGENET1K_V1"
        assert record["preprocessing"]["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1.transforms()"
        assert record["preprocessing"]["overridden"] == ["resize", "crop"]
        assert record["preprocessing"]["resize"] == "shorter side 72 (bilinear, antialiased)"
        assert record["normalize"] == "imagenet" and record["output"] == "a tensor"
        assert "resnet18 (IMAGENET1K_V1)  consistency" in stdout

    def test_probe_timm_with_its_own_preprocessing(self, zoo, tmp_path, capsys):
        out = tmp_path / "probe"
        status, stdout, err = run(
            capsys, "probe", "--model", "timm:test_vit", "--images", "chelsea", "--shifts", "0:3", "--out", str(out)
        )
        assert status == 0, err
        protocol = json.loads((out / "probe.json").read_text())["protocol"]
        assert protocol["input_shapes"] == [[3, 160, 160]]  # test_vit's own: 168 then the centre 160
        assert protocol["weights"] == "pretrained (timm)"
        assert protocol["preprocessing"] == (
            "resize shorter side 168 (bicubic, antialiased), crop 160x160 centre, normalize custom: mean [0.5, 0.5, "
            "0.5], std [0.5, 0.5, 0.5]; from timm pretrained_cfg of test_vit.r160_in1k (resolve_data_config)"
        )
        assert protocol["mean"] == [0.5, 0.5, 0.5]
        assert stdout.startswith("model: timm test_vit.r160_in1k, pretrained weights (model.safetensors)\n")
        assert protocol["resize"] == "shorter side 168 (bicubic, antialiased), centre crop 160x160"

    def test_crop_windows_are_the_models_own_input_size(self, zoo, tmp_path, capsys):
        # mode auto takes crop shifts for these zero-padded networks; the windows are the model's own input (224,
        # and 160 for test_resnet), cut from an image larger by twice the largest shift across (Zhang 2019's
        # protocol), and test_resnet's own resize (168) is enlarged to hold them
        expected = {
            "resnet18": ([3, 224, 238], [64, 112, 112], "resize shorter side 256 (bilinear, antialiased), crop "
                         "224x238 centre, room for crop windows of 224x224 (the model's input) moved by up to 0 rows "
                         "and 7 columns, normalize imagenet; "),
            "timm:test_resnet": ([3, 160, 174], [32, 80, 80], "resize shorter side 174 (bilinear, antialiased) "
                                 "(enlarged to hold the crop windows), crop 160x174 centre, room for crop windows of "
                                 "160x160 (the model's input) moved by up to 0 rows and 7 columns, normalize custom: "),
        }  # fmt: skip
        for spec, (shape, conv1, preprocessing) in expected.items():
            out = tmp_path / spec.replace(":", "_")
            weights = ["--weights", "IMAGENET1K_V1"] if spec == "resnet18" else []
            status, stdout, err = run(capsys, "probe", "--model", spec, *weights, "--images", "chelsea",
                                      "--shifts", "0:8", "--layers", "conv1", "--out", str(out))  # fmt: skip
            assert status == 0, err
            table = json.loads((out / "probe.json").read_text())
            assert table["protocol"]["mode"] == "crop" and table["protocol"]["input_shapes"] == [shape]
            assert table["protocol"]["preprocessing"].startswith(preprocessing)
            assert f"preprocessing: {preprocessing}" in stdout
            (row,) = [row for row in table["summary"] if row["layer"] == "conv1"]
            assert row["shape"] == conv1 and row["exact_shifts"] == 3  # every even shift, as the stride is 2

    def test_evaluate_auto_reads_the_models_own_resize_and_crop(self, zoo, photos, tmp_path, capsys):
        # test_vit's own preprocessing resizes to 168 and cuts 160: room for crop-consistency's windows up to 8
        # pixels apart (160 + 7 <= 168) and for the diagonal shift's crop windows, without --resize or --crop
        out = tmp_path / "auto"
        status, stdout, err = run(
            capsys, "evaluate", "--model", "timm:test_vit", "--data", str(photos), "--views", "2", "--max-shift", "8",
            "--sequence-shift", "2", "--subpixel-shifts", "0,0.5", "--workers", "0", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        protocol = json.loads((out / "evaluation.json").read_text())["protocol"]
        assert list(protocol["metrics"]) == ["consistency", "crop-consistency", "subpixel", "imagenet-p", "diagonal"]
        assert protocol["metrics"]["diagonal"]["mode"] == "crop"
        assert protocol["chosen_by_auto"] == [
            "metrics auto: with crop-consistency (resize 168 and crop 160; its windows, up to 8 pixels apart, need a "
            "resize of at least crop + 7)",
            "diagonal mode auto: crop (resize 168 and crop 160; crop windows need room around the crop)",
        ]
        assert "diagonal mode auto: crop (resize 168 and crop 160" in stdout
        report = (out / "report.html").read_text()
        assert "chosen by auto" in report and "metrics auto: with crop-consistency (resize 168 and crop 160" in report

    def test_evaluate_hugging_face_classifier(self, zoo, photos, tmp_path, capsys):
        out = tmp_path / "eval"
        status, stdout, err = run(
            capsys, "evaluate", "--model", f"hf:{HF_RESNET}", "--data", str(photos), "--metrics", "consistency",
            "--views", "3", "--max-shift", "4", "--workers", "0", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        assert "Loading weights" not in err  # transformers' own progress bar stays off
        protocol = json.loads((out / "evaluation.json").read_text())["protocol"]
        record = protocol["models"][f"hf:{HF_RESNET}"]
        assert record["preprocessing"]["source"] == f"image processor of {HF_RESNET} (ConvNextImageProcessor)"
        assert record["output"].startswith("'logits' of an ImageClassifierOutputWithNoAttention (the rule:")
        assert protocol["preparation"]["resize"] == "shorter side 73 (bicubic, antialiased)"
        assert protocol["preparation"]["model_input"] == "centre 64x64 window"

    def test_probe_segmentation_model(self, zoo, tmp_path, capsys):
        out = tmp_path / "probe"
        status, stdout, err = run(
            capsys, "probe", "--model", "deeplabv3_mobilenet_v3_large", "--weights", "DEFAULT", "--images",
            "chelsea", "--size", "64", "--shifts", "0:3", "--mode", "crop", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        protocol = json.loads((out / "probe.json").read_text())["protocol"]
        assert protocol["output"].startswith("'out' of an OrderedDict (the rule")
        rows = {row["layer"]: row for row in json.loads((out / "probe.json").read_text())["summary"]}
        # crop mode: every view is a 64-row window that all the shifts keep inside the image
        assert rows["output"]["shape"][:2] == [21, 64] and rows["output"]["stride"] == [1, 1]
        assert rows["output.aux"]["shape"] == rows["output"]["shape"]
        assert "output.aux" in stdout

    def test_output_key_on_the_command_line(self, zoo, tmp_path, capsys):
        out = tmp_path / "probe"
        status, _, err = run(
            capsys, "probe", "--model", "deeplabv3_mobilenet_v3_large", "--weights", "DEFAULT", "--images", "chelsea",
            "--size", "48", "--shifts", "0:2", "--layers", "classifier.4", "--output", "aux", "--out", str(out),
        )  # fmt: skip
        assert status == 0, err
        assert json.loads((out / "probe.json").read_text())["protocol"]["output"].startswith("'aux' of an OrderedDict")
        status, _, err = run(
            capsys, "probe", "--model", "deeplabv3_mobilenet_v3_large", "--weights", "DEFAULT", "--images", "chelsea",
            "--size", "48", "--shifts", "0:2", "--layers", "classifier.4", "--output", "logits",
            "--out", str(tmp_path / "bad"),
        )  # fmt: skip
        assert status == 2 and err.strip() == (
            "shiftlab: error: output: 'logits' is not in the model's output, an OrderedDict with tensors out, aux"
        )
        assert not (tmp_path / "bad").exists()

    def test_not_cached_is_one_line_and_nothing_written(self, empty_zoo, tmp_path, capsys):
        out = tmp_path / "probe"
        status, stdout, err = run(capsys, "probe", "--model", "timm:test_vit", "--out", str(out))
        assert status == 2 and len(err.strip().splitlines()) == 1
        assert err.startswith(
            "shiftlab: error: weights of timm:test_vit: model.safetensors of timm/test_vit.r160_in1k is not in the "
            "Hugging Face cache, and downloads are off (HF_HUB_OFFLINE=1): on a machine with a network run "
            "`hf download timm/test_vit.r160_in1k model.safetensors`"
        )
        assert not out.exists()


class TestNeverPartlyRandom:
    def test_hugging_face_weights_missing_a_parameter(self, zoo, tmp_path, monkeypatch):
        import shutil

        from safetensors.torch import load_file

        cache = tmp_path / "hf"
        source = next((zoo["hf_cache"] / f"models--{HF_RESNET.replace('/', '--')}" / "snapshots").iterdir())
        snapshot = hf_snapshot(cache, "shiftlab-test/incomplete")
        for name in ("config.json", "preprocessor_config.json"):
            shutil.copy(source / name, snapshot / name)
        state = load_file(str(source / "model.safetensors"))
        dropped = sorted(key for key in state if key.startswith("classifier"))
        save_file(
            {key: value for key, value in state.items() if key not in dropped}, str(snapshot / "model.safetensors")
        )
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        with pytest.raises(ShiftlabError) as caught:
            load_model("hf:shiftlab-test/incomplete")
        assert str(caught.value) == (
            "weights of hf:shiftlab-test/incomplete: model.safetensors leaves 2 parameter(s) of "
            f"ResNetForImageClassification at random initialisation ({', '.join(dropped)})"
        )


def test_a_converted_timm_model_keeps_its_pretrained_weights(zoo):
    model, info = load_model("timm:test_resnet+blurpool")
    plain, _ = load_model("timm:test_resnet")
    assert "converted (blurpool" in info.description and info.weights == "pretrained (timm)"
    assert torch.equal(model.state_dict()["fc.weight"], plain.state_dict()["fc.weight"])
