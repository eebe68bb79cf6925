"""Zhang's anti-aliased networks, exactly: the layouts of antialiased-cnns (adobe/antialiased-cnns, version 0.3).

Zhang, "Making Convolutional Networks Shift-Invariant Again" (ICML 2019), released ImageNet weights for ResNet,
VGG, DenseNet, MobileNetV2 and AlexNet. :func:`shiftlab.layers.make_shift_invariant` with ``recipe="zhang2019"``
turns torchvision's network of the same name into that layout, with the same state_dict keys, so that the released
``.pth`` files load (``--weights``) and the outputs equal those of ``antialiased_cnns`` with the same weights.
Every blur is his ``BlurPool``: a binomial filter of size ``k`` (default 4), reflect padding, one filter per channel
kept in the state_dict (``filt``). Where the layout differs from shiftlab's own recipe:

* **ResNet** (every torchvision ResNet, ResNeXt and wide ResNet): the 7x7 stem convolution stays strided (his
  ``pool_only=True``, the default and every released file); the stem's 3x3 max pool (padding 1) becomes a 2x2 max
  pool at stride 1 without padding, then the blur (``maxpool.0``, ``maxpool.1``). In a block that subsamples, the
  strided 3x3 convolution runs at stride 1 and the blur comes after its batch norm and ReLU, in front of the next
  convolution: ``conv2`` becomes ``conv2.0`` (blur) and ``conv2.1`` in a basic block, ``conv3`` becomes ``conv3.0``
  and ``conv3.1`` in a bottleneck. The shortcut blurs first, then runs its 1x1 convolution at stride 1
  (``downsample.0`` blur, ``.1`` convolution, ``.2`` batch norm): the same as the other order, at a quarter of the
  cost, since nothing nonlinear sits between them.
* **VGG**: every 2x2 max pool becomes a 2x2 max pool at stride 1, then the blur, both in ``features``: the layers
  after it move up one index.
* **DenseNet**: the stem convolution stays strided; its 3x3 max pool runs at stride 1 (``features.max0``, padding 1
  kept) before the blur (``features.pool0``); each transition's 2x2 average pool becomes the blur
  (``transitionN.pool``).
* **MobileNetV2**: the stem convolution stays strided; in a block that subsamples, the depthwise convolution runs
  at stride 1, and the blur follows its batch norm and ReLU6 (``conv.2``; the projection moves to ``conv.3`` and
  ``conv.4``). His classifier has no dropout: torchvision's ``Dropout(0.2)`` goes and the ``Linear`` becomes
  ``classifier.0``.
* **AlexNet** (his default ``pool_only=False``): the 11x11 stem convolution runs at stride 2 instead of 4, then its
  ReLU, then a blur at stride 2; each 3x3 max pool runs at stride 1 before a blur. The layers of ``features`` are
  renumbered accordingly.

Only the layouts of his released weights are built (``pool_only=True`` where he offers both).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision import models
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from shiftlab.layers._edits import Edit, Spliced, rebuilt_conv
from shiftlab.layers._layouts import Layout, Plan, check_covered, expect, expect_shortcut, is_pool, planned
from shiftlab.layers.blurpool import BlurPool2d

__all__ = ["ZHANG2019_LAYOUTS"]

RECIPE = "zhang2019"


def _blur(kernel_size: int, stride: tuple[int, int], channels: int) -> BlurPool2d:
    """Zhang's ``BlurPool(channels, filt_size=kernel_size, stride=stride)``: reflect padding, ``filt`` stored."""
    return BlurPool2d(kernel_size, stride, "reflect", channels=channels)


# The replacements, built from the layer they replace (planning builds them from a shallow copy: none changes it).


def _replaced(old: nn.Module, by: Callable[[], nn.Module]) -> nn.Module:
    return by()


