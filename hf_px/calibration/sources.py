"""Opening a dataset reference: the built-in digits, a saved dataset, an image folder, a Hub id.

A *dataset reference* is one of

* ``None`` (or ``"sklearn-digits"``): the built-in offline default — scikit-learn's
  1,797 handwritten digits (8×8 grey, 10 classes), presented as an RGB image
  dataset with a ``label`` ClassLabel column ("0" … "9"), split ``train`` only;
* a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a local image folder (the ``imagefolder`` layout: ``root/<class>/*.png|jpg``,
  optionally ``root/<split>/<class>/...``; images directly in ``root`` = unlabelled);
* a Hub dataset id (``cifar10``, ``user/name``) with an optional config. Hub
  datasets are *streamed* by default (``streaming=None``): only as many rows as
  the sample needs are downloaded; with ``HF_HUB_OFFLINE=1`` they are read from
  the local cache instead (``streaming=False``), since a stream needs the network.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import HfPxError
from ..refs import is_local
from ..utils import hub_offline

DEFAULT_DATASET = "sklearn-digits"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def describe(dataset) -> str:
    """How error messages and logs name a dataset reference."""
    return DEFAULT_DATASET if dataset is None else repr(os.fspath(dataset))


@functools.lru_cache(maxsize=1)
def digits_dataset():
    """scikit-learn's digits as a `datasets.Dataset` of RGB images (8×8, grey ×3)."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    encoded = []
    for p in pixels:  # PNG bytes ourselves: 20x faster than datasets encoding PIL images
        buf = io.BytesIO()
        Image.fromarray(p, mode="L").convert("RGB").save(buf, format="PNG", compress_level=1)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": encoded, "label": digits.target.tolist()}, features=features
    )


def _split_error(what: str, split: str, available: Iterable[str]) -> HfPxError:
    names = ", ".join(repr(s) for s in available)
    return HfPxError(f"{what} has no split {split!r}; choose --split from {names}")


def _check_single_split(ds, ref: str, split: str) -> None:
    """A saved single `Dataset` is one split: its own name (when it has one), or the
    default `train` that every command reads when no split is named."""
    own = str(ds.split) if ds.split is not None else None
    if split in ("train", own):
        return
    what = f"split {own!r}" if own else "no split name"
    fix = f"drop --split or pass --split {own}" if own else "drop --split"
    raise HfPxError(
        f"saved dataset {ref!r} is a single Dataset ({what}), so it has no split {split!r}; "
        f"{fix} (or save a DatasetDict with the splits)"
    )


def resolve_split(
    dataset: str | os.PathLike | None, dataset_config: str | None, split: str | None
) -> str | None:
    """`split` checked against the data, before any expensive work: refuses a split the
    built-in digits, a saved dataset or an image folder lack (a one-line error naming
    the ones it has). No split given and a saved single `Dataset` that has a name: that
    name (what the card should record); otherwise `split` as given. Hub ids are checked
    when opened (before any image is decoded)."""
    ref = None if dataset is None else os.fspath(dataset)
    if ref is None or ref == DEFAULT_DATASET:  # known without building it (sklearn, datasets)
        if split not in (None, "train"):
            raise _split_error("the built-in digits dataset", split, ["train"])
        return split
    path = Path(ref).expanduser()
    if path.is_dir() and not _is_saved(path):
        if split is not None:
            _check_folder_split(path, ref, split)
        return split
    if not _is_saved(path):
        return split
    ds = open_dataset(dataset, dataset_config=dataset_config, split=split or "train")
    single = not (path / "dataset_dict.json").is_file()
    own = getattr(ds, "split", None) if single else None
    return split if split is not None or own is None else str(own)


def _is_saved(path: Path) -> bool:
    return any((path / m).is_file() for m in _SAVED_MARKERS)


def _check_folder_split(path: Path, ref: str, split: str) -> None:
    """The splits `datasets` will find in an image folder (its own file-name rules)."""
    from datasets.data_files import get_data_patterns

    try:
        splits = [str(s) for s in get_data_patterns(str(path))]
    except (OSError, ValueError):  # no files: opening the folder reports it with its fix
        return
    if split not in splits:
        raise _split_error(f"image folder {ref!r}", split, splits)


