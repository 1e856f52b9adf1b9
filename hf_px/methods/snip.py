"""SNIP (Lee et al., ICLR 2019): S = |∂L/∂θ ⊙ θ| of the cross-entropy loss.

Gradients are summed over batches (per-batch mean loss, as in the reference
code) and all-reduced before the absolute value. The model runs in eval mode:
deterministic, no dropout, and per-sample independent, so data parallelism
is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import (
    Batch,
    Method,
    ScoringContext,
    call,
    cross_entropy,
    masked_tensors,
    model_mode,
)


def loss_gradients(
    ctx: ScoringContext,
    batches: Sequence[Batch],
    leaves: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Σ_batches ∂L_b/∂leaf (this process's share), in float64: the float64 sum is
    exact, hence the same however batches are split over processes."""
    names = list(leaves)
    acc = {n: torch.zeros_like(leaves[n], dtype=torch.float64) for n in names}
    with model_mode(ctx.model):
        for batch in batches:
            logits = call(ctx.model, tensors, batch["pixel_values"]) / temperature
            loss = cross_entropy(logits, batch["labels"])
            grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    acc[n] += g
    return acc


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    tensors = masked_tensors(ctx)
    leaves = {n: tensors[n].clone().requires_grad_(True) for n in ctx.params}
    tensors.update(leaves)
    grads = ctx.reducer.all_reduce_dict(loss_gradients(ctx, batches, leaves, tensors))
    return {n: (grads[n] * ctx.effective(n)).abs().to(leaves[n].dtype) for n in ctx.params}


METHOD = Method(
    name="snip",
    score=score,
    label="SNIP",
    citation='Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection '
    'Sensitivity", ICLR 2019',
    needs_labels=True,
)