def _blur_first(old: nn.Module, blur: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(blur(), old)


def _pool_then_blur(old: nn.Module, window: int, blur: Callable[[], nn.Module]) -> nn.Module:
    return Spliced(nn.MaxPool2d(window, stride=1), blur())


def _blurred_shortcut(old: nn.Conv2d, kernel_size: int, stride: tuple[int, int]) -> nn.Module:
    return Spliced(_blur(kernel_size, stride, old.in_channels), rebuilt_conv(old, stride=(1, 1)))


def _depthwise_then_blur(old: nn.Sequential, kernel_size: int, stride: tuple[int, int]) -> nn.Module:
    conv, norm, activation = old
    assert isinstance(conv, nn.Conv2d)
    depthwise = nn.Sequential(rebuilt_conv(conv, stride=(1, 1)), norm, activation)
    return Spliced(depthwise, _blur(kernel_size, stride, conv.out_channels))


def _resnet(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.ResNet)
    expect(is_pool(model.maxpool, nn.MaxPool2d, 3, 2, 1), RECIPE, model, "maxpool", "MaxPool2d(3, stride=2, padding=1)")
    stem = model.conv1.out_channels
    edits = [
        planned(
            model,
            "maxpool",
            "downsampling",
            lambda old: nn.Sequential(nn.MaxPool2d(2, stride=1), _blur(kernel_size, (2, 2), stem)),
            "Zhang's stem: a 2x2 max pool at stride 1 without padding, then the blur; the 7x7 convolution before it "
            "stays strided (pool_only=True)",
        )
    ]
    for name, block in model.named_modules():
        if isinstance(block, BasicBlock):
            strided, after = "conv1", "conv2"
        elif isinstance(block, Bottleneck):
            strided, after = "conv2", "conv3"
        else:
            continue
        conv = block.get_submodule(strided)
        expect(isinstance(conv, nn.Conv2d), RECIPE, model, f"{name}.{strided}", "a 3x3 Conv2d")
        if conv.stride == (1, 1):
            continue
        stride, channels = (conv.stride[0], conv.stride[1]), conv.out_channels
        edits.append(
            planned(
                model,
                f"{name}.{strided}",
                "downsampling",
                lambda old: rebuilt_conv(old, stride=(1, 1)),
                f"at stride 1: the subsampling moves after its batch norm and ReLU, to the blur '{name}.{after}.0'",
            )
        )
        edits.append(
            planned(
                model,
                f"{name}.{after}",
                "downsampling",
                partial(_blur_first, blur=partial(_blur, kernel_size, stride, channels)),
                f"the blur after the ReLU, then the convolution (now '{name}.{after}.1')",
            )
        )
        expect_shortcut(RECIPE, model, name, stride)
        edits.append(
            planned(
                model,
                f"{name}.downsample.0",
                "downsampling",
                partial(_blurred_shortcut, kernel_size=kernel_size, stride=stride),
                "the shortcut blurs, then runs its 1x1 convolution at stride 1 (downsample.0 and .1; the batch norm "
                "becomes downsample.2)",
            )
        )
    check_covered(RECIPE, model, edits, kept=("conv1",))
    return Plan(edits)


def _pools_of_features(model: nn.Module, window: int, kernel_size: int) -> list[Edit]:
    """Every max pool of ``model.features`` (``window`` at stride 2): the same window at stride 1, then the blur."""
    features = model.get_submodule("features")
    assert isinstance(features, nn.Sequential)
    edits, channels = [], 3
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            name = f"features.{index}"
            expected = f"MaxPool2d({window}, stride=2)"
            expect(is_pool(layer, nn.MaxPool2d, window, 2, 0), RECIPE, model, name, expected)
            edits.append(
                planned(
                    model,
                    name,
                    "downsampling",
                    partial(_pool_then_blur, window=window, blur=partial(_blur, kernel_size, (2, 2), channels)),
                    f"the {window}x{window} max pool at stride 1, then the blur, both in 'features': the layers "
                    "after them move up",
                )
            )
    return edits


def _vgg(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.VGG)
    edits = _pools_of_features(model, 2, kernel_size)
    check_covered(RECIPE, model, edits)
    return Plan(edits)


def _densenet(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.DenseNet)
    features = model.features
    expect(
        is_pool(getattr(features, "pool0", None), nn.MaxPool2d, 3, 2, 1),
        RECIPE,
        model,
        "features.pool0" if hasattr(features, "pool0") else "features",
        "MaxPool2d(3, stride=2, padding=1) named pool0",
    )
    stem = features.conv0.out_channels
    edits = [
        planned(
            model,
            "features.pool0",
            "downsampling",
            lambda old: Spliced(
                OrderedDict(max0=nn.MaxPool2d(3, stride=1, padding=1), pool0=_blur(kernel_size, (2, 2), stem))
            ),
            "Zhang's stem: the 3x3 max pool at stride 1 (features.max0), then the blur (features.pool0); the 7x7 "
            "convolution stays strided (pool_only=True)",
        )
    ]
    for name, child in features.named_children():
        if not name.startswith("transition"):
            continue
        pool = getattr(child, "pool", None)
        where = f"features.{name}.pool" if pool is not None else f"features.{name}"
        expect(is_pool(pool, nn.AvgPool2d, 2, 2, 0), RECIPE, model, where, "AvgPool2d(2, stride=2) named pool")
        edits.append(
            planned(
                model,
                where,
                "downsampling",
                partial(_replaced, by=partial(_blur, kernel_size, (2, 2), child.conv.out_channels)),
                "the 2x2 average becomes the blur",
            )
        )
    check_covered(RECIPE, model, edits, kept=("features.conv0",))
    return Plan(edits)


def _mobilenet_v2(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.MobileNetV2)
    edits = []
    for index, block in enumerate(model.features):
        if not isinstance(block, InvertedResidual):
            continue
        for position, part in enumerate(block.conv):
            conv = part[0] if isinstance(part, nn.Sequential) and len(part) == 3 else None
            if not isinstance(conv, nn.Conv2d) or conv.stride == (1, 1):
                continue
            name = f"features.{index}.conv.{position}"
            stride = (conv.stride[0], conv.stride[1])
            edits.append(
                planned(
                    model,
                    name,
                    "downsampling",
                    partial(_depthwise_then_blur, kernel_size=kernel_size, stride=stride),
                    "the depthwise convolution at stride 1, its batch norm and ReLU6, then the blur, in 'conv': the "
                    "projection after it moves up one index",
                )
            )
    classifier = model.classifier
    expect(
        isinstance(classifier, nn.Sequential)
        and len(classifier) == 2
        and isinstance(classifier[0], nn.Dropout)
        and isinstance(classifier[1], nn.Linear),
        RECIPE,
        model,
        "classifier",
        "Sequential(Dropout, Linear)",
    )
    removal = planned(
        model,
        "classifier.0",
        "layout",
        lambda old: Spliced(),
        "Zhang's MobileNetV2 has no dropout: the Linear becomes classifier.0",
    )
    removal.after = "(removed)"
    edits.append(removal)
    check_covered(RECIPE, model, edits, kept=("features.0.0",))
    return Plan(edits)


def _alexnet(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.AlexNet)
    features = model.features
    stem = features[0]
    expect(
        isinstance(stem, nn.Conv2d) and stem.stride == (4, 4) and isinstance(features[1], nn.ReLU),
        RECIPE,
        model,
        "features.0",
        "the 11x11 convolution at stride 4, followed by a ReLU",
    )
    edits = [
        planned(
            model,
            "features.0",
            "downsampling",
            lambda old: rebuilt_conv(old, stride=(2, 2)),
            "at stride 2 instead of 4: the other factor 2 is the blur after its ReLU (Zhang's pool_only=False)",
        ),
        planned(
            model,
            "features.1",
            "downsampling",
            lambda old: Spliced(old, _blur(kernel_size, (2, 2), stem.out_channels)),
            "the ReLU, then the blur at stride 2, in 'features': the layers after them move up",
        ),
    ]
    edits += _pools_of_features(model, 3, kernel_size)
    check_covered(RECIPE, model, edits)
    return Plan(edits)


#: The architectures of Zhang's released weights, as torchvision builds them.
ZHANG2019_LAYOUTS: tuple[Layout, ...] = (
    Layout(
        models.ResNet,
        "ResNet (resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2, wide_resnet101_2)",
        _resnet,
    ),
    Layout(models.VGG, "VGG (vgg11/13/16/19, with or without _bn)", _vgg),
    Layout(models.DenseNet, "DenseNet (densenet121/161/169/201)", _densenet),
    Layout(models.MobileNetV2, "MobileNetV2 (mobilenet_v2)", _mobilenet_v2),
    Layout(models.AlexNet, "AlexNet (alexnet)", _alexnet),
)
