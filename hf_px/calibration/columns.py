"""Which columns hold the images and the labels, and the class names."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import HfPxError
from .sources import open_dataset

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label")


def features_of(ds) -> dict[str, Any]:
    feats = getattr(ds, "features", None)
    return dict(feats) if feats else {}


def _columns(ds) -> list[str]:
    names = getattr(ds, "column_names", None)
    return list(names) if names else list(features_of(ds))


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
    typed = [n for n, f in features_of(ds).items() if isinstance(f, feature)]
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


def class_names(ds, label_col: str | None) -> list[str] | None:
    """The ClassLabel names of `label_col` (index = label id), or None."""
    import datasets

    feature = features_of(ds).get(label_col) if label_col else None
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def dataset_label_names(
    dataset: str | os.PathLike | None = None,
    *,
    dataset_config: str | None = None,
    split: str = "train",
    label_column: str | None = None,
    streaming: bool | None = None,
) -> list[str] | None:
    """Class names of the label column (a ClassLabel), index = label id; None if unnamed."""
    ds = open_dataset(dataset, dataset_config=dataset_config, split=split, streaming=streaming)
    return class_names(ds, label_column_of(ds, label_column))


def label_list(ds, col: str) -> list[int]:
    """Every label of a map-style dataset, refusing a column that holds no class ids."""
    out = []
    for v in ds[col]:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise HfPxError(
                f"label column {col!r} holds {type(v).__name__} values, not class ids; "
                "name an integer/ClassLabel column with --label-column"
            )
        out.append(int(v))
    return out


def cast_undecoded(ds, image_col: str):
    """`ds` with its image column left as bytes/paths: we decode (and convert) ourselves."""
    import datasets

    feature = features_of(ds).get(image_col)
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(image_col, datasets.Image(decode=False))
    return ds
