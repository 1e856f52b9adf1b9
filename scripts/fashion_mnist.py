"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` as a `datasets.Dataset`.

The package installs the four gzipped IDX files of Zalando's Fashion-MNIST
(60,000 train / 10,000 test, 28×28 grey, 10 classes) under
``/usr/share/datasets/fashion-mnist``. :func:`fashion_mnist` reads them into a
dataset with an ``image`` column (PIL, grey) and a ``label`` ClassLabel column
carrying the 10 class names; from there on the images are an ordinary image
dataset (image processors, :mod:`hf_px.calibration`).

    python scripts/fashion_mnist.py --install     # apt-get it when missing
    python scripts/fashion_mnist.py               # print the splits' sizes
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# the package's README, in label order
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class FashionMnistMissing(RuntimeError):
    """The IDX files are not there (and could not be installed)."""


def data_dir() -> Path:
    """Where the IDX files are: ``$FASHION_MNIST_DIR`` or the package's directory."""
    return Path(os.environ.get("FASHION_MNIST_DIR", str(DEFAULT_DIR)))


def available(root: Path | None = None) -> bool:
    root = root or data_dir()
    return all((root / f).is_file() for pair in FILES.values() for f in pair)


def ensure_installed(root: Path | None = None) -> Path:
    """The data directory; installs the Debian package first when the files are missing.

    Raises :class:`FashionMnistMissing` with a one-line fix when that is impossible.
    """
    root = root or data_dir()
    if available(root):
        return root
    fix = f"install it with: apt-get update && apt-get install -y {PACKAGE}"
    if root != DEFAULT_DIR:
        raise FashionMnistMissing(f"no Fashion-MNIST IDX files in {root} (FASHION_MNIST_DIR)")
    apt = shutil.which("apt-get")
    if apt is None:
        raise FashionMnistMissing(f"Fashion-MNIST is missing and there is no apt-get; {fix}")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        raise FashionMnistMissing(f"Fashion-MNIST is missing and this user is not root; {fix}")
    for cmd in ([apt, "update"], [apt, "install", "-y", PACKAGE]):
        proc = subprocess.run(prefix + cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise FashionMnistMissing(f"`{' '.join(cmd)}` failed ({last}); {fix}")
    if not available(root):
        raise FashionMnistMissing(f"{PACKAGE} installed but {root} lacks the IDX files; {fix}")
    return root


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array: magic 0,0,type,ndim; big-endian dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if ndim else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {tuple(dims)} but the payload does not match")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(tuple(dims))


def read_split(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images N×28×28 uint8, labels N int64)`` of ``"train"`` or ``"test"``."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    root = ensure_installed(root)
    images = read_idx(root / FILES[split][0])
    labels = read_idx(root / FILES[split][1]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{split}: {images.shape} images vs {labels.shape} labels")
    return images, labels


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices, n/10 of every class (the first in a seeded permutation), sorted."""
    classes = np.unique(labels)
    per, extra = divmod(n, len(classes))
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = []
    for i, c in enumerate(classes):
        idx = order[labels[order] == c]
        k = per + (1 if i < extra else 0)
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than {k}")
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen))


def fashion_mnist(
    split: str = "train", limit: int | None = None, seed: int = 0, root: Path | None = None
):
    """A `datasets.Dataset` with ``image`` (PIL, mode L) and ``label`` (ClassLabel).

    ``limit``: a class-balanced subset of that many images (seeded, file order kept).
    """
    import datasets
    from PIL import Image

    images, labels = read_split(split, root)
    if limit is not None and limit < len(labels):
        keep = balanced_subset(labels, limit, seed)
        images, labels = images[keep], labels[keep]
    encoded = []
    for img in images:  # PNG bytes here: much faster than letting datasets encode PIL images
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG", compress_level=1)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))}
    )
    return datasets.Dataset.from_dict(
        {"image": encoded, "label": labels.tolist()}, features=features
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--install", action="store_true", help="apt-get the package when missing")
    a = p.parse_args(argv)
    try:
        root = ensure_installed() if a.install else data_dir()
        for split in FILES:
            images, labels = read_split(split, root)
            print(
                f"{split}: {images.shape[0]} images {images.shape[1:]}, {len(set(labels))} classes"
            )
    except (FashionMnistMissing, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
