"""Top-1 accuracy and mean cross-entropy of an image classifier on labelled batches.

A data set's label ids need not be the model's: a data set with class names
``["cat", "dog"]`` and a model whose ``id2label`` is ``{0: "dog", 1: "cat"}``
disagree on every id. :func:`evaluate` therefore maps each data-set label to
the model's id *by name* (``model.config.label2id``; case and surrounding
whitespace ignored) whenever both sides carry real names, and by id otherwise.

Pure: no printing, no writing; the model comes back in the train/eval mode it
had. Under data parallelism (``accelerator`` or a reducer) each process
evaluates its own batches and the three sums — correct predictions, summed
loss, number of images — are all-reduced, so every process returns the same
numbers as one process would (up to float summation order of the loss).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .distributed import make_reducer
from .errors import HfPxError
from .utils import float32_compute

_DEFAULT_NAME = re.compile(r"^LABEL_\d+$")


def _norm(name: Any) -> str:
    return str(name).strip().lower()


def _model_labels(model: nn.Module) -> dict[int, str] | None:
    """The model's real class names by id, or None when it only has LABEL_i."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in id2label.items()}
    if not labels or all(_DEFAULT_NAME.match(v) for v in labels.values()):
        return None
    return labels


def label_mapping(model: nn.Module, label_names: Sequence[str] | None) -> torch.Tensor | None:
    """Data-set id → model id (a lookup table), or None for the identity.

    Raises :class:`HfPxError` naming the classes the model does not know.
    """
    model_labels = _model_labels(model)
    if label_names is None or model_labels is None:
        return None
    names = [str(n) for n in label_names]
    if names == [model_labels.get(i) for i in range(len(names))]:
        return None
    by_name = {_norm(v): k for k, v in model_labels.items()}
    missing = [n for n in names if _norm(n) not in by_name]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise HfPxError(
            f"data-set classes {shown}{more} are not among the model's labels "
            f"({', '.join(repr(v) for v in list(model_labels.values())[:5])}, ...); "
            "evaluate on a data set with the classes the model was trained on"
        )
    return torch.tensor([by_name[_norm(n)] for n in names], dtype=torch.long)


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
        y = torch.as_tensor(b["labels"]).long().reshape(-1)
        if mapping is not None:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(mapping)):
                raise HfPxError(
                    "a label id lies outside the data set's class names; check --label-column"
                )
            y = mapping[y]
        logits = _logits(model(pixel_values=b["pixel_values"].to(device))).float().cpu()
        if logits.dim() != 2 or logits.shape[0] != y.numel():
            raise HfPxError(
                f"the model returned logits of shape {tuple(logits.shape)} for "
                f"{y.numel()} labels; evaluate an image classifier"
            )
        n_cls = num_labels or logits.shape[1]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_cls):
            raise HfPxError(
                f"label id {int(y.max())} is out of range for a model with {n_cls} "
                "classes; evaluate on the data set the model was trained for"
            )
        sums[0] += float((logits.argmax(-1) == y).sum())
        sums[1] += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        sums[2] += y.numel()
    return sums


__all__ = ["evaluate", "label_mapping"]
