"""The Fashion-MNIST reader of the quality benchmark: IDX parsing (always), and the
Debian package's files read into a `datasets.Dataset` that hf-px's own calibration
loaders accept (skipped where the package is not installed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


fm = load_script("fashion_mnist")
needs_package = pytest.mark.skipif(
    not fm.available(),
    reason=f"Debian package {fm.PACKAGE} not installed (make fashion-mnist installs it)",
)


def _write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def test_read_idx_parses_header_and_payload(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", images)
    got = fm.read_idx(tmp_path / "x.gz")
    assert got.shape == (5, 4, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    labels = np.array([3, 1, 4], dtype=">i4")
    _write_idx(tmp_path / "y.gz", labels, 0x0C)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "y.gz"), [3, 1, 4])


def test_read_idx_refuses_bad_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(ValueError, match="not an IDX file"):
        fm.read_idx(tmp_path / "bad.gz")
    images = np.zeros((3, 2, 2), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 2, 2)  # says 4 images, holds 3
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + images.tobytes()))
    with pytest.raises(ValueError, match="payload"):
        fm.read_idx(tmp_path / "short.gz")


def test_missing_directory_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(fm.FashionMnistMissing, match="FASHION_MNIST_DIR"):
        fm.read_split("test")


def test_balanced_subset_takes_equal_counts():
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]
    keep = fm.balanced_subset(labels, 30, seed=0)
    assert len(keep) == 30 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep], minlength=10).tolist() == [3] * 10
    assert keep.tolist() != fm.balanced_subset(labels, 30, seed=1).tolist()


@needs_package
def test_package_files_read_into_a_dataset():
    import datasets

    images, labels = fm.read_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    ds = fm.fashion_mnist("test", limit=50, seed=0)
    assert len(ds) == 50
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names[0] == "T-shirt/top"
    assert ds.features["label"].names[9] == "Ankle boot"
    assert np.bincount(ds["label"], minlength=10).tolist() == [5] * 10
    # the PIL images hold exactly the file's pixels, in file order
    keep = fm.balanced_subset(labels, 50, seed=0)
    first = ds[0]["image"]
    assert first.mode == "L" and first.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(first), images[keep[0]])
    assert ds[49]["label"] == labels[keep[49]]


@needs_package
def test_dataset_goes_through_hf_px_calibration(tmp_path):
    from hf_px.calibration import default_image_processor, load_calibration_batches

    ds = fm.fashion_mnist("test", limit=40, seed=0)
    ds.save_to_disk(str(tmp_path / "fm"))
    batches = load_calibration_batches(
        str(tmp_path / "fm"),
        image_processor=default_image_processor(image_size=16),
        examples_per_class=2,
        batch_size=10,
    )
    assert [tuple(b["pixel_values"].shape) for b in batches] == [(10, 3, 16, 16)] * 2
    labels = sorted(int(y) for b in batches for y in b["labels"])
    assert labels == sorted(list(range(10)) * 2)
    # grey images: the three channels differ only by the processor's per-channel statistics
    x = batches[0]["pixel_values"]
    assert x.std() > 0.1
