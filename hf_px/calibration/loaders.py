"""The batches `compute_scores`/`prune` and evaluation take, from a dataset reference.

Both loaders take the same steps: open the dataset and find its image and label
columns (:func:`_open`), pick the rows, then check their labels, decode each image
once and run the image processor (:func:`_prepare`). They differ only in which rows they pick: calibration draws a
class-balanced or random sample in a seeded random order (classes mixed, so
BatchNorm statistics in a batch see several classes); evaluation takes the whole
split, or a seeded subset, in dataset order.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..errors import HfPxError
from . import sampling
from .columns import LABEL_COLUMNS, class_names, image_column_of, label_column_of, label_list
from .images import decode_image
from .labels import label_table, to_model_ids
from .processors import default_image_processor
from .sources import describe, is_streamed, open_dataset

logger = logging.getLogger(__name__)


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
    model_config: Any = None,
) -> list[dict[str, torch.Tensor]]:
    """The calibration batches for `dataset` (see :mod:`hf_px.calibration`).

    ``image_processor=None`` uses :func:`default_image_processor` (224 px,
    ImageNet statistics). ``need_labels=True`` (SNIP, GraSP) refuses a dataset
    without labels. `model_config` (the model's ``config``): labels come out as
    the model's class ids (:mod:`hf_px.calibration.labels`), checked before any
    image is decoded; without it they are the data set's own ids.
    Raises :class:`HfPxError` with the fix for every bad input.
    """
    sampling.check_positive("batch_size", batch_size)
    ds, image_col, label_col = _open(
        dataset, dataset_config, split, streaming, image_column, label_column
    )
    ids = _model_ids(ds, label_col, model_config, dataset)
    rows, label_col = _calibration_rows(
        ds, image_col, label_col, dataset, num_samples, examples_per_class, seed, need_labels, ids
    )
    batches = _prepare(rows, label_col, image_processor, batch_size, dataset, need_labels, ids)
    logger.info(
        "calibration: %d images in %d batches from %s",
        sum(len(b["pixel_values"]) for b in batches),
        len(batches),
        describe(dataset),
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
    model_config: Any = None,
) -> list[dict[str, torch.Tensor]]:
    """Labelled batches for evaluation: the whole split in dataset order, or
    `num_samples` images drawn with `seed` (kept in dataset order). With
    `model_config`, labels are the model's class ids, as for calibration."""
    sampling.check_positive("batch_size", batch_size)
    if num_samples is not None:
        sampling.check_positive("num_samples", num_samples)
    ds, image_col, label_col = _open(
        dataset, dataset_config, split, streaming, image_column, label_column
    )
    ids = _model_ids(ds, label_col, model_config, dataset)
    rows = _evaluation_rows(ds, image_col, label_col, dataset, num_samples, seed)
    return _prepare(rows, label_col, image_processor, batch_size, dataset, True, ids)


# -- the steps both loaders take: open, pick the rows (their own), prepare ------------------
def _open(dataset, dataset_config, split, streaming, image_column, label_column):
    """(dataset, its image column, its label column or None)."""
    ds = open_dataset(dataset, dataset_config=dataset_config, split=split, streaming=streaming)
    return ds, image_column_of(ds, image_column), label_column_of(ds, label_column)


def _model_ids(ds, label_col, model_config, dataset) -> tuple | None:
    """(data-set id → model id table, the model's class count) for `model_config`, with
    the data set's class names checked against it; None = keep the data set's ids."""
    if model_config is None or label_col is None:
        return None
    table = label_table(getattr(model_config, "id2label", None), class_names(ds, label_col))
    return table, getattr(model_config, "num_labels", None)


def _prepare(rows, label_col, image_processor, batch_size, dataset, need_labels, ids=None):
    """Check the rows' labels (against the model's classes with `ids`), decode each image
    once, run the image processor."""
    sampling.check_labels(rows, label_col)
    if ids is not None and rows and rows[0][2] is not None:
        to_model_ids([y for _, _, y in rows], *ids, f"dataset {describe(dataset)}")
    processor = image_processor if image_processor is not None else default_image_processor()
    return _batches(rows, processor, batch_size, describe(dataset), need_labels, ids)


def _no_labels(who: str, dataset) -> HfPxError:
    return HfPxError(
        f"{who} needs labels but dataset {describe(dataset)} has no label column "
        f"(looked for {', '.join(LABEL_COLUMNS)}); name it with --label-column"
    )


def _calibration_rows(
    ds, image_col, label_col, dataset, num_samples, examples_per_class, seed, need_labels, ids
):
    """k images of every class, or n images, drawn with `seed` in a random order."""
    streamed = is_streamed(ds)
    labels = label_list(ds, label_col) if label_col and not streamed else None
    if labels and all(y < 0 for y in labels):
        label_col = labels = None  # an unlabelled split (test sets store -1)
    if labels and ids is not None:  # every label the model's, before any row is read
        to_model_ids(labels, *ids, f"dataset {describe(dataset)}")
    if need_labels and label_col is None:
        raise _no_labels("the method", dataset)
    num_samples, per_class = sampling.resolve_sampling(
        num_samples, examples_per_class, label_col is not None
    )
    names = class_names(ds, label_col)
    if streamed:
        rows = sampling.stream_rows(
            ds,
            image_col,
            label_col,
            num_samples=num_samples,
            per_class=per_class,
            label_names=names,
            shuffle=True,
            seed=seed,
        )
        return rows, label_col
    rng = np.random.default_rng(seed)
    if per_class is not None:
        indices = sampling.balanced(labels, per_class, rng, names)
    else:
        indices = sampling.random_indices(len(ds), num_samples, rng, f"dataset {describe(dataset)}")
    return sampling.map_rows(ds, indices, image_col, label_col), label_col


def _evaluation_rows(ds, image_col, label_col, dataset, num_samples, seed):
    """The whole split, or `num_samples` rows drawn with `seed`, in dataset order."""
    if label_col is None:
        raise _no_labels("evaluation", dataset)
    what = f"dataset {describe(dataset)}"
    if is_streamed(ds):
        return sampling.stream_rows(
            ds, image_col, label_col, num_samples=num_samples, what=what
        ), label_col
    if num_samples is None:
        indices = list(range(len(ds)))
    else:
        rng = np.random.default_rng(seed)
        indices = sampling.random_indices(len(ds), num_samples, rng, what, in_order=True)
    return sampling.map_rows(ds, indices, image_col, label_col)


def _batches(rows, processor, batch_size: int, where: str, need_labels: bool, ids) -> list[dict]:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [decode_image(v, f"row {i} of {where}") for i, v, _ in chunk]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        if not isinstance(pixel_values, torch.Tensor):
            pixel_values = torch.as_tensor(np.stack(pixel_values))
        batch = {"pixel_values": pixel_values.float()}
        labels = [y for _, _, y in chunk]
        if all(y is not None for y in labels):
            batch["labels"] = (
                to_model_ids(labels, *ids, where)
                if ids is not None
                else torch.tensor(labels, dtype=torch.long)
            )
        out.append(batch)
    if need_labels and out and "labels" not in out[0]:
        raise HfPxError("this method needs labels but the dataset has none; name --label-column")
    return out
