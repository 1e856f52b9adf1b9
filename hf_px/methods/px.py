"""PX — Path eXclusion (Iurada, Ciccone, Tommasi, CVPR 2024).

R(x, θ) = Σ_k z_data,k(x) · z_kernel,k(θ²) bounds the NTK trace from above;
the saliency is S_j = |∂R/∂θ_j²| · θ_j² (docs/method.md).

* **kernel net**: transformed parameters → θ² (prunable ones masked), gates →
  identity, input = ones, normalisation layers on their own batch statistics.
* **data net**: transformed parameters → 1 (prunable ones → their 0/1 mask),
  gates → the gate the real masked model (eval mode) had on this batch, input
  = x², no gradient.
* *transformed* = every parameter but normalisation parameters and, for
  `transformers` classifiers, the classification head (reference semantics:
  both keep their values in both auxiliary nets); BatchNorm is recognised by
  type, not by name.

Two exact savings over the reference implementation, neither changes a score:

1. The kernel net's input is all ones, so every sample of a batch — and every
   batch — gives the same z_kernel (BatchNorm statistics over identical samples
   equal those of one sample). Hence R = Σ_k (Σ_batches Σ_n z_data[n, k]) ·
   z_kernel[k]: one kernel forward/backward on a single sample per scoring
   call, and the data passes need no gradient.
2. The only data-dependent quantity is the vector Σ z_data (one entry per
   class); under data parallelism that vector is all-reduced and every process
   runs the same kernel backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..adapters.base import BATCH_NORM, GROUP_NORM, LAYER_NORM, Gate, Norm
from ..errors import HfPxError
from .base import (
    Batch,
    Method,
    ScoringContext,
    call,
    cloned_buffers,
    hooks,
    masked_tensors,
    model_mode,
)

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


# -- gates -----------------------------------------------------------------------------
def _pre_stash(store: dict[int, torch.Tensor]):
    """Keep the pre-activation (cloned if the activation works in place)."""

    def hook(module, inputs):
        z = inputs[0]
        store[id(module)] = z.clone() if getattr(module, "inplace", False) else z

    return hook


def _record_hooks(gates: list[Gate], recorded: dict[int, list[torch.Tensor]]):
    handles = []
    for g in gates:

        def rec(module, inputs, fn=g.fn):
            recorded[id(module)].append(fn(inputs[0].detach()))

        handles.append(g.module.register_forward_pre_hook(rec))
    return handles


def _replay_hooks(gates: list[Gate], recorded: dict[int, list[torch.Tensor]]):
    """Data net: act(z) -> z * gate_recorded (the real model's gate, in call order)."""
    stash: dict[int, torch.Tensor] = {}
    handles = []
    for g in gates:
        handles.append(g.module.register_forward_pre_hook(_pre_stash(stash)))

        def replay(module, inputs, output):
            return stash.pop(id(module)) * recorded[id(module)].pop(0)

        handles.append(g.module.register_forward_hook(replay))
    return handles


def _identity_hooks(gates: list[Gate]):
    """Kernel net: every gate removed, act(z) -> z."""
    stash: dict[int, torch.Tensor] = {}
    handles = []
    for g in gates:
        handles.append(g.module.register_forward_pre_hook(_pre_stash(stash)))

        def ident(module, inputs, output):
            return stash.pop(id(module))

        handles.append(g.module.register_forward_hook(ident))
    return handles


# -- normalisation in the auxiliary nets ------------------------------------------------------
def _rms_normalise(module: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """LayerNorm/GroupNorm without centring: x / rms(x) · γ + β (docs/method.md §3).

    Centring is what maps the data net's constant-per-channel activations to
    0 and zeroes every score; dividing by the RMS keeps the per-token scale
    normalisation that keeps both nets finite, as BatchNorm does in the reference.
    """
    eps = getattr(module, "eps", 1e-5)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if kind == GROUP_NORM:
        n, c = x.shape[:2]
        g = module.num_groups
        xs = x.reshape(n, g, -1)
        y = (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)).reshape_as(x)
        shape = (1, c) + (1,) * (x.dim() - 2)
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y
    if getattr(module, "data_format", "channels_last") == "channels_first":
        y = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y
    dims = tuple(range(-len(module.normalized_shape), 0))
    y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_batch_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm on the net's own batch statistics, without centring."""
    dims = (0,) + tuple(range(2, x.dim()))
    y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + module.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if module.weight is not None:
        y = y * module.weight.reshape(shape)
    if module.bias is not None:
        y = y + module.bias.reshape(shape)
    return y


def _norm_hooks(norms: list[Norm], bn_mode: str = "reference"):
    handles = []
    for nm in norms:
        if nm.kind == BATCH_NORM and bn_mode == "rms":
            handles.append(
                nm.module.register_forward_hook(lambda mod, inp, out: _rms_batch_norm(mod, inp[0]))
            )
            continue
        if nm.kind not in (LAYER_NORM, GROUP_NORM):
            continue

        def replace(module, inputs, output, kind=nm.kind):
            return _rms_normalise(module, inputs[0], kind)

        handles.append(nm.module.register_forward_hook(replace))
    return handles


# -- the score --------------------------------------------------------------------------
def untouched_parameter_names(ctx: ScoringContext) -> set[str]:
    keep_classifier = ctx.options.get("keep_classifier", True)
    names = set(ctx.adapter.norm_parameter_names(ctx.model))
    if keep_classifier:
        names |= ctx.adapter.classifier_parameter_names(ctx.model)
    return names


def _kernel_forward(ctx, tensors, ones, gates, norms, bn_mode):
    """z_kernel on all-ones input (two samples if BatchNorm refuses a single value)."""
    buffers = cloned_buffers(ctx.model)
    with (
        model_mode(ctx.model, BN_TYPES),
        hooks(_identity_hooks(gates) + _norm_hooks(norms, bn_mode)),
    ):
        try:
            return call(ctx.model, {**tensors, **buffers}, ones)
        except ValueError:
            if ones.shape[0] != 1:
                raise
            two = torch.ones((2,) + tuple(ones.shape[1:]), dtype=ones.dtype, device=ones.device)
            return call(ctx.model, {**tensors, **buffers}, two)[:1]


def _data_forward(ctx, eff, data, x, gates, norms, bn_mode):
    """z_data on x² with the real masked model's gates (eval mode), no gradient."""
    model = ctx.model
    recorded: dict[int, list[torch.Tensor]] = {id(g.module): [] for g in gates}
    with torch.no_grad():
        with model_mode(model), hooks(_record_hooks(gates, recorded)):
            call(model, eff, x)
        with (
            model_mode(model, BN_TYPES),
            hooks(_replay_hooks(gates, recorded) + _norm_hooks(norms, bn_mode)),
        ):
            return call(model, {**data, **cloned_buffers(model)}, x.pow(2))


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores; see the module docstring and docs/method.md.

    Option ``bn``: ``"reference"`` (default) runs BatchNorm in both auxiliary
    nets on batch statistics exactly as the official code does, one kernel pass
    per batch on a batch of ones; ``"rms"`` normalises by the nets' own batch
    statistics without centring (docs/method.md §4: with centring, the kernel
    net's pooled features equal Σβ whatever the conv weights, so every conv
    score of a BatchNorm ResNet is floating-point round-off).
    """
    model = ctx.model
    bn_mode = ctx.options.get("bn", "reference")
    if bn_mode not in ("reference", "rms"):
        raise HfPxError(f"px option bn={bn_mode!r} is unknown; use 'reference' or 'rms'")
    untouched = untouched_parameter_names(ctx)
    gates = ctx.adapter.gates(model)
    norms = ctx.adapter.norms(model)
    has_bn = any(n.kind == BATCH_NORM for n in norms)
    eff = masked_tensors(ctx)

    # kernel net: θ² (θ for untouched), prunable entries are leaves
    leaves: dict[str, torch.Tensor] = {}
    kernel: dict[str, torch.Tensor] = {}
    for n, t in eff.items():
        v = t if n in untouched else t.pow(2)
        if n in ctx.params:
            v = v.clone().requires_grad_(True)
            leaves[n] = v
        kernel[n] = v
    # data net: 1 (the 0/1 mask for prunable), untouched keep θ
    data: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if n in untouched:
            data[n] = eff[n]
        elif n in ctx.params:
            data[n] = ctx.masks[n].to(p.dtype)
        else:
            data[n] = torch.ones((), dtype=p.dtype, device=p.device).expand_as(p)
    names = list(leaves)
    sample = ctx.options["sample_input"]

    if has_bn and bn_mode == "reference":
        # op for op as the official code: one kernel pass per batch on ones_like(x)
        acc = {n: torch.zeros_like(leaves[n]) for n in names}
        for batch in batches:
            x = batch["pixel_values"]
            z_data = _data_forward(ctx, eff, data, x, gates, norms, bn_mode)
            z_kernel = _kernel_forward(ctx, kernel, torch.ones_like(x), gates, norms, bn_mode)
            r = (z_data * z_kernel).sum()
            grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    acc[n] += g
        acc = ctx.reducer.all_reduce_dict(acc)
        return {n: acc[n].abs() * eff[n].pow(2) for n in names}

    # exact shortcut: z_kernel is the same for every sample, R = Σ_k (Σ z_data)_k z_kernel,k
    ones = torch.ones((1,) + tuple(sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    z_kernel = _kernel_forward(ctx, kernel, ones, gates, norms, bn_mode)[0]
    z_sum = torch.zeros(z_kernel.shape, dtype=torch.float64, device=z_kernel.device)
    for batch in batches:
        z = _data_forward(ctx, eff, data, batch["pixel_values"], gates, norms, bn_mode)
        z_sum += z.to(torch.float64).sum(0)
    z_sum = ctx.reducer.all_reduce_sum(z_sum)
    r = (z_sum.to(z_kernel.dtype) * z_kernel).sum()
    grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
    scores = {}
    for n, g in zip(names, grads, strict=True):
        e2 = eff[n].pow(2)
        scores[n] = torch.zeros_like(e2) if g is None else g.detach().abs() * e2
    return scores


METHOD = Method(name="px", score=score, needs_labels=False, default_rounds=100)
