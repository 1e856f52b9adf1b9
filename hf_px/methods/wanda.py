"""Wanda (Sun, Liu, Bair, Kolter 2023): S_ij = |W_ij| · ‖X_j‖₂.

X_j is input column j of the layer over every calibration token: for a Linear
layer feature j of its input over all samples and positions; for a Conv2d the
column of the im2col matrix that meets W[o, c, u, v] — input channel c (of the
weight's group) shifted by the kernel offset (u, v) × dilation, over every
output position at the layer's stride, zero padding included — computed exactly
without im2col by one strided slice per kernel offset. The squared norms are
summed in float64 over batches and all-reduced before the square root, so data
sharded over processes gives the single-process scores.

The paper compares scores *within each output row* of a layer (a fixed fraction
of every row is removed) and prunes layer by layer. hf-px ranks the scores with
its own selection instead: ``scope="global"`` (the default of :func:`hf_px.prune`)
compares them across all tensors, ``scope="layerwise"`` within each tensor (the
closest to the paper; the per-row budget is not imposed). Scores are taken on the
masked model in eval mode, so over several rounds each round's ‖X‖ reflects the
weights pruned before it. Prunable weights of other module types (none with the
default adapters, which prune Conv2d/Linear) score |W|.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Batch, Method, ScoringContext, call, hooks, masked_tensors, model_mode


def conv_column_sq_norms(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Σ over samples and output positions of the squared im2col input, shaped like
    ``conv.weight`` but per input channel: ``(in_channels, kh, kw)``, float64."""
    x2 = x.detach().to(torch.float64).pow(2)
    pad = getattr(conv, "_reversed_padding_repeated_twice", None)
    if pad is not None and any(pad):
        x2 = nn.functional.pad(x2, list(pad))  # x² of zero padding is 0 for any mode's zeros
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    h_out = (x2.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (x2.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    out = torch.zeros(x2.shape[1], kh, kw, dtype=torch.float64, device=x.device)
    per_channel = x2.transpose(0, 1)  # (C, N, H, W)
    for u in range(kh):
        for v in range(kw):
            rows = slice(u * dh, u * dh + (h_out - 1) * sh + 1, sh)
            cols = slice(v * dw, v * dw + (w_out - 1) * sw + 1, sw)
            out[:, u, v] = per_channel[:, :, rows, cols].sum(dim=(1, 2, 3))
    return out


def conv_weight_norms(conv: nn.Conv2d, channel_norms: torch.Tensor) -> torch.Tensor:
    """Per-input-channel norms ``(C_in, kh, kw)`` → the weight's shape ``(C_out, C_in/g, kh, kw)``."""
    out_ch, in_per_group = conv.weight.shape[:2]
    groups = conv.groups
    group_of_out = torch.arange(out_ch, device=channel_norms.device) // (out_ch // groups)
    channel = group_of_out[:, None] * in_per_group + torch.arange(in_per_group)[None, :]
    return channel_norms[channel]


def input_sq_norms(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """Σ_batches ‖X_j‖² per input column of every prunable Linear/Conv2d weight
    (this process's share, float64, shaped per input column)."""
    modules = {
        (f"{n}.weight" if n else "weight"): m
        for n, m in ctx.model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    }
    modules = {n: m for n, m in modules.items() if n in ctx.params}
    acc: dict[str, torch.Tensor] = {}

    def hook_for(name, module):
        def hook(_mod, args):
            x = args[0]
            if isinstance(module, nn.Conv2d):
                s = conv_column_sq_norms(module, x)
            else:
                s = x.detach().to(torch.float64).pow(2).reshape(-1, x.shape[-1]).sum(0)
            acc[name] = acc[name] + s if name in acc else s

        return hook

    tensors = masked_tensors(ctx)
    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in modules.items()]
    with model_mode(ctx.model), hooks(handles), torch.no_grad():
        for batch in batches:
            call(ctx.model, tensors, batch["pixel_values"])
    for n, m in modules.items():  # a layer no batch reached (or no batch here): zeros
        if n not in acc:
            conv = isinstance(m, nn.Conv2d)
            shape = (m.in_channels, *m.kernel_size) if conv else (m.in_features,)
            acc[n] = torch.zeros(shape, dtype=torch.float64, device=m.weight.device)
    return dict(sorted(acc.items()))


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    sq = ctx.reducer.all_reduce_dict(input_sq_norms(ctx, batches))
    modules = dict(ctx.model.named_modules())
    scores = {}
    for n in ctx.params:
        w = ctx.effective(n).abs()
        if n not in sq:
            scores[n] = w
            continue
        norms = sq[n].sqrt()
        module = modules[n.rsplit(".", 1)[0]] if "." in n else ctx.model
        if isinstance(module, nn.Conv2d):
            norms = conv_weight_norms(module, norms)
        scores[n] = (w.to(torch.float64) * norms).to(w.dtype)
    return scores


METHOD = Method(
    name="wanda",
    score=score,
    label="Wanda (|W|·‖X‖₂)",
    short_label="Wanda",
    citation='Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large '
    'Language Models", ICLR 2024',
)
