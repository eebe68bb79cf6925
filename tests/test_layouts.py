"""Tests for shiftlab.probing.layouts and the probe's layouts: known answers on channels-last and token networks.

Theory for the hand-built networks below (circular padding, circular shifts):

* every stride-1 layer is exactly equivariant, whatever its layout, so a probe that reads the axes right reports 0
  for every shift, and one that reads them wrong does not;
* a stride-2 patch merge is exact for even shifts only;
* a token network (patch embedding of stride p, per-token layers, no position embedding) is exact on its tokens for
  shifts that are multiples of p, and its mean-of-patches prefix token is then exactly invariant; for other shifts
  neither holds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.probing.layerwise import PREFIX, probe, probe_engine, probe_with
from shiftlab.probing.layouts import Layout, parse_layout, resolve_overrides

EXACT = 1e-5


def images(count: int = 2, size: int = 8, channels: int = 3, seed: int = 0, width: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, channels, size, width or size, generator=generator)


class PatchMerge(nn.Module):
    """Swin's patch merging on a channels-last map: 2x2 neighbours side by side, then a linear layer (stride 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(torch.cat(parts, dim=-1))


class ChannelsLastNet(nn.Module):
    """A circular stem, then channels-last LayerNorm / MLP at stride 1, then a stride-2 patch merge."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, channels, 3, padding=1, padding_mode="circular")
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))
        self.merge = PatchMerge(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)  # (N, H, W, C) from here on
        x = x + self.mlp(self.norm(x))
        return self.merge(x)


class TokenNet(nn.Module):
    """Patch embedding (kernel = stride = patch), a mean-of-patches prefix token, per-token LayerNorm and MLP.

    With ``fixed`` it refuses other input sizes, as torchvision's ViT does.
    """

    def __init__(self, patch: int = 4, channels: int = 6, fixed: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Conv2d(3, channels, patch, stride=patch)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))
        self.fixed = fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None and x.shape[-1] != self.fixed:
            raise ValueError(f"expected images of width {self.fixed}, got {x.shape[-1]}")
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, gh * gw, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # the prefix token: invariant
        return tokens + self.mlp(self.norm(tokens))


def rows_by(result, layer: str) -> dict[tuple[float, float], dict]:
    return {(row["dy"], row["dx"]): row for row in result.layer_rows(layer)}


# --------------------------------------------------------------------------- channels-last


class TestChannelsLast:
    SHIFTS = [(0, 1), (1, 0), (2, 2), (-3, 5), (4, -2)]

    def test_every_layer_exact_where_theory_says(self):
        # C = H = W = 8: a size guess cannot tell (N, H, W, C) from (N, C, H, W); two input sizes can.
        result = probe(ChannelsLastNet(8), images(size=8), shifts=self.SHIFTS, layers="all")
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["stem"]["layout"] == "NCHW"
        for name in ("norm", "mlp.0", "mlp.1", "mlp.2", "merge.reduction", "output"):
            assert summary[name]["layout"] == "NHWC", name
        for name in ("stem", "norm", "mlp.0", "mlp.1", "mlp.2"):
            assert summary[name]["stride"] == [1, 1]
            assert summary[name]["max_rel_l2"] <= EXACT, name
        for name in ("merge.reduction", "output"):
            assert summary[name]["stride"] == [2, 2]
            assert summary[name]["shape"] == [8, 4, 4]  # listed as (C, h, w)
            for (dy, dx), row in rows_by(result, name).items():
                even = dy % 2 == 0 and dx % 2 == 0
                assert row["multiple"] == even
                assert (row["rel_l2"] <= EXACT) == even, (name, dy, dx, row["rel_l2"])

    def test_read_as_channels_first_the_numbers_would_be_wrong(self):
        # The same network with the layouts forced to NCHW: the stride-1 layers no longer look exact, which is
        # what a wrong guess printed before.
        forced = probe(
            ChannelsLastNet(8), images(size=8), shifts=[(0, 1), (1, 0)], layers="all", layouts={"mlp.*": "NCHW"}
        )
        wrong = {row["layer"]: row for row in forced.summary()}
        assert wrong["mlp.0"]["layout"] == "NCHW"
        assert wrong["mlp.0"]["max_rel_l2"] > 0.1


# --------------------------------------------------------------------------- tokens


class TestTokens:
    MULTIPLES = [(0, 4), (4, 0), (-4, 8), (8, 8)]
    OTHERS = [(0, 1), (1, 0), (2, 3), (-2, 6)]

    @pytest.mark.parametrize("fixed", [False, True], ids=["two sizes", "one size"])
    def test_tokens_exact_for_multiples_of_the_patch_only(self, fixed):
        model = TokenNet(patch=4, fixed=16 if fixed else None)
        result = probe(model, images(size=16), shifts=self.MULTIPLES + self.OTHERS, layers="all")
        expected = "one input size" if fixed else "two input sizes"
        assert result.protocol["layouts"].startswith(expected)
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["embed"]["layout"] == "NCHW" and summary["embed"]["stride"] == [4, 4]
        for name in ("norm", "mlp.0", "mlp.1", "mlp.2", "output"):
            assert summary[name]["layout"] == "tokens (1 prefix)", name
            assert summary[name]["stride"] == [4, 4] and summary[name]["shape"][1:] == [4, 4]
            assert summary[name + PREFIX]["layout"] == "prefix tokens"
            assert summary[name + PREFIX]["stride"] is None and summary[name + PREFIX]["shape"][0] == 1
            for part in (name, name + PREFIX):
                for shift, row in rows_by(result, part).items():
                    exact = shift in self.MULTIPLES
                    assert (row["rel_l2"] <= EXACT) == exact, (part, shift, row["rel_l2"])

    def test_prefix_rows_follow_their_layer(self):
        result = probe(TokenNet(), images(size=16), shifts=[(0, 4)])
        layers = result.layers
        assert layers.index("mlp.2" + PREFIX) == layers.index("mlp.2") + 1

    def test_grid_with_rounding_and_non_square_input(self):
        # 18 x 13 input, patch 4: floor grid 4 x 3
        result = probe(TokenNet(patch=4), images(size=18, width=13), shifts=[(0, 4), (0, 1)], layers="norm")
        (row, _) = result.layer_rows("norm")
        assert row["shape"] == [6, 4, 3] and row["stride"] == [4, 4]


# --------------------------------------------------------------------------- one input size: the exact rules


class FixedSize(nn.Module):
    """Refuses every input size but one, as timm's ViT, Swin, LeViT and CaiT do (a fixed position grid)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")


