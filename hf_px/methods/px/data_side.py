"""The data side of a PX round (Σ z_data, q/k gate gradients) and when a later
round may reuse it (the ``refresh`` policy, docs/method.md §2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..base import ScoringContext
from ..refresh import reusable


@dataclass
class DataSide:
    """What the data net gives a round: all a later round may reuse (see `data_side`)."""

    key: tuple
    density: float  # kept density of the masks it was computed with
    z_sum: torch.Tensor | None = None  # Σ_batches Σ_n z_data (float64, all-reduced)
    z_batches: list[torch.Tensor] = field(default_factory=list)  # reference BN: per local batch
    qk: dict[str, torch.Tensor] = field(default_factory=dict)  # ∂R/∂W_q,k, float64, all-reduced


def data_side(ctx: ScoringContext, key: tuple, compute: Callable[[float], DataSide]) -> DataSide:
    """The data side of this round: reused from `ctx.cache` while the refresh policy
    allows it, else computed by `compute(density)` and stored. Without a cache (one
    scoring call) or with ``refresh="every"`` it is always computed."""
    old, reuse, policy, density = reusable(ctx, "px", key)
    cache = ctx.cache
    if reuse:
        cache.notes["data_refreshed"] = False
        return old
    side = compute(density)
    if cache is not None:
        cache.notes["data_refreshed"] = True
        if policy is not None:  # lets `prune` count the refreshes still to come (its ETA)
            cache.refresh_plan = (policy, density)
        if isinstance(old, DataSide) and old.key == key:
            cache.notes["data_drift"] = _drift(old, side)
        if policy is not None:
            cache.store["px"] = side
    return side


def _drift(old: DataSide, new: DataSide) -> float:
    """1 − cos between the old and new per-class data vector: how stale reuse was."""

    def vec(side):
        if side.z_sum is not None:
            return side.z_sum.reshape(-1)
        return torch.cat([z.to(torch.float64).sum(0) for z in side.z_batches])

    a, b = vec(old), vec(new)
    if a.shape != b.shape:
        return math.nan
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    # |cos| may pass 1 by round-off (−2e-16 drifts on AVX2-only CPUs); a distance is ≥ 0
    return min(2.0, max(0.0, 1.0 - cos))
