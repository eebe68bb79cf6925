"""Recipes: which layout a conversion builds. shiftlab's own for any model, or the authors' published networks.

* ``"shiftlab"`` (the default): every downsampling layer of any model, where it is (see
  :mod:`shiftlab.layers.convert`).
* ``"zhang2019"``: Zhang's anti-aliased networks as antialiased-cnns builds them (:mod:`shiftlab.layers.zhang2019`):
  BlurPool, filter size 4 by default.
* ``"chaman2021"``: Chaman & Dokmanic's APS ResNets as their ImageNet code builds them
  (:mod:`shiftlab.layers.chaman2021`): APS with circular padding, no blur by default.

The two published recipes cover the torchvision architectures their authors released (:func:`supported`); they
give the authors' state_dict keys, so the authors' checkpoints load into the converted model (and the weights of
the unconverted torchvision model do not, by key: convert those with the model, or load them first; see
:func:`shiftlab.models.load_model`).
"""

from __future__ import annotations

from torch import nn

from shiftlab.errors import check_choice, fail
from shiftlab.layers._edits import apply_edits, splice
from shiftlab.layers._layouts import Layout
from shiftlab.layers.aps import APSPool2d, PhaseLink

__all__ = ["METHODS", "RECIPES", "convert_with_recipe", "recipe_arguments", "supported"]

#: The conversion methods (:mod:`shiftlab.layers.convert` builds them); a published recipe implies one.
METHODS: tuple[str, ...] = ("blurpool", "aps")
#: The recipes, the default first.
RECIPES: tuple[str, ...] = ("shiftlab", "zhang2019", "chaman2021")
#: The method each published recipe is, and what it is called in messages.
_METHOD = {
    "zhang2019": ("blurpool", "Zhang's anti-aliasing (BlurPool)"),
    "chaman2021": ("aps", "Chaman & Dokmanic's APS"),
}


def _layouts(recipe: str) -> tuple[Layout, ...]:
    if recipe == "zhang2019":
        from shiftlab.layers.zhang2019 import ZHANG2019_LAYOUTS

        return ZHANG2019_LAYOUTS
    from shiftlab.layers.chaman2021 import CHAMAN2021_LAYOUTS

    return CHAMAN2021_LAYOUTS


def supported(recipe: str) -> list[str]:
    """The architectures a published recipe covers, as the messages and the README name them.

    Example:
        >>> supported("chaman2021")[0].split(" (")[0]
        'ResNet'
    """
    return [layout.label for layout in _layouts(recipe)]


def recipe_arguments(
    recipe: str, method: str | None, padding: str | None, names: tuple[str, str, str] = ("recipe", "method", "padding")
) -> tuple[str, str, str | None]:
    """``(recipe, method, padding)`` checked together: a published recipe implies its method and its padding.

    ``names`` are how the three inputs are called in messages (``--recipe``, ... on the command line).

    Example:
        >>> recipe_arguments("chaman2021", None, None)
        ('chaman2021', 'aps', 'circular')
        >>> recipe_arguments("shiftlab", None, "circular")
        ('shiftlab', 'blurpool', 'circular')
    """
    recipe = check_choice(recipe, names[0], RECIPES)
    method = None if method is None else check_choice(method, names[1], METHODS)
    padding = check_choice(padding, names[2], (None, "circular"))
    if recipe == "shiftlab":
        return recipe, method or "blurpool", padding
    own, what = _METHOD[recipe]
    if method not in (None, own):
        fail(names[1], f"recipe '{recipe}' is {what}, method '{own}'; got '{method}'")
    if recipe == "zhang2019" and padding is not None:
        fail(
            names[2],
            "recipe 'zhang2019' keeps the zero padding of Zhang's networks; for circular padding use recipe 'shiftlab'",
        )
    return recipe, own, "circular" if recipe == "chaman2021" else None


def convert_with_recipe(
    model: nn.Module, recipe: str, *, kernel_size: int, norm: str, inplace: bool
) -> tuple[nn.Module, list[dict[str, str]]]:
    """Convert ``model`` to a published recipe's layout (arguments checked by the caller); ``(model, changes)``.

    Raises:
        ShiftlabError: an architecture the recipe does not cover (the message names those it covers), or a model
            not built the way torchvision builds it (the message names the layer). Nothing is changed.
    """
    layout = next((layout for layout in _layouts(recipe) if isinstance(model, layout.kind)), None)
    if layout is None:
        who = "Zhang released" if recipe == "zhang2019" else "Chaman & Dokmanic trained on ImageNet"
        fail(
            f"model {type(model).__name__}",
            f"recipe '{recipe}' covers the networks {who}, as torchvision builds them: "
            f"{'; '.join(supported(recipe))}; for any other model use recipe 'shiftlab'",
        )
    plan = layout.plan(model, kernel_size, norm)
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    edits = sorted(plan.edits, key=lambda edit: order[edit.name])
    # The deepest layers first: a block rebuilt around its layers (chaman2021) then holds their new forms.
    target = splice(apply_edits(model, reversed(edits), inplace=inplace))
    modules = dict(target.named_modules())
    for main, shortcut in plan.links:
        layers = {name: modules[name] for name in (main, shortcut)}
        assert all(isinstance(layer, APSPool2d) for layer in layers.values())
        PhaseLink.connect(layers)
    return target, [edit.row() for edit in edits]
