"""Random: i.i.d. uniform scores from a generator seeded by (seed, round, tensor)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Batch, Method, ScoringContext


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    out = {}
    for i, n in enumerate(ctx.params):
        p = ctx.params[n]
        gen = torch.Generator().manual_seed((ctx.seed * 1_000_003 + ctx.round_index) * 4099 + i)
        out[n] = torch.rand(p.shape, generator=gen, dtype=torch.float32).to(p.device)
    return out


METHOD = Method(name="random", score=score, label="random pruning", needs_data=False)
