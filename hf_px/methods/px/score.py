"""PX's score entry: the ``form`` dispatch, the overflow fallback to own-statistics
normalisation, and the float64 retry of a float32 pass that underflowed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
from torch import nn

from ...utils import all_kept
from ..base import Batch, ScoringContext
from . import per_sample
from .bound import AuxNetOverflow, score_bound
from .options import form_choice

logger = logging.getLogger(__name__)

#: what a default-option model falls back to when its path-exact aux nets overflow
OWN_STATISTICS = {"bn": "rms", "norm": "rms"}


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores (:func:`score_with_float64_retry`). If the default treatments (``bn="eval"``,
    ``norm="gate"``: no normalisation in the aux nets) overflow because the model has
    no cut to rescale at, the scores are taken with own-statistics normalisation
    (:data:`OWN_STATISTICS`) and a warning, once per prune; options the caller set
    explicitly are never replaced (the overflow is then an error)."""
    form = ctx.options.form or "bound"
    if form == "auto":
        form = form_choice(ctx.model, ctx.options.given())[0]
    if form != "bound":
        return per_sample.score(ctx, batches, form)
    cache = ctx.cache
    fallback = cache.store.get("px_fallback") if cache is not None else None
    if fallback:
        return score_with_float64_retry(
            replace(ctx, options=replace(ctx.options, **fallback)), batches
        )
    try:
        return score_with_float64_retry(ctx, batches)
    except AuxNetOverflow:
        if ctx.options.bn or ctx.options.norm:
            raise
        logger.warning(
            "px: the path-exact auxiliary nets overflowed on this model (no cut to rescale "
            "at); scoring with px options bn='rms', norm='rms' instead"
        )
        if cache is not None:
            cache.store["px_fallback"] = dict(OWN_STATISTICS)
        return score_with_float64_retry(
            replace(ctx, options=replace(ctx.options, **OWN_STATISTICS)), batches
        )


def score_with_float64_retry(
    ctx: ScoringContext, batches: Sequence[Batch]
) -> dict[str, torch.Tensor]:
    """PX scores (:func:`score_bound`); a float32 pass that leaves a still-dense tensor
    with only zero scores is redone once in float64.

    The kernel net multiplies θ² layer after layer; with small weights (random
    init, std 0.02) its activations fall below float32's range in deep nets
    (measured on tiny MobileNetV2 / EfficientNet / MobileViTv2 configs: 1e-94 to
    1e-121 in float64) and whole tensors score exactly 0. Float64 ranks them;
    where it cannot either, mask selection reports the tensors as degenerate.
    """
    scores = score_bound(ctx, batches)
    if not _all_zero_dense(ctx, scores) or _dtypes(ctx.model) != {torch.float32}:
        return scores
    logger.info("px: float32 scores underflowed to 0 for whole tensors; rescoring in float64")
    try:
        with _in_float64(ctx.model):
            wide = [{**b, "pixel_values": b["pixel_values"].double()} for b in batches]
            sample = ctx.sample_input
            return score_bound(
                replace(ctx, sample_input=None if sample is None else sample.double()), wide
            )
    except RuntimeError as exc:  # a model that hard-codes float32 somewhere
        logger.info("px: float64 rescoring failed (%s); keeping the float32 scores", exc)
        return scores


def _all_zero_dense(ctx: ScoringContext, scores: dict[str, torch.Tensor]) -> bool:
    return any(
        s.numel() >= 2 and all_kept(ctx.masks[n]) and not bool(s.any()) for n, s in scores.items()
    )


def _dtypes(model: nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.is_floating_point()}


@contextlib.contextmanager
def _in_float64(model: nn.Module) -> Iterator[None]:
    """Swap every floating parameter/buffer for a float64 copy; the originals (the very
    same storage, so bit-exact) are put back afterwards."""
    saved = []
    try:
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                saved.append((t, t.data))
                t.data = t.data.double()
        yield
    finally:
        for t, data in saved:
            t.data = data
