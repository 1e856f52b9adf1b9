"""Magnitude: S = |θ| (data-free)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Batch, Method, ScoringContext


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    return {n: ctx.effective(n).abs() for n in ctx.params}


METHOD = Method(name="magnitude", score=score, label="global magnitude", needs_data=False)
