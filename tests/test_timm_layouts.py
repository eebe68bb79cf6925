"""Every timm architecture family is measured: no ``layout unknown`` row under the default layers, and the stride of
every stage as the architecture defines it. Random weights (``pretrained=False``): nothing is downloaded.

The smallest variant of each family. Models that take one input size (ViT, DeiT, Swin, LeViT, CoaT, CaiT, EVA-02,
MaxViT) are probed at their own size (their layouts come from the one-size rules); the others at 64 x 64 (from two
sizes). In ``crop`` mode the input is wider by twice the shift, so that the crop window is that size.
"""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.probing.layerwise import PREFIX, probe

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.slow  # end to end: each test builds and probes a real network (seconds each)

SHIFT = 4

#: name, the size the probe sees, the mode auto chooses (circular: no layer pads), {layer: stride}, {layer: layout}.
FAMILIES = [
    ("vit_tiny_patch16_224", 224, "circular", {"patch_embed.proj": 16, "blocks.11": 16},
     {"blocks.11": "tokens (1 prefix)"}),
    ("deit_tiny_patch16_224", 224, "circular", {"blocks.11": 16, "norm": 16}, {"norm": "tokens (1 prefix)"}),
    ("deit_tiny_distilled_patch16_224", 224, "circular", {"blocks.11": 16}, {"blocks.11": "tokens (2 prefix)"}),
    ("swin_tiny_patch4_window7_224", 224, "circular", {"layers.0": 4, "layers.1": 8, "layers.2": 16, "layers.3": 32},
     {"layers.3": "NHWC", "norm": "NHWC"}),
    ("convnext_atto", 64, "crop", {"stages.0": 4, "stages.1": 8, "stages.2": 16, "stages.3": 32}, {"stages.3": "NCHW"}),
    ("efficientnet_b0", 64, "crop", {"blocks.1.1": 4, "blocks.2.1": 8, "blocks.3.2": 16, "blocks.4.2": 16,
                                     "blocks.5.3": 32}, {}),
    ("regnetx_002", 64, "crop", {"s1": 4, "s2": 8, "s3": 16, "s4": 32}, {}),
    ("mobilevit_xxs", 64, "crop", {"stages.0.0": 2, "stages.1.2": 4, "stages.2.1": 8, "stages.3.1": 16,
                                   "stages.4.1": 32}, {"stages.2.1": "NCHW"}),
    ("levit_128s", 224, "crop", {"stem.conv4": 16, "stages.0": 16, "stages.1": 32, "stages.2": 64},
     {"stages.1": "tokens", "stages.2": "tokens"}),
    ("pvt_v2_b0", 64, "crop", {"stages.0": 4, "stages.1": 8, "stages.2": 16, "stages.3": 32}, {}),
    ("coat_lite_tiny", 224, "crop", {"serial_blocks1.1": 4, "serial_blocks2.1": 8, "serial_blocks3.1": 16,
                                     "serial_blocks4.1": 32, "crpe1": 4},
     {"serial_blocks4.1": "tokens (1 prefix)", "crpe1": "head tokens (1 prefix)"}),
    ("poolformer_s12", 64, "crop", {"stages.0": 4, "stages.1": 8, "stages.2": 16, "stages.3": 32}, {}),
    ("cait_xxs24_224", 224, "circular", {"blocks.23": 16, "norm": 16},
     {"blocks_token_only.0": "global", "norm": "tokens (1 prefix)"}),
    ("eva02_tiny_patch14_224", 224, "circular", {"blocks.11": 14}, {"blocks.11": "tokens (1 prefix)"}),
    ("maxvit_pico_rw_256", 256, "crop", {"stem.conv1": 2, "stages.0": 4, "stages.1": 8, "stages.2": 16,
                                         "stages.3": 32}, {}),
    ("fastvit_t8", 64, "crop", {"stem.0": 2, "stages.0": 4, "stages.1": 8, "stages.2": 16, "stages.3": 32}, {}),
    ("resnet18d", 64, "crop", {"layer1.1": 4, "layer2.1": 8, "layer3.1": 16, "layer4.1": 32}, {}),
]  # fmt: skip


def create(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def image(size: int, mode: str) -> torch.Tensor:
    """One image whose (crop) window is ``size`` x ``size``."""
    width = size + 2 * SHIFT if mode == "crop" else size
    return torch.rand(1, 3, size, width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "size", "mode", "strides", "layouts"), FAMILIES, ids=[item[0] for item in FAMILIES])
