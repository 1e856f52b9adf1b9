"""PX's per-sample forms for a *trained* network (px option ``form``; docs/method.md §10).

PX's R(x, θ) = Σ_k z_data,k · z_kernel,k is the Cauchy–Schwarz bound of the NTK
trace Σ_n Σ_k ‖∂f_k(x_n)/∂θ‖²; a weight's score is the share of the bound carried
by the paths through it. For a ReLU net θ_j ∂f_k(x)/∂θ_j = Σ_{p∋j, p→k} v_p a_p(x)
x_p exactly, so the quantity PX bounds has a per-weight form that keeps the
path view but not the decoupling:

* ``form="paths"``: S_j = θ_j² Σ_n Σ_k (∂f_k(x_n)/∂θ_j)² — per sample and class,
  the paths through j summed *with their signs and real gates*, squared: the
  squared first-order change of every logit when j is removed. One backward per
  class per batch (exact over classes; the cost grows with the number of labels).
* ``form="fisher"`` (label-free, loss-aware): the logits measured in the metric of
  the cross-entropy Hessian at the model's own prediction, H_n = diag(p_n) − p_n p_nᵀ:
  S_j = θ_j² Σ_n Σ_c p_nc (∂ℓ(x_n, c)/∂θ_j)² (the Fisher diagonal × θ², i.e. twice
  the second-order loss increase of removing j, as in Optimal Brain Damage). The
  sum over c runs over each sample's ``fisher_classes`` most probable classes
  (default 8; all when the model has no more labels): backward pass r takes every
  sample's r-th most probable class, so the cost is that many backwards per batch
  whatever the number of labels, and the classes left out carry the rest of p.

Both are exact per-sample sums, obtained from one backward per pass: for a
Linear/Conv2d weight the per-sample gradient is Σ_t b_{n,t} a_{n,t}ᵀ of the
layer's output gradient b and input a (im2col for convolutions; t runs over all
windows of the image for a layer run on windows, as Swin's attention), summed over
the layer's calls before it is squared. Sums are float64 and all-reduced, so
sharded data gives the single-process scores; the model runs in eval mode
(every sample independent: BatchNorm on its running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import HfPxError
from ..base import Batch, ScoringContext, call, hooks, masked_tensors, model_mode, timed
from ..refresh import reusable

#: per-sample gradients are formed and squared in float64: a score that is 0 in exact
#: arithmetic (cancelling paths) must not come out as float32 round-off
GRAD_DTYPE = torch.float64


def _per_sample_grad(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, *weight.shape) per-sample gradients of ``module.weight``, in ``GRAD_DTYPE``."""
    a, b = a.detach().to(GRAD_DTYPE), b.detach().to(GRAD_DTYPE)
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        return torch.einsum(
            "nto,nti->noi", b.reshape(n, -1, b.shape[-1]), a.reshape(n, -1, a.shape[-1])
        )
    # Conv2d: im2col of the input, per group
    pad = module._reversed_padding_repeated_twice
    if any(pad):
        a = nn.functional.pad(a, list(pad))
    cols = nn.functional.unfold(
        a, module.kernel_size, dilation=module.dilation, stride=module.stride
    )  # (N, C·kh·kw, L)
    g = module.groups
    out_ch = module.weight.shape[0]
    cols = cols.reshape(n, g, -1, cols.shape[-1])
    bb = b.reshape(n, g, out_ch // g, -1)
    grad = torch.bmm(
        bb.reshape(n * g, out_ch // g, -1), cols.reshape(n * g, -1, cols.shape[-1]).transpose(1, 2)
    )
    return grad.reshape(n, *module.weight.shape)


#: per-sample gradients are formed for this many float64 weight-sized tensors at a
#: time (a ViT-base fc1 is 2.4 M weights: 14 samples ≈ 270 MB)
CHUNK_ELEMENTS = 2**25


def per_sample_rows(module: nn.Module, t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` (a layer's input or output gradient) with one leading row per sample: a Linear
    that runs on windows (Swin: n·k windows, sample-major as its window partition makes
    them) gets each sample's windows folded into its positions."""
    if t.shape[0] == n:
        return t
    if not isinstance(module, nn.Linear) or t.shape[0] % n:
        raise HfPxError(
            f"{type(module).__name__} ran on {t.shape[0]} rows for {n} images; per-sample "
            "scores need one row per image or whole windows per image (use form='bound')"
        )
    return t.reshape(n, -1, t.shape[-1])


def _accumulate(acc, modules, calls, grads, weight, n_samples: int) -> None:
    """acc[name] += Σ_n w_n (Σ_calls per-sample gradient_n)², samples in chunks.

    √w_n scales the output gradient before the outer product (w ≥ 0), so the square
    is the weighted one; squares are summed in float64."""
    by_name: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    root = None if weight is None else weight.detach().to(GRAD_DTYPE).clamp_min(0).sqrt()
    for (name, a, _), b in zip(calls, grads, strict=True):
        if b is not None:
            a = per_sample_rows(modules[name], a, n_samples)
            b = per_sample_rows(modules[name], b, n_samples)
            if root is not None:
                b = b.detach().to(GRAD_DTYPE) * root.view(-1, *([1] * (b.dim() - 1)))
            by_name.setdefault(name, []).append((a, b))
    for name, pairs in by_name.items():
        module = modules[name]
        n = pairs[0][0].shape[0]
        step = max(1, CHUNK_ELEMENTS // module.weight.numel())
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            g = _per_sample_grad(module, pairs[0][0][lo:hi], pairs[0][1][lo:hi])
            for a, b in pairs[1:]:
                g += _per_sample_grad(module, a[lo:hi], b[lo:hi])
            acc[name] += g.square_().sum(0, dtype=torch.float64)


@dataclass
class _Curvature:
    """Σ over samples (and classes) of squared per-sample gradients, per weight."""

    key: tuple
    density: float
    sums: dict[str, torch.Tensor]


def curvature(ctx: ScoringContext, batches: Sequence[Batch], form: str) -> dict[str, torch.Tensor]:
    """This process's Σ_n Σ_c w_nc (∂c-th objective of x_n / ∂θ)², float64, per weight."""
    model = ctx.model
    modules = {
        (f"{n}.weight" if n else "weight"): m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    }
    modules = {n: m for n, m in modules.items() if n in ctx.params}
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def hook_for(name):
        def hook(module, args, output):
            calls.append((name, args[0].detach(), output))

        return hook

    acc = {n: torch.zeros(p.shape, dtype=torch.float64) for n, p in ctx.params.items()}
    tensors = masked_tensors(ctx)
    for n in ctx.params:  # leaves only so that every layer output is in the graph
        tensors[n] = tensors[n].clone().requires_grad_(True)
    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    n_classes = ctx.options.fisher_classes
    with model_mode(model), hooks(handles), torch.enable_grad():
        for batch in batches:
            calls.clear()
            logits = call(model, tensors, batch["pixel_values"]).float()
            k = logits.shape[-1]
            if form == "paths":
                passes = [(torch.full((len(logits),), c, dtype=torch.long), None) for c in range(k)]
            else:
                p = torch.softmax(logits.detach(), dim=-1)
                order = torch.argsort(p, dim=-1, descending=True)[:, : min(k, n_classes)]
                passes = [
                    (order[:, r], p.gather(1, order[:, r : r + 1])[:, 0])
                    for r in range(order.shape[1])
                ]
            outputs = [o for _, _, o in calls]
            for i, (cls, weight) in enumerate(passes):
                if form == "paths":
                    objective = logits.gather(1, cls[:, None]).sum()
                else:
                    objective = nn.functional.cross_entropy(logits, cls, reduction="sum")
                grads = torch.autograd.grad(
                    objective, outputs, retain_graph=i < len(passes) - 1, allow_unused=True
                )
                _accumulate(acc, modules, calls, grads, weight, len(logits))
    return dict(sorted(acc.items()))


def score(ctx: ScoringContext, batches: Sequence[Batch], form: str) -> dict[str, torch.Tensor]:
    """θ² × the per-sample curvature of ``form``; reused across rounds like PX's data side
    (``refresh``), the θ² factor always from the current masks."""
    key = (form, ctx.options.fisher_classes, tuple(b["pixel_values"].shape for b in batches))
    old, reuse, policy, density = reusable(ctx, "px_trained", key)
    cache = ctx.cache
    if reuse:
        sums = old.sums
        cache.notes["data_refreshed"] = False
    else:
        with timed(cache, "data_s"):
            sums = ctx.reducer.all_reduce_dict(curvature(ctx, batches, form))
        if cache is not None:
            cache.notes["data_refreshed"] = True
            if policy is not None:
                cache.refresh_plan = (policy, density)
                cache.store["px_trained"] = _Curvature(key, density, sums)
    out = {}
    for n in ctx.params:
        theta2 = ctx.effective(n).to(torch.float64).pow(2)
        out[n] = (sums[n] * theta2).to(ctx.params[n].dtype)
    return out
