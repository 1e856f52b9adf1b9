"""GraSP (Wang et al., ICLR 2020): S = θ ⊙ Hg, lowest removed.

Two passes as in the reference code (temperature 200): g = Σ_b ∇L_b without a
graph, all-reduced across processes *before* the second pass; then
Hg = Σ_b ∇(gᵀ∇L_b), all-reduced again. The paper removes the largest
−θ ⊙ Hg, i.e. keeps the largest θ ⊙ Hg: scores are signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import HfPxError
from .base import (
    Batch,
    Method,
    ScoringContext,
    attention_implementation,
    call,
    cross_entropy,
    masked_tensors,
    model_mode,
)
from .options import MethodOptions, option
from .snip import loss_gradients

TEMPERATURE = 200.0


def _positive(value: object) -> float:
    """A temperature divides the logits: it must be a positive number."""
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        t = float("nan")
    if not t > 0 or isinstance(value, bool):
        raise HfPxError(f"grasp option temperature={value!r} is not a positive number; e.g. 200")
    return t


@dataclass(frozen=True)
class GraspOptions(MethodOptions):
    method: ClassVar[str] = "grasp"

    temperature: float = option(
        TEMPERATURE,
        f"GraSP: the logits are divided by this before the loss (default: {TEMPERATURE:g}, "
        "the reference code's)",
        check=_positive,
        metavar="T",
    )


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    temperature = ctx.options.temperature
    tensors = masked_tensors(ctx)
    leaves = {n: tensors[n].clone().requires_grad_(True) for n in ctx.params}
    tensors.update(leaves)
    names = list(leaves)
    # Hessian-vector products need double backward, which fused attention lacks.
    with attention_implementation(ctx.model, "eager"):
        return _score(ctx, batches, temperature, tensors, leaves, names)


def _score(ctx, batches, temperature, tensors, leaves, names):
    g0 = ctx.reducer.all_reduce_dict(
        loss_gradients(ctx, batches, leaves, tensors, temperature=temperature)
    )
    g0 = {n: g.to(leaves[n].dtype) for n, g in g0.items()}
    # float64 sums are exact: the result does not depend on the process count
    hg = {n: torch.zeros_like(leaves[n], dtype=torch.float64) for n in names}
    with model_mode(ctx.model):
        for batch in batches:
            logits = call(ctx.model, tensors, batch["pixel_values"]) / temperature
            loss = cross_entropy(logits, batch["labels"])
            grads = torch.autograd.grad(
                loss, [leaves[n] for n in names], create_graph=True, allow_unused=True
            )
            dot = sum((g * g0[n]).sum() for n, g in zip(names, grads, strict=True) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue
            hvs = torch.autograd.grad(dot, [leaves[n] for n in names], allow_unused=True)
            for n, h in zip(names, hvs, strict=True):
                if h is not None:
                    hg[n] += h.detach()
    hg = ctx.reducer.all_reduce_dict(hg)
    return {n: (hg[n] * ctx.effective(n)).to(leaves[n].dtype) for n in names}


METHOD = Method(
    name="grasp",
    score=score,
    label="GraSP",
    citation='Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving '
    'Gradient Flow", ICLR 2020',
    needs_labels=True,
    options=GraspOptions,
)
