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

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..adapters.base import BATCH_NORM
from ..errors import HfPxError
from . import auxnets
from .auxnets import AuxState
from .base import (
    Batch,
    Method,
    ScoringContext,
    attention_implementation,
    call,
    cloned_buffers,
    hooks,
    masked_tensors,
    model_mode,
)

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

logger = logging.getLogger(__name__)


def untouched_parameter_names(ctx: ScoringContext) -> set[str]:
    keep_classifier = ctx.options.get("keep_classifier", True)
    names = set(ctx.adapter.norm_parameter_names(ctx.model))
    if keep_classifier:
        names |= ctx.adapter.classifier_parameter_names(ctx.model)
    return names


class _Runner:
    """Runs the model in one of the auxiliary modes (see :mod:`auxnets`)."""

    def __init__(self, ctx: ScoringContext, bn_mode: str, keep_qk: bool) -> None:
        self.ctx = ctx
        self.model = ctx.model
        self.bn_mode = bn_mode
        self.gates = ctx.adapter.gates(self.model)
        self.norms = ctx.adapter.norms(self.model)
        self.attn = ctx.adapter.attention(self.model)
        self.state = AuxState(keep_qk=keep_qk and bool(self.attn))
        if self.attn:
            auxnets.register_attention()

    def _run(self, mode, tensors, x, train_bn):
        self.state.mode = mode
        handles = auxnets.gate_hooks(self.gates, self.state)
        handles += auxnets.norm_hooks(self.norms, self.state, self.bn_mode)
        if self.state.keep_qk:
            handles += auxnets.projection_hooks(self.attn, self.state)
        attn_ctx = (
            attention_implementation(self.model, auxnets.ATTN_NAME)
            if self.attn
            else contextlib.nullcontext()
        )
        with (
            auxnets.active(self.state),
            attn_ctx,
            model_mode(self.model, BN_TYPES if train_bn else ()),
            hooks(handles),
        ):
            return call(self.model, tensors, x)

    def record(self, eff, x):
        self.state.gates.clear()
        self.state.attention.clear()
        self.state.proj_inputs.clear()
        self.state.replay_pos = 0
        with torch.no_grad():
            self._run("record", eff, x, train_bn=False)

    def data(self, data, x):
        self.state.replay_pos = 0
        tensors = {**data, **cloned_buffers(self.model)}
        if self.state.keep_qk:
            with torch.enable_grad():
                return self._run("replay", tensors, x.pow(2), train_bn=True)
        with torch.no_grad():
            return self._run("replay", tensors, x.pow(2), train_bn=True)

    def kernel(self, kernel, ones):
        tensors = {**kernel, **cloned_buffers(self.model)}
        try:
            return self._run("kernel", tensors, ones, train_bn=True)
        except ValueError:  # BatchNorm refuses one value per channel: two equal samples
            if ones.shape[0] != 1:
                raise
            two = torch.cat([ones, ones])
            return self._run("kernel", {**kernel, **cloned_buffers(self.model)}, two, True)[:1]

    def qk_grads(self, z_data, z_kernel, acc):
        """Add ∂R_batch/∂W_q, ∂R_batch/∂W_k (through the attention gates) to `acc`."""
        leaves = [c.leaf for c in self.state.attention]
        r = (z_data * z_kernel.detach()).sum()
        grads = torch.autograd.grad(r, leaves, allow_unused=True)
        for n, g in auxnets.qk_gradients(self.state, self.attn, list(grads)).items():
            g = g.to(torch.float64)  # exact sums: independent of the process count
            acc[n] = acc[n] + g if n in acc else g


_BITS = {4: torch.int32, 2: torch.int16}


def _ascending(values: torch.Tensor) -> torch.Tensor:
    """``torch.sort(values).values``: numpy's vectorised sort where it has the dtype
    (3x faster on 590k float32 scores, measured)."""
    if values.dtype in (torch.float32, torch.float64) and values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy()))
    return torch.sort(values).values