class SwinLike(FixedSize):
    """A patch embedding of stride 2 (no padding), channels-last LayerNorms, a patch merge to stride 4 and another to
    stride 8: channels-last stages whose maps no NCHW module declares (Swin's ``layers.1`` to ``layers.3``)."""

    def __init__(self, size: int = 32, channels: int = 6) -> None:
        super().__init__(size)
        torch.manual_seed(3)
        self.embed = nn.Conv2d(3, channels, 2, stride=2)
        self.norm = nn.LayerNorm(channels)
        self.merge1 = PatchMerge(channels)
        self.norm1 = nn.LayerNorm(channels)
        self.merge2 = PatchMerge(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        x = self.norm(self.embed(x).permute(0, 2, 3, 1))
        return self.merge2(self.norm1(self.merge1(x)))


class LevitLike(FixedSize):
    """Patch embedding of stride 4, then tokens subsampled 2 x 2 (LeViT's ``Subsample``: ``x[:, ::2, ::2]``) twice:
    token counts that no NCHW map before them has. With ``cls`` a class token alone ``(N, 1, C)`` at the end."""

    def __init__(self, size: int = 32, channels: int = 6) -> None:
        super().__init__(size)
        torch.manual_seed(4)
        self.embed = nn.Conv2d(3, channels, 4, stride=4)
        self.stage0 = nn.Linear(channels, channels)
        self.stage1 = nn.Linear(channels, channels)
        self.stage2 = nn.Linear(channels, channels)
        self.cls = nn.Identity()

    @staticmethod
    def subsample(tokens: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(tokens.shape[1])
        grid = tokens.unflatten(1, (side, side))[:, ::2, ::2]
        return grid.flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        tokens = self.stage0(self.embed(x).flatten(2).transpose(1, 2))
        tokens = self.stage1(self.subsample(tokens))
        tokens = self.stage2(self.subsample(tokens))
        return self.cls(tokens.mean(dim=1, keepdim=True))  # (N, 1, C): invariant to multiples of the stride


class HeadTokens(nn.Module):
    """(N, heads, 1 + gh * gw, d): tokens on axis 2 (CoaT's relative position encoding), a mean token first."""

    def __init__(self, patch: int = 4, heads: int = 2, channels: int = 3, fixed: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Conv2d(3, heads * channels, patch, stride=patch)
        self.heads, self.fixed = heads, fixed
        self.attend = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None and x.shape[-1] != self.fixed:
            raise ValueError(f"expected width {self.fixed}")
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.attend(tokens.unflatten(2, (self.heads, -1)).transpose(1, 2))


class Folded(nn.Module):
    """MobileViT's unfolding: the 4 pixels of each 2 x 2 patch into the batch axis, ``(4 N, patches, C)``, a
    per-token layer, and back to a map."""

    def __init__(self, channels: int = 4, fixed: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv2d(3, channels, 1)
        self.transformer = nn.Linear(channels, channels)
        self.fixed = fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None and x.shape[-1] != self.fixed:
            raise ValueError(f"expected width {self.fixed}")
        maps = self.conv(x)
        n, c, h, w = maps.shape
        patches = maps.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 2, 4, 1).reshape(n * 4, -1, c)
        patches = self.transformer(patches)
        back = patches.reshape(n, 2, 2, h // 2, w // 2, c).permute(0, 5, 3, 1, 4, 2).reshape(n, c, h, w)
        return back.mean(dim=(2, 3))


class TestOneSizeRules:
    def test_channels_last_stages_at_the_strides_of_the_chain(self):
        result = probe(SwinLike(), images(size=32), shifts=[(0, 2), (0, 4), (0, 8), (4, 8)], layers="all")
        assert result.protocol["mode"] == "circular" and result.protocol["layouts"].startswith("one input size")
        summary = {row["layer"]: row for row in result.summary()}
        expected = {"embed": ("NCHW", 2), "norm": ("NHWC", 2), "merge1.reduction": ("NHWC", 4),
                    "norm1": ("NHWC", 4), "merge2.reduction": ("NHWC", 8)}  # fmt: skip
        assert {name: (summary[name]["layout"], summary[name]["stride"][0]) for name in expected} == expected
        assert summary["merge2.reduction"]["shape"] == [6, 4, 4]
        for name, (_, stride) in expected.items():  # circular shifts, no padding: exact exactly at the multiples
            for (dy, dx), row in rows_by(result, name).items():
                multiple = dy % stride == 0 and dx % stride == 0
                assert (row["rel_l2"] <= EXACT) == multiple, (name, dy, dx, row["rel_l2"])

    def test_a_map_that_fits_both_readings_is_unknown(self):
        # 6 channels on a 6 x 6 map at 24 x 24 (stride 4): (N, 6, 6, 6) reads as NCHW and as NHWC
        result = probe(SwinLike(size=24, channels=6), images(size=24), shifts=[(0, 4)], layers="merge1.reduction")
        (row,) = result.layer_rows("merge1.reduction")
        assert row["layout"] == "unknown"
        assert "both axes 1, 2 and axes 2, 3 of (1, 6, 6, 6) are a grid of the input" in row["note"]

    def test_subsampled_tokens_and_the_class_token_alone(self):
        result = probe(
            LevitLike(), images(size=32), shifts=[(0, 8), (0, 16), (0, 4)], layers="stage0,stage1,stage2,cls"
        )
        summary = {row["layer"]: row for row in result.summary()}
        assert [summary[name]["layout"] for name in ("stage0", "stage1", "stage2")] == ["tokens"] * 3
        assert [summary[name]["stride"] for name in ("stage0", "stage1", "stage2")] == [[4, 4], [8, 8], [16, 16]]
        assert [summary[name]["shape"] for name in ("stage1", "stage2")] == [[6, 4, 4], [6, 2, 2]]
        assert summary["cls"]["layout"] == "global" and summary["cls"]["shape"] == [1, 6]
        for name, stride in (("stage1", 8), ("stage2", 16), ("cls", 16)):
            for (_, dx), row in rows_by(result, name).items():
                assert (row["rel_l2"] <= EXACT) == (dx % stride == 0), (name, dx, row["rel_l2"])

    def test_a_grid_rounded_up_and_the_other_splits_named(self):
        # 28 x 28, stride 4: 7 x 7 tokens, subsampled to 4 x 4 (LeViT's rounding up): stride 8, 16 tokens; the
        # 16 tokens would also be 7 + 3 x 3 at stride 8, or 12 + 2 x 2 at stride 16
        result = probe(LevitLike(size=28), images(size=28), shifts=[(0, 8)], layers="stage1")
        (row,) = result.layer_rows("stage1")
        assert row["layout"] == "tokens" and row["stride"] == [8, 8] and row["shape"] == [6, 4, 4]
        assert result.protocol["layout_doubts"] == {
            "stage1": "16 tokens read as the largest grid; 7 plus 3x3, 12 plus 2x2 would fit too: give the stride if "
            "it is another"
        }

    def test_a_tokens_override_with_its_stride(self):
        # LeViT's 49 = 7 x 7 tokens, given as tokens at stride 8: no prefix
        result = probe(LevitLike(size=56), images(size=56), shifts=[(0, 8)], layers="stage1",
                       layouts={"stage1": "tokens"}, strides={"stage1": 8})  # fmt: skip
        (row,) = result.layer_rows("stage1")
        assert row["layout"] == "tokens" and row["stride"] == [8, 8] and row["shape"] == [6, 7, 7]


class TestHeadTokens:
    MULTIPLES = [(0, 4), (4, -8)]
    OTHERS = [(0, 1), (2, 3)]

    @pytest.mark.parametrize("fixed", [False, True], ids=["two sizes", "one size"])
    def test_exact_for_multiples_of_the_patch_only(self, fixed):
        model = HeadTokens(fixed=16 if fixed else None)
        result = probe(model, images(size=16), shifts=self.MULTIPLES + self.OTHERS, layers="attend")
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["attend"]["layout"] == "head tokens (1 prefix)"
        assert summary["attend"]["shape"] == [6, 4, 4] and summary["attend"]["stride"] == [4, 4]
        assert summary["attend" + PREFIX]["shape"] == [1, 6]
        for part in ("attend", "attend" + PREFIX):
            for shift, row in rows_by(result, part).items():
                assert (row["rel_l2"] <= EXACT) == (shift in self.MULTIPLES), (part, shift, row["rel_l2"])

    def test_an_attention_map_is_not_head_tokens(self):
        class Attention(FixedSize):
            def __init__(self) -> None:
                super().__init__(16)
                self.embed = nn.Conv2d(3, 4, 4, stride=4)
                self.softmax = nn.Softmax(dim=-1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                self.check(x)
                tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 4)
                scores = tokens @ tokens.transpose(1, 2)  # (N, 16, 16)
                return self.softmax(scores[:, None])  # (N, 1, 16, 16): queries and keys, no channel axis

        result = probe(Attention(), images(size=16), shifts=[(0, 4)], layers="softmax")
        assert result.layer_rows("softmax")[0]["layout"] == "unknown"


class TestFoldedIntoTheBatch:
    @pytest.mark.parametrize("fixed", [False, True], ids=["two sizes", "one size"])
    def test_left_out_of_the_default_layers_and_said_so(self, fixed):
        result = probe(Folded(fixed=12 if fixed else None), images(size=12), shifts=[(0, 2)])
        assert "transformer" not in result.layers
        assert result.protocol["layers_left_out"] == {
            "transformer": "folds patches or windows into the batch axis (4 outputs per image)"
        }
        assert result.unknown_layouts() == []

    @pytest.mark.parametrize("fixed", [False, True], ids=["two sizes", "one size"])
    def test_named_it_is_unknown_with_its_shape_at_the_probed_size(self, fixed):
        result = probe(Folded(fixed=12 if fixed else None), images(size=12), shifts=[(0, 2)], layers="transformer",
                       layouts={"transformer": "tokens"})  # an override cannot read the batch axis either  # fmt: skip
        (row,) = result.layer_rows("transformer")
        assert row["layout"] == "unknown" and row["shape"] == [4, 36, 4]  # 6 x 6 patches at 12 x 12, not 76 x 76
        assert (
            row["note"]
            == "layout unknown: patches or windows folded into the batch axis (shape (4, 36, 4) for one image)"
        )
        assert result.protocol["layers_left_out"] == {}


# --------------------------------------------------------------------------- unknown layouts, overrides


class ChannelsFirstTokens(nn.Module):
    """Outputs (N, C, L): tokens with channels first, a layout shiftlab does not read by itself."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Conv2d(3, 4, 2, stride=2)
        self.mix = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(x).flatten(2))


class TestUnknownAndOverrides:
    def test_unknown_layout_rows_carry_no_metric_and_say_why(self):
        result = probe(ChannelsFirstTokens(), images(size=8), shifts=[(0, 2), (0, 1)], layers="mix")
        rows = result.layer_rows("mix")
        assert all(row["layout"] == "unknown" for row in rows)
        assert all(math.isnan(row["rel_l2"]) and row["stride"] is None for row in rows)
        assert rows[0]["note"].startswith("layout unknown: axes [2] of shape (1, 4, 16) follow the input size")
        unknown = {item["layer"]: item for item in result.unknown_layouts()}
        assert set(unknown) == {"mix", "output"}  # the model returns the same (N, C, L) tensor
        assert "--layout 'mix=NCHW'" in unknown["mix"]["override"]
        # no number, no stride, no count of exact shifts: n/a, not "global" and "0 / 2"
        (summary, _) = result.summary()
        assert summary["stride"] is None and summary["exact_shifts"] is None and math.isnan(summary["max_rel_l2"])
        assert result.summary_table()[0][5:] == ["n/a", "n/a", "n/a", "n/a"]
        assert '"exact_shifts": null' in result.to_json()

    def test_an_override_measures_it(self):
        result = probe(
            ChannelsFirstTokens(),
            images(size=8),
            shifts=[(0, 2)],
            layers="mix",
            layouts=["mix=global", "output=global"],
        )
        (row,) = result.layer_rows("mix")
        assert row["layout"] == "global" and not math.isnan(row["rel_l2"])
        assert result.unknown_layouts() == []

    def test_an_override_that_does_not_fit_is_unknown_not_wrong(self):
        result = probe(ChannelsLastNet(8), images(size=8), shifts=[(0, 1)], layers="norm", layouts={"norm": "tokens"})
        (row,) = result.layer_rows("norm")
        assert row["layout"] == "unknown" and "given as tokens, but the output has shape" in row["note"]

    def test_stride_override(self):
        result = probe(
            ChannelsLastNet(8), images(size=8), shifts=[(0, 2)], layers="merge.reduction", strides=["merge.*=4,2"]
        )
        (row,) = result.layer_rows("merge.reduction")
        assert row["stride"] == [4, 2] and "stride given" not in row["note"]

    def test_a_reused_module_is_matched_by_its_name(self):
        assert resolve_overrides({"layer1.0.relu": "nhwc"})[0] == [("layer1.0.relu", "NHWC")]

    @pytest.mark.parametrize(
        ("layouts", "strides", "message"),
        [
            ({"x": "NWHC"}, None, "layout: must be one of NCHW, NHWC, tokens, global, got 'NWHC'"),
            (["x"], None, "layouts: expected PATTERN=VALUE, got 'x'"),
            (None, ["x=0,1"], "stride of 'x': must be an integer >= 1, got 0"),
            (None, ["x=a"], "stride of 'x': must be an integer or a pair of integers, got 'a'"),
            (None, {"x": (1, 2, 3)}, "stride of 'x': must be an integer or a pair of integers, got (1, 2, 3)"),
        ],
    )
    def test_bad_overrides(self, layouts, strides, message):
        with pytest.raises(ShiftlabError) as caught:
            probe(ChannelsLastNet(8), images(size=8), shifts=[(0, 1)], layouts=layouts, strides=strides)
        assert str(caught.value) == message

    def test_parse_layout(self):
        assert [parse_layout(text) for text in ("nchw", "NHWC", "Tokens", "global")] == [
            "NCHW",
            "NHWC",
            "tokens",
            "global",
        ]


class TestStrides:
    def test_valid_borders_do_not_fool_the_two_size_stride(self):
        # The article's network at 64: (64 - 2) // 8 = 7 pixels, whose size ratio says 9; two sizes say 8.
        from shiftlab.models import load_model

        model, _ = load_model("article")
        result = probe(model, torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)), shifts=[(0, 8)])
        assert result.layer_rows("pools.2")[0]["stride"] == [8, 8]

    def test_an_ambiguous_stride_is_said_to_be(self):
        # Maps padded up to a multiple of 3 before each of two stride-3 poolings: at 81 px 9 pixels, at 145 px
        # ceil(ceil(145 / 3) / 3) = 17: a change of 8 for 64 pixels, which 8 or 9 could explain...
        class PaddedPools(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                for _ in range(2):
                    pad = -x.shape[-1] % 3
                    x = nn.functional.max_pool2d(nn.functional.pad(x, (0, pad, 0, pad), mode="circular"), 3)
                return x

        result = probe(PaddedPools(), torch.rand(1, 1, 81, 81), shifts=[(0, 9)])
        (row,) = result.layer_rows("output")
        # ... but only 9 also explains both lengths, so 9 is chosen with no doubt left
        assert row["stride"] == [9, 9] and "would fit too" not in row["note"]

    def test_layout_grid(self):
        layout = Layout("tokens", (16, 16), 1, "floor")
        assert layout.grid((224, 224)) == (14, 14) and layout.grid((232, 240)) == (14, 15)
        assert Layout("tokens", (16, 16), 0, "ceil").grid((232, 240)) == (15, 15)


# --------------------------------------------------------------------------- today's architectures


def torchvision_model(name: str) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None).eval()


def stage_strides(result, names: list[str]) -> list[list[int]]:
    summary = {row["layer"]: row for row in result.summary()}
    return [summary[name]["stride"] for name in names]


@pytest.mark.slow
class TestModernArchitectures:
    """The stride of every stage, against the architecture's definition, at 224 x 224."""

    def probe(self, name: str, **kwargs):
        x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        return probe(torchvision_model(name), x, shifts=[(0, 0), (0, 16)], mode="circular", **kwargs)

    def test_swin_t(self):
        result = self.probe("swin_t")
        stages = ["features.1.1", "features.3.1", "features.5.5", "features.7.1"]
        assert stage_strides(result, stages) == [[4, 4], [8, 8], [16, 16], [32, 32]]
        assert {row["layout"] for row in result.summary() if row["layer"] in stages} == {"NHWC"}
        assert result.unknown_layouts() == []

    def test_vit_b_16(self):
        result = self.probe("vit_b_16")
        assert result.protocol["layouts"].startswith("one input size, 224x224 (the model refused")
        summary = {row["layer"]: row for row in result.summary()}
        assert summary["conv_proj"]["stride"] == [16, 16] and summary["conv_proj"]["layout"] == "NCHW"
        block = "encoder.layers.encoder_layer_5"
        assert summary[block]["layout"] == "tokens (1 prefix)" and summary[block]["stride"] == [16, 16]
        assert summary[block]["shape"] == [768, 14, 14]
        assert summary[block + PREFIX]["layout"] == "prefix tokens" and summary[block + PREFIX]["shape"] == [1, 768]
        # a shift of 16 is a multiple of the patch: the token map's row says so
        assert result.layer_rows(block)[1]["multiple"]
        assert result.unknown_layouts() == []

    def test_convnext_tiny(self):
        result = self.probe("convnext_tiny")
        stages = ["features.1.2", "features.3.2", "features.5.8", "features.7.2"]
        assert stage_strides(result, stages) == [[4, 4], [8, 8], [16, 16], [32, 32]]
        inside = self.probe("convnext_tiny", layers="features.1.0.block.*")
        kinds = {row["layer"]: row["layout"] for row in inside.summary()}
        assert kinds["features.1.0.block.0"] == "NCHW"  # the depthwise convolution
        assert kinds["features.1.0.block.2"] == "NHWC" and kinds["features.1.0.block.3"] == "NHWC"

    def test_maxvit_t(self):
        result = self.probe("maxvit_t")
        assert result.protocol["layouts"].startswith("one input size")
        assert stage_strides(result, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]) == [
            [4, 4],
            [8, 8],
            [16, 16],
            [32, 32],
        ]
        assert result.unknown_layouts() == []

    def test_maxvit_window_internals_are_unknown_when_asked_for(self):
        # (N, windows, window tokens, C): no rule reads those axes, and the rows say so.
        result = self.probe("maxvit_t", layers="blocks.0.layers.0.layers.window_attention.mlp_layer.*")
        assert {row["layout"] for row in result.summary()} == {"unknown", "global"}
        assert any(item["layer"].endswith("mlp_layer.1") for item in result.unknown_layouts())


def _all_torchvision_models() -> list[str]:
    try:
        import torchvision
    except ImportError:
        return []
    return sorted(torchvision.models.list_models(module=torchvision.models))


#: Architectures that take 224 x 224 only (a fixed position embedding or partition grid), and one that needs 75 px.
FIXED_SIZE = ("vit_", "maxvit")


@pytest.mark.slow
@pytest.mark.parametrize("name", _all_torchvision_models())
def test_every_torchvision_classifier(name):
    """Every classification architecture probes without error, and, with the default layers, without a single row
    computed on axes the probe could not establish."""
    size = 224 if name.startswith(FIXED_SIZE) else 96 if name.startswith("inception") else 64
    x = torch.rand(1, 3, size, size + 2, generator=torch.Generator().manual_seed(0))  # crop windows: size x size
    torch.set_num_threads(2)
    result = probe(torchvision_model(name), x, shifts=[(0, 1)], mode="crop")
    assert result.unknown_layouts() == []
    assert all(not math.isnan(row["rel_l2"]) for row in result.rows)
    assert result.layer_rows("output")[0]["shape"] == [1000]


class TestPlansAreHeldByTheEngine:
    """Layout plans live in the engine that made them (issue 17: no module-level cache keyed by ``id(model)``):
    ``probe()`` plans on every call, a kept engine (``probe_engine`` + ``probe_with``) plans once per input size."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
            self.act = nn.ReLU()
            self.images_seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.images_seen += x.shape[0]
            return self.act(self.conv(x))

    def test_probe_plans_on_every_call(self):
        model = self.Counting()
        first = probe(model, images(count=1), shifts=[(0, 1)])
        assert model.images_seen == 3  # one image for the plan, then the image and its shifted copy
        model.images_seen = 0
        second = probe(model, images(count=1), shifts=[(0, 1)])
        assert model.images_seen == 3 and second.rows == first.rows  # nothing remembered between calls

    def test_a_kept_engine_plans_once_per_input_size(self):
        model = self.Counting()
        engine = probe_engine(model)
        first = probe_with(engine, images(count=1), [(0, 1)])
        assert model.images_seen == 3
        model.images_seen = 0
        second = probe_with(engine, images(count=1), [(0, 1)])
        assert model.images_seen == 2 and second.rows == first.rows  # the same size: the plan is reused
        probe_with(engine, images(count=1, size=12), [(0, 1)])  # another size: planned again
        assert model.images_seen == 2 + 3

    def test_a_replaced_module_is_planned_again(self):
        model = self.Counting()
        probe(model, images(count=1), shifts=[(0, 1)])
        model.act = ChannelsLastWrapper()
        model.images_seen = 0
        result = probe(model, images(count=1), shifts=[(0, 1)], layers="conv,act")
        assert model.images_seen == 3
        assert result.layer_rows("act")[0]["layout"] == "NHWC"


class ChannelsLastWrapper(nn.Module):
    """A ReLU that hands its map on channels-last: a replacement that changes a layout without changing shapes'
    counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).permute(0, 2, 3, 1)
