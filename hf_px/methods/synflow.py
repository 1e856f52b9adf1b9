"""SynFlow (Tanaka et al., NeurIPS 2020): data-free, S = |∂R/∂θ ⊙ θ| with
R = 1ᵀ f(1; |θ|), every parameter and buffer replaced by its absolute value,
eval mode, iterated on the exponential schedule (100 rounds by default).

Computed in float64: a product of |θ| over dozens of layers overflows float32
on deep nets (the reference code carries a commented-out `model.double()`).
Only the input's shape is read from the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Batch, Method, ScoringContext, call, masked_tensors, model_mode
from .options import MethodOptions, option


@dataclass(frozen=True)
class SynflowOptions(MethodOptions):
    method: ClassVar[str] = "synflow"

    double: bool = option(
        True,
        "SynFlow: compute in float64 (default: true; float32 overflows on deep nets)",
    )


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    dtype = torch.float64 if ctx.options.double else torch.float32
    tensors = {n: t.abs().to(dtype) for n, t in masked_tensors(ctx).items()}
    for n, b in ctx.model.named_buffers():
        tensors[n] = b.abs().to(dtype) if b.is_floating_point() else b.clone()
    leaves = {n: tensors[n].clone().requires_grad_(True) for n in ctx.params}
    tensors.update(leaves)
    sample = ctx.sample_input
    ones = torch.ones((1,) + tuple(sample.shape[1:]), dtype=dtype, device=sample.device)
    with model_mode(ctx.model):
        r = call(ctx.model, tensors, ones).sum()
    names = list(leaves)
    grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads, strict=True):
        p = ctx.effective(n)
        out[n] = torch.zeros_like(p) if g is None else (g * leaves[n].detach()).abs().to(p.dtype)
    return out


METHOD = Method(
    name="synflow",
    score=score,
    label="SynFlow",
    citation='Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by '
    'iteratively conserving synaptic flow", NeurIPS 2020',
    needs_data=False,
    needs_sample=True,  # data-free, but the ones it feeds take a real batch's shape
    default_rounds=100,
    options=SynflowOptions,
)
