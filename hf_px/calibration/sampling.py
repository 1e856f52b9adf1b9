"""Which rows a sample takes: class-balanced or random draws, from a map-style or a
streamed dataset; the same seed gives the same rows on every machine and process.

A row is ``(index, image value, label or None)``; decoding happens later, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import HfPxError
from .columns import cast_undecoded

DEFAULT_EXAMPLES_PER_CLASS = 10
DEFAULT_NUM_SAMPLES = 100
_STREAM_BUFFER = 1000

Row = tuple[int, Any, Any]


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HfPxError(f"{name} must be a positive integer, got {value!r}")


def too_few(what: str, n: int, num_samples: int) -> HfPxError:
    return HfPxError(
        f"{what} has only {n} images, fewer than num_samples={num_samples}; lower --num-samples"
    )


def resolve_sampling(num_samples, examples_per_class, has_labels) -> tuple[int | None, int | None]:
    """(num_samples, examples_per_class) with the defaults filled in: k per class when
    the dataset has labels, else n images."""
    if num_samples is not None and examples_per_class is not None:
        raise HfPxError("give either examples_per_class or num_samples, not both")
    for name, v in (("num_samples", num_samples), ("examples_per_class", examples_per_class)):
        if v is not None:
            check_positive(name, v)
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


def balanced(labels: list[int], k: int, rng: np.random.Generator, names=None) -> list[int]:
    """k random indices of every class, in a random order (classes mixed)."""
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


def random_indices(
    n: int, num_samples: int, rng: np.random.Generator, what: str, *, in_order: bool = False
) -> list[int]:
    """`num_samples` of range(n) drawn at random, in draw order or (`in_order`) sorted."""
    if n < num_samples:
        raise too_few(what, n, num_samples)
    drawn = [int(i) for i in rng.permutation(n)[:num_samples]]
    return sorted(drawn) if in_order else drawn


def map_rows(ds, indices: list[int], image_col: str, label_col: str | None) -> list[Row]:
    cols = [image_col] + ([label_col] if label_col else [])
    sub = cast_undecoded(ds, image_col).select_columns(cols).select(indices)
    return [
        (i, row[image_col], (row[label_col] if label_col else None))
        for i, row in zip(indices, sub, strict=True)
    ]


def stream_rows(
    ds,
    image_col: str,
    label_col: str | None,
    *,
    num_samples: int | None,
    per_class: int | None = None,
    label_names: list[str] | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    what: str = "the dataset",
) -> list[Row]:
    """Rows of a streamed dataset, read until the sample is complete: in stream order,
    or shuffled with `seed` through a buffer; `num_samples=None` reads all."""
    n_classes = len(label_names) if label_names else None
    if per_class is not None and n_classes is None:
        raise HfPxError(
            "class-balanced sampling of a streamed dataset needs a ClassLabel column; "
            "use --num-samples, or streaming=False"
        )
    ds = cast_undecoded(ds, image_col)
    if shuffle:
        need = num_samples or per_class * max(1, n_classes or 0)
        ds = ds.shuffle(seed=seed, buffer_size=max(_STREAM_BUFFER, need))
    rows: list[Row] = []
    counts: dict[int, int] = {}
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
            raise too_few(what, len(rows), num_samples)
    return rows


def check_labels(rows: list[Row], label_col: str | None) -> None:
    """Every sampled row of a labelled dataset has a class id."""
    if label_col is None:
        return
    for _, _, y in rows:
        if y is None or isinstance(y, bool) or not isinstance(y, int | np.integer) or y < 0:
            raise HfPxError(
                f"label column {label_col!r} has missing or negative labels (e.g. {y!r}); "
                "use a labelled split (--split) or --label-column"
            )
