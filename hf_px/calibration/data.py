"""Calibration data: a dataset reference → the batches `compute_scores`/`prune` take.

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

Sampling (the same seed gives the same images on every machine and process):

* ``examples_per_class=k``: k images of every class, drawn at random — the paper's
  class-balanced calibration set (k = 10);
* ``num_samples=n``: n images drawn at random;
* neither: ``examples_per_class=10`` when the dataset has labels, else
  ``num_samples=100``.

Images are decoded once, converted to RGB (grey, palette, 16-bit; transparency is
composited on white), prepared by the image processor and returned as a list of
``{"pixel_values": N×C×H×W float, "labels": N long}`` dicts, in a seeded random
order (classes mixed, so BatchNorm statistics in a batch see several classes).
The list is materialised: every pruning round reuses it without re-decoding.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HfPxError
from ..utils import hub_offline

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "sklearn-digits"
DEFAULT_EXAMPLES_PER_CLASS = 10
DEFAULT_NUM_SAMPLES = 100
DEFAULT_IMAGE_SIZE = 224  # transformers' default for configs without `image_size` (ResNet)
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_STREAM_BUFFER = 1000


# -- image processors -----------------------------------------------------------------------
def image_size_of(size: Any) -> tuple[int, int]:
    """(height, width) from a config's ``image_size``: an int, a pair, a
    ``{"height", "width"}`` dict, or None for transformers' default."""
    if size is None:
        size = DEFAULT_IMAGE_SIZE
    if isinstance(size, dict):
        size = (size.get("height", DEFAULT_IMAGE_SIZE), size.get("width", DEFAULT_IMAGE_SIZE))
    if isinstance(size, list | tuple):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def default_image_processor(config: Any = None, *, image_size: int | None = None):
    """The documented default when a model ships no image processor.

    Resize (bilinear) to ``image_size`` — else the model config's ``image_size``,
    else 224 — square, rescale to [0, 1], normalise with the ImageNet mean/std
    (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): the statistics most
    `transformers` image classifiers were trained with. A `transformers`
    ViT image processor, so it can be saved beside a checkpoint.
    """
    from transformers.image_utils import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        PILImageResampling,
    )

    size = image_size if image_size is not None else getattr(config, "image_size", None)
    height, width = image_size_of(size)
    if height < 1 or width < 1:
        raise HfPxError(f"image size must be positive, got {size!r}")
    try:  # transformers >= 5 without torchvision: the PIL backend, without a warning
        from transformers import ViTImageProcessorPil as processor_class
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as processor_class
    return processor_class(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def load_image_processor(model: str | os.PathLike, *, revision: str | None = None):
    """The model's own `AutoImageProcessor`, or None when it has none.

    A local directory without ``preprocessor_config.json`` gives None without
    touching the network; a Hub id is tried through the normal cache (so it
    works offline for a cached model) and gives None when absent or unreachable.
    """
    from transformers import AutoImageProcessor

    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        if not (path / "preprocessor_config.json").is_file():
            return None
        try:
            return AutoImageProcessor.from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as err:
            raise HfPxError(
                f"cannot read {path / 'preprocessor_config.json'} ({err}); fix or delete it"
            ) from None
    try:
        return AutoImageProcessor.from_pretrained(os.fspath(model), revision=revision)
    except (OSError, ValueError) as err:  # not found, offline, no config: use the default
        logger.info("no image processor for %s (%s); using the default", model, err)
        return None


# -- opening a dataset --------------------------------------------------------------------------
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
        if any((path / m).is_file() for m in _SAVED_MARKERS):
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
            return ds.to_iterable_dataset() if streaming else ds
        _check_image_folder(path, split)
        return _load(datasets, ref, "imagefolder", None, split, bool(streaming), data_dir=str(path))
    looks_local = ref.startswith((".", "/", "~")) or "\\" in ref or not _HUB_ID.match(ref)
    if looks_local:
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


# -- columns ------------------------------------------------------------------------------------
def _features(ds) -> dict[str, Any]:
    feats = getattr(ds, "features", None)
    return dict(feats) if feats else {}


def _columns(ds) -> list[str]:
    names = getattr(ds, "column_names", None)
    return list(names) if names else list(_features(ds))


def _column_of(ds, given: str | None, known: tuple[str, ...], feature: type, what: str):
    """`given` if the data set has it; else the first of `known` it has; else its one
    column typed `feature`; else None."""
    cols = _columns(ds)
    if given is not None:
        if given not in cols:
            raise HfPxError(
                f"no {what} column {given!r}; the dataset has columns {cols}: "
                f"pick one with --{what}-column"
            )
        return given
    for name in known:
        if name in cols:
            return name
    typed = [n for n, f in _features(ds).items() if isinstance(f, feature)]
    return typed[0] if len(typed) == 1 else None


def image_column_of(ds, image_column: str | None = None) -> str:
    import datasets

    found = _column_of(ds, image_column, IMAGE_COLUMNS, datasets.Image, "image")
    if found is None:
        raise HfPxError(
            f"no image column (looked for {', '.join(IMAGE_COLUMNS)}) among {_columns(ds)}; "
            "name it with --image-column"
        )
    return found


def label_column_of(ds, label_column: str | None = None) -> str | None:
    import datasets

    return _column_of(ds, label_column, LABEL_COLUMNS, datasets.ClassLabel, "label")


def dataset_label_names(
    dataset: str | os.PathLike | None = None,
    *,
    dataset_config: str | None = None,
    split: str = "train",
    label_column: str | None = None,
    streaming: bool | None = None,
) -> list[str] | None:
    """Class names of the label column (a ClassLabel), index = label id; None if unnamed."""
    import datasets

    ds = open_dataset(dataset, dataset_config=dataset_config, split=split, streaming=streaming)
    col = label_column_of(ds, label_column)
    feature = _features(ds).get(col) if col else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return None


# -- decoding -------------------------------------------------------------------------------------
def to_rgb(image):
    """RGB PIL image: grey/palette/16-bit converted, transparency composited on white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if image.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(value: Any, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            if value.get("path"):
                where = str(value["path"])
            if value.get("bytes"):
                image = Image.open(io.BytesIO(value["bytes"]))
            else:
                image = Image.open(value["path"])
        elif isinstance(value, np.ndarray | list | torch.Tensor):
            arr = np.asarray(value)
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # C×H×W → H×W×C
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.dtype != np.uint8:
                scale = 255.0 if arr.max() <= 1.0 else 1.0
                arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
            image = Image.fromarray(arr)
        else:
            raise HfPxError(
                f"{where}: the image column holds {type(value).__name__}, not an image; "
                "name the image column with --image-column"
            )
        image.load()
        return to_rgb(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, TypeError) as err:
        raise HfPxError(f"cannot read image {where} ({err}); remove or replace that file") from None


# -- sampling -----------------------------------------------------------------------------------------
def _label_list(ds, col: str) -> list[int]:
    values = ds[col]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise HfPxError(
                f"label column {col!r} holds {type(v).__name__} values, not class ids; "
                "name an integer/ClassLabel column with --label-column"
            )
        out.append(int(v))
    return out


def _balanced(labels: list[int], k: int, rng: np.random.Generator, names=None) -> list[int]:
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    chosen: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        if len(idx) < k:
            name = names[y] if names and 0 <= y < len(names) else y
            raise HfPxError(
                f"class {name!r} has only {len(idx)} image(s), fewer than examples_per_class={k}; "
                "lower --examples-per-class or add images"
            )
        chosen.extend(idx[j] for j in rng.choice(len(idx), size=k, replace=False))
    return [chosen[j] for j in rng.permutation(len(chosen))]


def _resolve_sampling(num_samples, examples_per_class, has_labels) -> tuple[int | None, int | None]:
    if num_samples is not None and examples_per_class is not None:
        raise HfPxError("give either examples_per_class or num_samples, not both")
    for name, v in (("num_samples", num_samples), ("examples_per_class", examples_per_class)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise HfPxError(f"{name} must be a positive integer, got {v!r}")
    if num_samples is None and examples_per_class is None:
        if has_labels:
            return None, DEFAULT_EXAMPLES_PER_CLASS
        return DEFAULT_NUM_SAMPLES, None
    if examples_per_class is not None and not has_labels:
        raise HfPxError(
            "class-balanced sampling (examples_per_class) needs a label column; name it with "
            "--label-column, or use --num-samples"
        )
    return num_samples, examples_per_class


def _rows_map(ds, indices: list[int], image_col: str, label_col: str | None) -> Iterator[tuple]:
    import datasets

    feature = _features(ds).get(image_col)
    if isinstance(feature, datasets.Image) and feature.decode:
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    cols = [image_col] + ([label_col] if label_col else [])
    sub = ds.select_columns(cols).select(indices)
    for i, row in zip(indices, sub, strict=True):
        yield i, row[image_col], (row[label_col] if label_col else None)


def _stream_rows(ds, need, image_col, label_col, num_samples, per_class, seed, label_names):
    """Rows of a streamed dataset: shuffled through a buffer, stopped when satisfied."""
    import datasets

    feature = _features(ds).get(image_col)
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    ds = ds.shuffle(seed=seed, buffer_size=max(_STREAM_BUFFER, need))
    rows: list[tuple] = []
    counts: dict[int, int] = {}
    n_classes = len(label_names) if label_names else None
    if per_class is not None and n_classes is None:
        raise HfPxError(
            "class-balanced sampling of a streamed dataset needs a ClassLabel column; "
            "use --num-samples, or streaming=False"
        )
    for i, row in enumerate(ds):
        y = row.get(label_col) if label_col else None
        if per_class is not None:
            if counts.get(y, 0) >= per_class:
                continue
            counts[y] = counts.get(y, 0) + 1
        rows.append((i, row[image_col], y))
        if num_samples is not None and len(rows) >= num_samples:
            break
        if per_class is not None and len(rows) >= per_class * n_classes:
            break
    else:
        if per_class is not None:
            short = [c for c in range(n_classes) if counts.get(c, 0) < per_class]
            raise HfPxError(
                f"class {label_names[short[0]]!r} has only {counts.get(short[0], 0)} image(s), "
                f"fewer than examples_per_class={per_class}; lower --examples-per-class"
            )
        if num_samples is not None and len(rows) < num_samples:
            raise HfPxError(
                f"the dataset has only {len(rows)} images, fewer than num_samples={num_samples}; "
                "lower --num-samples"
            )
    return rows


def _batches(rows, processor, batch_size: int, where: str, need_labels: bool) -> list[dict]:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [_decode(v, f"row {i} of {where}") for i, v, _ in chunk]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        if not isinstance(pixel_values, torch.Tensor):
            pixel_values = torch.as_tensor(np.stack(pixel_values))
        batch = {"pixel_values": pixel_values.float()}
        labels = [y for _, _, y in chunk]
        if all(y is not None for y in labels):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        out.append(batch)
    if need_labels and out and "labels" not in out[0]:
        raise HfPxError("this method needs labels but the dataset has none; name --label-column")
    return out


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HfPxError(f"batch_size must be a positive integer, got {batch_size!r}")


def _describe(dataset) -> str:
    return DEFAULT_DATASET if dataset is None else repr(os.fspath(dataset))


def load_calibration_batches(
    dataset: str | os.PathLike | None = None,
    *,
    image_processor: Any = None,
    dataset_config: str | None = None,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    num_samples: int | None = None,
    examples_per_class: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    need_labels: bool = False,
    streaming: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The calibration batches for `dataset` (see the module docstring).

    ``image_processor=None`` uses :func:`default_image_processor` (224 px,
    ImageNet statistics). ``need_labels=True`` (SNIP, GraSP) refuses a dataset
    without labels. Raises :class:`HfPxError` with the fix for every bad input.
    """
    _check_batch_size(batch_size)
    ds = open_dataset(dataset, dataset_config=dataset_config, split=split, streaming=streaming)
    image_col = image_column_of(ds, image_column)
    label_col = label_column_of(ds, label_column)
    streamed = _is_streamed(ds)
    labels = _label_list(ds, label_col) if label_col and not streamed else None
    if labels and all(y < 0 for y in labels):
        label_col = labels = None  # an unlabelled split (test sets store -1)
    if need_labels and label_col is None:
        raise HfPxError(
            f"the method needs labels but dataset {_describe(dataset)} has no label column "
            f"(looked for {', '.join(LABEL_COLUMNS)}); name it with --label-column"
        )
    num_samples, per_class = _resolve_sampling(
        num_samples, examples_per_class, label_col is not None
    )
    label_names = _class_names(ds, label_col)
    processor = image_processor if image_processor is not None else default_image_processor()
    if streamed:
        need = num_samples or per_class * max(1, len(label_names or ()))
        rows = _stream_rows(
            ds, need, image_col, label_col, num_samples, per_class, seed, label_names
        )
    else:
        rng = np.random.default_rng(seed)
        n = len(ds)
        if per_class is not None:
            indices = _balanced(labels, per_class, rng, label_names)
        elif n < num_samples:
            raise HfPxError(
                f"dataset {_describe(dataset)} has only {n} images, fewer than "
                f"num_samples={num_samples}; lower --num-samples"
            )
        else:
            indices = [int(i) for i in rng.permutation(n)[:num_samples]]
        rows = list(_rows_map(ds, indices, image_col, label_col))
    _check_labels(rows, label_col, label_col is not None)
    batches = _batches(rows, processor, batch_size, _describe(dataset), need_labels)
    logger.info(
        "calibration: %d images in %d batches from %s",
        sum(len(b["pixel_values"]) for b in batches),
        len(batches),
        _describe(dataset),
    )
    return batches


def load_labelled_batches(
    dataset: str | os.PathLike | None = None,
    *,
    image_processor: Any = None,
    dataset_config: str | None = None,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 32,
    num_samples: int | None = None,
    seed: int = 0,
    streaming: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Labelled batches for evaluation: the whole split in dataset order, or
    `num_samples` images drawn with `seed` (kept in dataset order)."""
    _check_batch_size(batch_size)
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise HfPxError(f"num_samples must be a positive integer, got {num_samples!r}")
    ds = open_dataset(dataset, dataset_config=dataset_config, split=split, streaming=streaming)
    image_col = image_column_of(ds, image_column)
    label_col = label_column_of(ds, label_column)
    if label_col is None:
        raise HfPxError(
            f"evaluation needs labels but dataset {_describe(dataset)} has no label column "
            f"(looked for {', '.join(LABEL_COLUMNS)}); name it with --label-column"
        )
    processor = image_processor if image_processor is not None else default_image_processor()
    if _is_streamed(ds):
        rows = []
        for i, row in enumerate(_cast_undecoded(ds, image_col)):
            rows.append((i, row[image_col], row[label_col]))
            if num_samples is not None and len(rows) >= num_samples:
                break
        if num_samples is not None and len(rows) < num_samples:
            raise HfPxError(
                f"dataset {_describe(dataset)} has only {len(rows)} images, fewer than "
                f"num_samples={num_samples}; lower --num-samples"
            )
    else:
        n = len(ds)
        if num_samples is None:
            indices = list(range(n))
        elif n < num_samples:
            raise HfPxError(
                f"dataset {_describe(dataset)} has only {n} images, fewer than "
                f"num_samples={num_samples}; lower --num-samples"
            )
        else:
            rng = np.random.default_rng(seed)
            indices = sorted(int(i) for i in rng.permutation(n)[:num_samples])
        rows = list(_rows_map(ds, indices, image_col, label_col))
    _check_labels(rows, label_col, True)
    return _batches(rows, processor, batch_size, _describe(dataset), True)


def _cast_undecoded(ds, image_col):
    import datasets

    if isinstance(_features(ds).get(image_col), datasets.Image):
        return ds.cast_column(image_col, datasets.Image(decode=False))
    return ds


def _is_streamed(ds) -> bool:
    import datasets

    return isinstance(ds, datasets.IterableDataset)


def _class_names(ds, label_col: str | None) -> list[str] | None:
    import datasets

    feature = _features(ds).get(label_col) if label_col else None
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _check_labels(rows, label_col, need: bool) -> None:
    if not need or label_col is None:
        return
    for _, _, y in rows:
        if y is None or isinstance(y, bool) or not isinstance(y, int | np.integer) or y < 0:
            raise HfPxError(
                f"label column {label_col!r} has missing or negative labels (e.g. {y!r}); "
                "use a labelled split (--split) or --label-column"
            )