def _check_image_folder(root: Path, split: str) -> None:
    """Refuse an image folder with exactly one class folder (datasets would then
    silently drop the labels), and one without images."""
    base = root / split if (root / split).is_dir() else root
    parents = {
        p.parent for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }
    if not parents:
        raise HfPxError(
            f"no images (.png/.jpg/...) found under {base}; use the layout <folder>/<class>/*.png"
        )
    if len(parents) == 1 and base not in parents:
        (only,) = parents
        raise HfPxError(
            f"image folder {root} has a single class folder {only.name!r}; put each class in "
            f"its own sub-folder ({root}/<class>/*.png), or the images directly in {root} "
            "when they have no labels"
        )


def open_dataset(
    dataset: str | os.PathLike | None = None,
    *,
    dataset_config: str | None = None,
    split: str = "train",
    streaming: bool | None = None,
):
    """A `datasets.Dataset` (or `IterableDataset` when streaming) for `dataset`."""
    import datasets

    if dataset is None or str(dataset) == DEFAULT_DATASET:
        if split != "train":
            raise _split_error("the built-in digits dataset", split, ["train"])
        return digits_dataset()
    ref = os.fspath(dataset)
    path = Path(ref).expanduser()
    if path.is_file():
        raise HfPxError(
            f"dataset {ref!r} is a file; pass an image folder, a save_to_disk directory "
            "or a Hub dataset id"
        )
    if path.is_dir():
        if _is_saved(path):
            try:
                ds = datasets.load_from_disk(str(path))
            except (OSError, ValueError) as err:
                raise HfPxError(
                    f"cannot read the saved dataset {ref!r} ({err}); write it again "
                    "with Dataset.save_to_disk"
                ) from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise _split_error(f"saved dataset {ref!r}", split, list(ds))
                ds = ds[split]
            else:
                _check_single_split(ds, ref, split)
            return ds.to_iterable_dataset() if streaming else ds
        _check_image_folder(path, split)
        return _load(datasets, ref, "imagefolder", None, split, bool(streaming), data_dir=str(path))
    if is_local(ref):
        raise HfPxError(
            f"no such dataset directory {ref!r}; check the path "
            "(or give a Hub dataset id such as 'cifar10' or 'user/name')"
        )
    if streaming is None:
        streaming = not hub_offline()
    return _load(datasets, ref, ref, dataset_config, split, streaming)


def _load(datasets, ref, path, config, split, streaming, **kwargs):
    try:
        return datasets.load_dataset(path, config, split=split, streaming=streaming, **kwargs)
    except ConnectionError as err:
        if hub_offline():
            raise HfPxError(
                f"dataset {ref!r} is not in the local cache and HF_HUB_OFFLINE is set; unset "
                "HF_HUB_OFFLINE (or run once online), or pass a local image folder"
            ) from None
        raise HfPxError(
            f"cannot reach the Hub for dataset {ref!r} ({err}); check the network, "
            "or pass a local image folder / save_to_disk directory"
        ) from None
    except datasets.exceptions.DatasetNotFoundError:
        raise HfPxError(
            f"dataset {ref!r} was not found on the Hub (or is gated/private); check the id, "
            "or set HF_TOKEN for a private one"
        ) from None
    except ValueError as err:
        msg = str(err)
        m = re.search(r'Unknown split "[^"]*"\. Should be one of (\[.*\])', msg) or re.search(
            r"Bad split: .*Available splits: (\[.*\])", msg
        )
        if m:
            raise HfPxError(
                f"dataset {ref!r} has no split {split!r}; choose --split from {m.group(1)}"
            ) from None
        if "BuilderConfig" in msg or "Config name is missing" in msg:
            first = msg.splitlines()[0]
            raise HfPxError(f"dataset {ref!r}: {first} — pass --dataset-config NAME") from None
        raise HfPxError(f"cannot load dataset {ref!r}: {msg.splitlines()[0]}") from None


def is_streamed(ds) -> bool:
    import datasets

    return isinstance(ds, datasets.IterableDataset)
