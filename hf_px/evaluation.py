"""Top-1 accuracy and mean cross-entropy of an image classifier on labelled batches.

A data set's label ids need not be the model's: a data set with class names
``["cat", "dog"]`` and a model whose ``id2label`` is ``{0: "dog", 1: "cat"}``
disagree on every id. :func:`evaluate` therefore maps each data-set label to
the model's id *by name* whenever both sides carry real names, and by id
otherwise — the one mapping calibration and fine-tuning use too
(:mod:`hf_px.calibration.labels`).

Pure: no printing, no writing; the model comes back in the train/eval mode it
had. Under data parallelism (``accelerator`` or a reducer) each process
evaluates its own batches and the three sums — correct predictions, summed
loss, number of images — are all-reduced, so every process returns the same
numbers as one process would (up to float summation order of the loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .calibration.labels import label_table, to_model_ids
from .distributed import make_reducer
from .errors import HfPxError
from .utils import float32_compute


def label_mapping(model: nn.Module, label_names: Sequence[str] | None) -> torch.Tensor | None:
    """Data-set id → model id (a lookup table), or None for the identity
    (:func:`hf_px.calibration.labels.label_table` on the model's ``id2label``).

    Raises :class:`HfPxError` naming the classes the model does not know.
    """
    config = getattr(model, "config", None)
    return label_table(getattr(config, "id2label", None), label_names)


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    *,
    label_names: Sequence[str] | None = None,
    accelerator: Any = None,
) -> dict[str, float | int]:
    """Top-1 accuracy and mean cross-entropy of `model` on `batches`.

    `batches`: dicts with ``pixel_values`` (N×C×H×W float) and ``labels`` (N
    ints, the data set's ids). `label_names`: the data set's class names by id
    (e.g. a ``ClassLabel``'s ``names``), used to map ids to the model's own
    ``id2label``. Returns ``{"accuracy", "loss", "num_samples", "correct"}``.
    """
    batches = list(batches)
    for i, b in enumerate(batches):
        if not isinstance(b, dict) or "pixel_values" not in b or "labels" not in b:
            raise HfPxError(
                f"evaluation batch {i} lacks `pixel_values` or `labels`; "
                "evaluate on a labelled data set (pass --label-column if it is not detected)"
            )
    mapping = label_mapping(model, label_names)
    reducer = make_reducer(accelerator)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    was_training = model.training
    model.eval()
    try:
        with float32_compute(model):  # a half model's logits and loss in float32
            sums = _sums(model, reducer.shard(batches), mapping, num_labels)
    finally:
        model.train(was_training)
    sums = reducer.all_reduce_sum(sums)
    n = int(sums[2])
    if n == 0:
        raise HfPxError("no labelled images to evaluate on; check --dataset and --split")
    return {
        "accuracy": float(sums[0]) / n,
        "loss": float(sums[1]) / n,
        "num_samples": n,
        "correct": int(sums[0]),
    }


def _sums(model, batches, mapping, num_labels) -> torch.Tensor:
    """(correct predictions, summed loss, images) over `batches`, in float64."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums = torch.zeros(3, dtype=torch.float64)
    for b in batches:
        n = torch.as_tensor(b["labels"]).numel()
        logits = _logits(model(pixel_values=b["pixel_values"].to(device))).float().cpu()
        if logits.dim() != 2 or logits.shape[0] != n:
            raise HfPxError(
                f"the model returned logits of shape {tuple(logits.shape)} for "
                f"{n} labels; evaluate an image classifier"
            )
        y = to_model_ids(b["labels"], mapping, num_labels or logits.shape[1])
        sums[0] += float((logits.argmax(-1) == y).sum())
        sums[1] += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        sums[2] += y.numel()
    return sums


__all__ = ["evaluate", "label_mapping"]
