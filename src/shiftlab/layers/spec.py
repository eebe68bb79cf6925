"""Conversion suffixes in model specs: ``resnet18+circular+aps``, ``resnet50+blurpool@zhang2019``.

A model spec (see :func:`shiftlab.models.load_model`) may end in ``+WORD`` suffixes, each one of:

* ``circular``: make every padding circular (:func:`shiftlab.layers.make_circular`);
* ``blurpool`` or ``blurpoolK``: BlurPool with a binomial filter of size ``K`` (1-7; default 4);
* ``aps`` or ``apsK``: adaptive polyphase sampling, with a blur of size ``K`` before it (default: none);
* either of those followed by ``@RECIPE``: the layout of a published recipe (see
  :mod:`shiftlab.layers.recipes`): ``blurpool@zhang2019`` (``blurpool3@zhang2019`` for filter size 3) is Zhang's
  network, ``aps@chaman2021`` Chaman & Dokmanic's (circular already; ``+circular`` may be added and changes
  nothing). ``@shiftlab`` is the default.

At most one of ``blurpool`` and ``aps``, in any order with ``circular``. Only these words count as suffixes,
read from the right, so a file path with a ``+`` in it (``nets/a+b.py:build``) stays a path, and
``nets/a+b.py:build+aps`` is that model converted to APS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from shiftlab.errors import check
from shiftlab.layers.recipes import RECIPES, recipe_arguments

__all__ = ["Conversion", "split_model_spec"]

_WORD = re.compile(r"(circular)|(blurpool|aps)([1-7])?(?:@(\w*))?")


@dataclass(frozen=True)
class Conversion:
    """What a spec's suffixes ask for: a method (or none: circular padding only), circular padding, a filter size,
    a recipe."""

    method: str | None
    padding: str | None
    kernel_size: int | None
    suffix: str  # as written, with its leading "+"
    recipe: str = "shiftlab"

    def apply(self, model: nn.Module) -> tuple[nn.Module, list[dict[str, str]]]:
        """Convert ``model`` in place; returns it and the change table."""
        from shiftlab.layers.circular import make_circular
        from shiftlab.layers.convert import make_shift_invariant

        if self.method is None:
            return make_circular(model, inplace=True)
        return make_shift_invariant(
            model,
            self.method,
            recipe=self.recipe,
            padding=self.padding,
            kernel_size=self.kernel_size,
            inplace=True,
        )


def split_model_spec(spec: str) -> tuple[str, Conversion | None]:
    """``(base spec, conversion)``: the spec without its conversion suffixes, and what they ask for.

    Example:
        >>> split_model_spec("resnet18+circular+aps")  # doctest: +NORMALIZE_WHITESPACE
        ('resnet18', Conversion(method='aps', padding='circular', kernel_size=None, suffix='+circular+aps',
                                recipe='shiftlab'))
        >>> split_model_spec("nets/a+b.py:build")
        ('nets/a+b.py:build', None)
        >>> split_model_spec("resnet18+blurpool5")[1].kernel_size
        5
        >>> split_model_spec("resnet50+blurpool3@zhang2019")[1].recipe
        'zhang2019'
    """
    parts = spec.split("+")
    words: list[str] = []
    while len(parts) > 1 and _WORD.fullmatch(parts[-1].strip()):
        words.insert(0, parts.pop().strip())
    if not words:
        return spec, None
    base = "+".join(parts).strip()
    check(base, "model", f"{spec!r}: no model before the conversion suffixes")
    check(words.count("circular") <= 1, "model", f"{spec!r}: '+circular' is given twice")
    methods = [word for word in words if word != "circular"]
    check(
        len(methods) <= 1,
        "model",
        f"{spec!r} asks for {len(methods)} conversions ({', '.join(methods)}); give one of +blurpool and +aps",
    )
    method, kernel_size, recipe = None, None, "shiftlab"
    if methods:
        match = _WORD.fullmatch(methods[0])
        assert match is not None
        method, digits = match.group(2), match.group(3)
        kernel_size = int(digits) if digits else None
        if match.group(4) is not None:
            recipe = match.group(4)
            check(recipe in RECIPES, "model", f"{spec!r}: unknown recipe {recipe!r}; the recipes: {', '.join(RECIPES)}")
    padding = "circular" if "circular" in words else None
    if method is not None:  # a recipe implies its method and padding (and refuses the others)
        recipe, method, padding = recipe_arguments(recipe, method, padding, (f"model {spec!r}",) * 3)
    return base, Conversion(method, padding, kernel_size, "+" + "+".join(words), recipe)