def test_every_family_is_measured(name, size, mode, strides, layouts):
    torch.manual_seed(0)
    result = probe(create(name), image(size, mode), shifts=[(0, SHIFT)])
    assert result.protocol["mode"] == mode, result.protocol["mode_reason"]
    assert result.unknown_layouts() == []
    summary = {row["layer"]: row for row in result.summary()}
    assert {layer: summary[layer]["stride"] for layer in strides} == {
        layer: [stride, stride] for layer, stride in strides.items()
    }
    assert {layer: summary[layer]["layout"] for layer in layouts} == layouts
    assert all(not math.isnan(row["rel_l2"]) for row in result.rows)
    left_out = result.protocol["layers_left_out"]
    assert (len(left_out), name) == (12 if name == "mobilevit_xxs" else 0, name)


class TestOneSizeRulesAgreeWithTwoSizes:
    """The same architecture built to take any size (timm's ``strict_img_size=False``, ``dynamic_img_size=True``)
    is planned from two sizes: the one-size rules must find the same layouts and strides for every default layer."""

    @pytest.mark.parametrize(
        ("name", "flexible"),
        [
            ("swin_tiny_patch4_window7_224", {"strict_img_size": False}),
            ("vit_tiny_patch16_224", {"dynamic_img_size": True}),
            ("deit_tiny_distilled_patch16_224", {"dynamic_img_size": True}),
        ],
    )
    def test_layouts_and_strides(self, name, flexible):
        x = image(224, "circular")
        strict = probe(create(name), x, shifts=[(0, 16)], mode="circular")
        torch.manual_seed(0)
        loose = probe(create(name, **flexible), x, shifts=[(0, 16)], mode="circular")
        assert strict.protocol["layouts"].startswith("one input size, 224x224")
        assert loose.protocol["layouts"].startswith("two input sizes")

        def table(result):
            return [(row["layer"], row["layout"], row["stride"], row["shape"]) for row in result.summary()]

        assert table(strict) == table(loose)


class TestSingleSizeSpecialCases:
    def test_levit_tokens_under_an_override(self):
        model = create("levit_128s")
        x = image(224, "circular")
        result = probe(model, x, shifts=[(0, 32)], mode="circular", layers="stages.1,stages.2",
                       layouts={"stages.*": "tokens"}, strides={"stages.1": 32})  # fmt: skip
        rows = {row["layer"]: row for row in result.summary()}
        assert rows["stages.1"]["layout"] == "tokens" and rows["stages.1"]["stride"] == [32, 32]
        assert rows["stages.1"]["shape"] == [256, 7, 7]
        assert rows["stages.2"]["layout"] == "tokens" and rows["stages.2"]["stride"] == [64, 64]
        assert rows["stages.2"]["shape"] == [384, 4, 4]  # ceil(224 / 64): LeViT subsamples 7 tokens to 4

    def test_cait_class_token_alone_is_a_global_row(self):
        result = probe(create("cait_xxs24_224"), image(224, "circular"), shifts=[(0, 16)], layers="blocks_token_only.*")
        (row,) = [row for row in result.summary() if row["layer"] == "blocks_token_only.1"]
        assert row["layout"] == "global" and row["shape"] == [1, 192] and not math.isnan(row["max_rel_l2"])

    def test_mobilevit_folded_patches_are_left_out_and_quoted_at_the_probed_size(self):
        model = create("mobilevit_xxs")
        x = image(64, "circular")
        default = probe(model, x, shifts=[(0, 8)], mode="circular")
        left_out = default.protocol["layers_left_out"]
        assert left_out["stages.2.1.transformer.0"] == (
            "folds patches or windows into the batch axis (4 outputs per image)"
        )
        assert not any(layer.startswith("stages.2.1.transformer") for layer in default.layers)
        named = probe(model, x, shifts=[(0, 8)], mode="circular", layers="stages.2.1.transformer.0")
        (item,) = named.unknown_layouts()
        # at 64 x 64 the 8 x 8 map of stage 2 is 16 patches of 2 x 2 pixels, the 4 pixels of a patch in the batch axis
        assert item["shape"] == [4, 16, 64]
        assert item["why"] == "patches or windows folded into the batch axis (shape (4, 16, 64) for one image)"
        assert item["override"] is None
        assert named.summary_table()[0][5:] == ["n/a", "n/a", "n/a", "n/a"]

    def test_coat_head_tokens_are_measured_as_maps(self):
        result = probe(create("coat_lite_tiny"), image(224, "circular"), shifts=[(0, 0)], mode="circular",
                       layers="crpe1")  # fmt: skip
        rows = {row["layer"]: row for row in result.summary()}
        assert rows["crpe1"]["shape"] == [64, 56, 56]  # 8 heads x 8 channels, on the 56 x 56 patch grid
        assert rows["crpe1" + PREFIX]["shape"] == [1, 64]
        assert rows["crpe1"]["max_rel_l2"] == 0.0  # the zero shift: the map compared with itself
