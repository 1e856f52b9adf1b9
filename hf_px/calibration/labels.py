"""The one mapping from a data set's labels to a model's class ids.

A data set's label ids need not be the model's: an image folder of the digits 3, 5
and 7 numbers them 0, 1, 2, and a data set with class names ``["cat", "dog"]`` and a
model whose ``id2label`` is ``{0: "dog", 1: "cat"}`` disagree on every id. Each
data-set label is therefore mapped to the model's id *by name* (case and surrounding
whitespace ignored) whenever both sides carry real names, and taken as the id
otherwise. Calibration (SNIP, GraSP), evaluation and fine-tuning all use
:func:`label_table` and :func:`to_model_ids`, so they agree on what a label means;
a class the model does not know is a one-line :class:`HfPxError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import HfPxError

_DEFAULT_NAME = re.compile(r"^LABEL_\d+$")


def _norm(name: Any) -> str:
    return str(name).strip().lower()


def model_class_names(id2label: Mapping | None) -> dict[int, str] | None:
    """The model's real class names by id, or None when it only has ``LABEL_i``."""
    labels = {int(k): str(v) for k, v in (id2label or {}).items()}
    if not labels or all(_DEFAULT_NAME.match(v) for v in labels.values()):
        return None
    return labels


def label_table(id2label: Mapping | None, label_names: Sequence[str] | None) -> torch.Tensor | None:
    """Data-set id → model id (a lookup tensor), or None when the ids are the model's.

    Raises :class:`HfPxError` naming the data-set classes the model does not know.
    """
    model_labels = model_class_names(id2label)
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
        known = ", ".join(repr(v) for v in list(model_labels.values())[:5])
        raise HfPxError(
            f"data-set class{'es' if len(missing) > 1 else ''} {shown}{more} "
            f"{'are' if len(missing) > 1 else 'is'} not among the model's labels ({known}, "
            "...); use data with the classes the model was trained on, or check --label-column"
        )
    return torch.tensor([by_name[_norm(n)] for n in names], dtype=torch.long)


def to_model_ids(
    labels: Iterable[int] | torch.Tensor,
    table: torch.Tensor | None,
    num_labels: int | None,
    where: str = "the data set",
) -> torch.Tensor:
    """`labels` (data-set ids) as the model's ids, through `table`; a one-line error for
    an id outside the data set's class names or the model's `num_labels` classes."""
    y = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels))
    y = y.long().reshape(-1)
    if not y.numel():
        return y
    if int(y.min()) < 0:
        raise HfPxError(
            f"{where} has a negative label ({int(y.min())}): an unlabelled split? "
            "use a labelled split or check --label-column"
        )
    if table is not None:
        if int(y.max()) >= len(table):
            raise HfPxError(
                f"label id {int(y.max())} of {where} lies outside its {len(table)} class "
                "names; check --label-column"
            )
        y = table[y]
    if num_labels is not None and int(y.max()) >= num_labels:
        raise HfPxError(
            f"label id {int(y.max())} of {where} is out of range for a model with "
            f"{num_labels} classes; use the data set the model was trained for, or check "
            "--label-column"
        )
    return y


__all__ = ["label_table", "model_class_names", "to_model_ids"]