def _stable_order(values: torch.Tensor) -> torch.Tensor:
    """``torch.sort(values, stable=True).indices`` (ascending, ties in index order).

    Non-negative 16/32-bit floats order like their bit patterns, so one sort of
    the int64 keys (bits << 32 | index) gives the stable order (1.8x faster than
    torch's stable sort on 590k scores, measured); anything else uses torch.
    """
    n = values.numel()
    int_type = _BITS.get(values.element_size())
    if (
        int_type is None
        or not values.is_floating_point()
        or values.device.type != "cpu"
        or n >= 2**31
        or not bool((values >= 0).all())  # also rules out NaN
    ):
        return torch.sort(values, stable=True).indices
    keys = (values + 0.0).contiguous().view(int_type).numpy().astype(np.int64)  # -0.0 → +0.0
    keys <<= 32
    keys |= np.arange(n, dtype=np.int64)
    keys.sort()
    keys &= 0xFFFFFFFF
    return torch.from_numpy(keys)


def _tie_to_value(scores, masks, attn, names_q_k_v):
    """Budget rule for gate-only weights: q and k of a block take the score
    distribution of the block's v, rank for rank, so a global threshold keeps them
    at v's density while their own gate sensitivity decides *which* weights stay.

    One block after the other: running blocks on a thread pool saved 3% of a
    ViT-base scoring call but raised its peak RSS by 730 MB over three calls
    (glibc's per-thread arenas keep what the workers freed; measured)."""

    def tie_block(a) -> None:
        if a.v not in scores:
            return
        alive_v = masks[a.v].reshape(-1)
        v_sorted = _ascending(scores[a.v].reshape(-1)[alive_v])
        for name in (a.q, a.k):
            if name not in scores or v_sorted.numel() == 0:
                continue
            s = scores[name].reshape(-1)
            alive = masks[name].reshape(-1)
            idx = torch.nonzero(alive).squeeze(1)
            if idx.numel() == 0:
                continue
            order = _stable_order(s[idx])  # ascending rank among alive
            if idx.numel() == v_sorted.numel():  # rank r takes v's r-th value (same as below)
                quantiles = v_sorted
            else:
                pos = (torch.arange(idx.numel(), dtype=torch.float64) + 0.5) / idx.numel()
                take = (pos * v_sorted.numel()).long().clamp_(0, v_sorted.numel() - 1)
                quantiles = v_sorted[take]
            mapped = torch.zeros_like(s)
            mapped[idx[order]] = quantiles.to(s.dtype)
            scores[name] = mapped.view_as(scores[name])

    for a in attn:
        tie_block(a)
    return scores


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores (:func:`score_once`); a float32 pass that leaves a still-dense tensor
    with only zero scores is redone once in float64.

    The kernel net multiplies θ² layer after layer; with small weights (random
    init, std 0.02) its activations fall below float32's range in deep nets
    (measured on tiny MobileNetV2 / EfficientNet / MobileViTv2 configs: 1e-94 to
    1e-121 in float64) and whole tensors score exactly 0. Float64 ranks them;
    where it cannot either, mask selection reports the tensors as degenerate.
    """
    scores = score_once(ctx, batches)
    if not _all_zero_dense(ctx, scores) or _dtypes(ctx.model) != {torch.float32}:
        return scores
    logger.info("px: float32 scores underflowed to 0 for whole tensors; rescoring in float64")
    try:
        with _in_float64(ctx.model):
            wide = [{**b, "pixel_values": b["pixel_values"].double()} for b in batches]
            options = dict(ctx.options)
            if "sample_input" in options:
                options["sample_input"] = options["sample_input"].double()
            return score_once(replace(ctx, options=options), wide)
    except RuntimeError as exc:  # a model that hard-codes float32 somewhere
        logger.info("px: float64 rescoring failed (%s); keeping the float32 scores", exc)
        return scores


def _all_zero_dense(ctx: ScoringContext, scores: dict[str, torch.Tensor]) -> bool:
    return any(
        s.numel() >= 2 and bool(ctx.masks[n].all()) and not bool(s.any()) for n, s in scores.items()
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


def score_once(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores; see the module docstring and docs/method.md.

    Options: ``bn`` — ``"reference"`` (default) runs BatchNorm in both auxiliary
    nets on batch statistics exactly as the official code does (one kernel pass
    per batch on a batch of ones); ``"rms"`` normalises by the nets' own batch
    statistics without centring (docs/method.md §4: with centring, a BatchNorm
    ResNet's kernel output does not depend on any conv weight, so those scores
    are round-off). ``qk`` — ``"tied"`` (default; q/k ranked by gate sensitivity,
    budget tied to the block's v), ``"gate"`` (raw gate sensitivity) or ``"off"``.
    """
    model = ctx.model
    bn_mode = ctx.options.get("bn", "reference")
    if bn_mode not in ("reference", "rms"):
        raise HfPxError(f"px option bn={bn_mode!r} is unknown; use 'reference' or 'rms'")
    qk_mode = ctx.options.get("qk", "tied")
    if qk_mode not in ("tied", "gate", "off"):
        raise HfPxError(f"px option qk={qk_mode!r} is unknown; use 'tied', 'gate' or 'off'")
    untouched = untouched_parameter_names(ctx)
    eff = masked_tensors(ctx)
    run = _Runner(ctx, bn_mode, keep_qk=qk_mode != "off")
    has_bn = any(n.kind == BATCH_NORM for n in run.norms)

    # kernel net: θ² (θ for untouched), prunable entries are leaves
    leaves: dict[str, torch.Tensor] = {}
    kernel: dict[str, torch.Tensor] = {}
    for n, t in eff.items():
        v = t if n in untouched else t.pow(2)
        if n in ctx.params:
            # t.pow(2) is already a fresh tensor; only θ itself (untouched) needs a copy
            v = (v.clone() if v is t else v).requires_grad_(True)
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
    qk: dict[str, torch.Tensor] = {}

    if has_bn and bn_mode == "reference":
        # op for op as the official code: one kernel pass per batch on ones_like(x)
        # float64: exact sums, so the result does not depend on the process count
        acc = {n: torch.zeros_like(leaves[n], dtype=torch.float64) for n in names}
        for batch in batches:
            x = batch["pixel_values"]
            run.record(eff, x)
            z_data = run.data(data, x)
            z_kernel = run.kernel(kernel, torch.ones_like(x))
            if run.state.keep_qk:
                run.qk_grads(z_data, z_kernel, qk)
            r = (z_data.detach() * z_kernel).sum()
            grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    acc[n] += g
        acc = ctx.reducer.all_reduce_dict(acc)
        scores = {n: (acc[n].abs() * eff[n].pow(2)).to(eff[n].dtype) for n in names}
    else:
        # exact shortcut: z_kernel is the same for every sample, so
        # R = Σ_k (Σ_batches Σ_n z_data[n, k]) · z_kernel[k]
        ones = torch.ones((1,) + tuple(sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        z_kernel = run.kernel(kernel, ones)[0]
        z_sum = torch.zeros(z_kernel.shape, dtype=torch.float64, device=z_kernel.device)
        for batch in batches:
            x = batch["pixel_values"]
            run.record(eff, x)
            z = run.data(data, x)
            if run.state.keep_qk:
                run.qk_grads(z, z_kernel, qk)
            z_sum += z.detach().to(torch.float64).sum(0)
        z_sum = ctx.reducer.all_reduce_sum(z_sum)
        r = (z_sum.to(z_kernel.dtype) * z_kernel).sum()
        grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
        scores = {}
        for n, g in zip(names, grads, strict=True):
            e2 = eff[n].pow(2) if n in untouched else leaves[n].detach()
            scores[n] = torch.zeros_like(e2) if g is None else g.detach().abs() * e2

    if run.state.keep_qk:
        # S_j = ½ |θ_j ∂R/∂θ_j| — equals |∂R/∂θ_j²| θ_j² wherever both are defined
        for a in run.attn:
            for n in (a.q, a.k):
                qk.setdefault(n, torch.zeros_like(eff[n], dtype=torch.float64))
        qk = ctx.reducer.all_reduce_dict(dict(sorted(qk.items())))
        for n, g in qk.items():
            if n in scores:
                scores[n] = scores[n] + (0.5 * (g * eff[n]).abs()).to(scores[n].dtype)
        if qk_mode == "tied":
            scores = _tie_to_value(scores, ctx.masks, run.attn, None)
    return scores


METHOD = Method(name="px", score=score, needs_labels=False, default_rounds=100)
