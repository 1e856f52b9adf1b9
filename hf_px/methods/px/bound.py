"""The paper's bound (``form="bound"``): R = Σ_k z_data,k · z_kernel,k and its
saliency |∂R/∂θ²| · θ², by one of two algorithms (see :func:`score_bound`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...adapters.base import BATCH_NORM
from ...errors import HfPxError
from ..base import Batch, ScoringContext, masked_tensors, timed
from .data_side import DataSide, data_side
from .options import modes
from .runner import AuxNets, untouched_parameter_names
from .tie import tie_to_value


class AuxNetOverflow(HfPxError):
    """The auxiliary nets without own-statistics normalisation left float range."""


@dataclass
class _Nets:
    """What both algorithms share in one scoring call: the runner, the masked values,
    the kernel net's tensors (prunable entries are the leaves R is differentiated
    by) and the data side's cache key."""

    ctx: ScoringContext
    run: AuxNets
    as_is: set[str]  # kept as they are by both nets (norms, the head)
    masked: dict[str, torch.Tensor]  # every parameter, prunable ones times their mask
    leaves: dict[str, torch.Tensor]
    kernel: dict[str, torch.Tensor]
    key: tuple

    def data_net(self) -> dict[str, torch.Tensor]:
        """Data net parameters: 1 (the 0/1 mask for prunable ones), `as_is` keep θ."""
        ctx = self.ctx
        data: dict[str, torch.Tensor] = {}
        for n, p in ctx.model.named_parameters():
            if n in self.as_is:
                data[n] = self.masked[n]
            elif n in ctx.params:
                data[n] = ctx.masks[n].to(p.dtype)
            else:
                data[n] = torch.ones((), dtype=p.dtype, device=p.device).expand_as(p)
        return data

    def finish_qk(self, qk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The q/k gate gradients of every block (zeros where none came), all-reduced."""
        if not self.run.state.keep_qk:
            return {}
        for a in self.run.attn:
            for n in (a.q, a.k):
                qk.setdefault(n, torch.zeros_like(self.masked[n], dtype=torch.float64))
        return self.ctx.reducer.all_reduce_dict(dict(sorted(qk.items())))


def _kernel_net(
    ctx: ScoringContext, masked: dict[str, torch.Tensor], as_is: set[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(leaves, kernel): the kernel net's θ² (θ for `as_is`), prunable entries as leaves."""
    leaves: dict[str, torch.Tensor] = {}
    kernel: dict[str, torch.Tensor] = {}
    for n, t in masked.items():
        v = t if n in as_is else t.pow(2)
        if n in ctx.params:
            # t.pow(2) is already a fresh tensor; only θ itself (as_is) needs a copy
            v = (v.clone() if v is t else v).requires_grad_(True)
            leaves[n] = v
        kernel[n] = v
    return leaves, kernel


def score_bound(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores; see the module docstring and docs/method.md.

    Options (defaults in :data:`DEFAULTS`): ``bn`` — BatchNorm in the auxiliary
    nets: ``"reference"`` on batch statistics exactly as the official code (one
    kernel pass per batch on a batch of ones; its conv scores are round-off,
    docs/method.md §3); ``"rms"`` divided by the nets' own RMS; ``"eval"`` the
    fixed affine map of the running statistics, on the paths (s² and t² in the
    kernel net). ``norm`` — LayerNorm/GroupNorm: ``"rms"`` own-statistics RMS;
    ``"gate"`` the linear map around the real forward pass with 1/σ recorded
    as a gate (keeps every layer's θ² dependence). ``qk`` — ``"tied"`` (q/k
    ranked by gate sensitivity, budget tied to the block's v), ``"gate"`` or
    ``"off"``. ``cut_scale`` (default True) — exact power-of-two rescaling at
    graph cuts where no norm uses own statistics; scores are then defined up to
    one positive factor per call.
    ``refresh`` — within a `prune`, how often the data side (record and data
    passes: Σ z_data and the q/k gate gradients) is recomputed: a fraction f
    (default 0.3) recomputes it once the kept density has fallen by f since the
    last recompute and reuses it in between (docs/method.md §2); ``"every"`` is the
    paper's full recompute every round. The kernel net and the threshold are
    recomputed every round either way.

    Two algorithms give R's gradient: :func:`bound_per_batch_kernel` (BatchNorm on
    batch statistics, ``bn="reference"``: one kernel pass per batch, as the official
    code) and :func:`bound_shared_kernel` (every other case: z_kernel is the same for
    every sample, so one kernel pass per call). The q/k gate scores are added and
    tied afterwards, the same for both.
    """
    bn_mode, norm_mode, qk_mode = modes(ctx.options)
    as_is = untouched_parameter_names(ctx)
    masked = masked_tensors(ctx)
    run = AuxNets(ctx, bn_mode, keep_qk=qk_mode != "off", norm_mode=norm_mode)
    has_bn = any(n.kind == BATCH_NORM for n in run.norms)
    leaves, kernel = _kernel_net(ctx, masked, as_is)
    key = (
        bn_mode,
        norm_mode,
        qk_mode,
        ctx.options.attn or "sum",
        tuple(sorted(as_is)),
        tuple(b["pixel_values"].shape for b in batches),
    )
    nets = _Nets(ctx, run, as_is, masked, leaves, kernel, key)
    if has_bn and bn_mode == "reference":
        scores, qk_side = bound_per_batch_kernel(nets, batches)
    else:
        scores, qk_side = bound_shared_kernel(nets, batches)
    if run.state.keep_qk:
        # S_j = ½ |θ_j ∂R/∂θ_j| — equals |∂R/∂θ_j²| θ_j² wherever both are defined
        for n, g in qk_side.items():
            if n in scores:
                scores[n] = scores[n] + (0.5 * (g * masked[n]).abs()).to(scores[n].dtype)
        if qk_mode == "tied":
            with timed(ctx.cache, "qk_tie_s"):
                scores = tie_to_value(scores, ctx.masks, run.attn)
    return scores


_Scores = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def bound_per_batch_kernel(nets: _Nets, batches: Sequence[Batch]) -> _Scores:
    """(scores, q/k gate gradients) op for op as the official code: one kernel pass
    per batch on ones_like(x), BatchNorm in both nets on that batch's statistics.

    Sums are float64: exact, so the result does not depend on the process count. A
    reused data side keeps each batch's z_data; batches of one shape then share the
    kernel output (identical input), so their R terms add up before the backward
    (equal up to round-off)."""
    ctx, run, leaves, timer = nets.ctx, nets.run, nets.leaves, nets.ctx.cache
    names = list(leaves)
    acc = {n: torch.zeros_like(leaves[n], dtype=torch.float64) for n in names}

    def add_grads(z_data: torch.Tensor, z_kernel: torch.Tensor) -> None:
        r = (z_data.detach() * z_kernel).sum()
        grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                acc[n] += g

    def data_and_kernel_passes(density: float) -> DataSide:
        side = DataSide(nets.key, density)
        data, qk = nets.data_net(), {}
        for batch in batches:
            x = batch["pixel_values"]
            with timed(timer, "data_s"):
                run.record(nets.masked, x)
                z_data = run.data(data, x)
            with timed(timer, "kernel_s"):
                z_kernel = run.kernel(nets.kernel, torch.ones_like(x))
            if run.state.keep_qk:
                with timed(timer, "data_s"):
                    run.qk_grads(z_data, z_kernel, qk)
            with timed(timer, "kernel_s"):
                add_grads(z_data, z_kernel)
            side.z_batches.append(z_data.detach())
        with timed(timer, "data_s"):
            side.qk = nets.finish_qk(qk)
        return side

    side = data_side(ctx, nets.key, data_and_kernel_passes)
    if ctx.cache is not None and not ctx.cache.notes["data_refreshed"]:
        sample = ctx.sample_input
        groups: dict[tuple, torch.Tensor] = {}
        for batch, z in zip(batches, side.z_batches, strict=True):
            shape = tuple(batch["pixel_values"].shape)
            z64 = z.to(torch.float64)
            groups[shape] = groups[shape] + z64 if shape in groups else z64
        with timed(timer, "kernel_s"):
            for shape, z in groups.items():
                ones = torch.ones(shape, dtype=sample.dtype, device=sample.device)
                z_kernel = run.kernel(nets.kernel, ones)
                add_grads(z.to(z_kernel.dtype), z_kernel)
    acc = ctx.reducer.all_reduce_dict(acc)
    masked = nets.masked
    scores = {n: (acc[n].abs() * masked[n].pow(2)).to(masked[n].dtype) for n in names}
    return scores, side.qk


def bound_shared_kernel(nets: _Nets, batches: Sequence[Batch]) -> _Scores:
    """(scores, q/k gate gradients) by the exact shortcut: z_kernel is the same for
    every sample, so R = Σ_k (Σ_batches Σ_n z_data[n, k]) · z_kernel[k]: one kernel
    pass on one sample per call, and data passes without a kernel.

    Where the nets are rescaled at cuts, every batch is brought to the first one's
    power-of-two factor, and R to [0.5, 1) before the backward."""
    ctx, run, leaves, timer = nets.ctx, nets.run, nets.leaves, nets.ctx.cache
    sample = ctx.sample_input
    ones = torch.ones((1,) + tuple(sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    with timed(timer, "kernel_s"):
        z_kernel = run.kernel(nets.kernel, ones)[0]

    def data_passes(density: float) -> DataSide:
        with timed(timer, "data_s"):
            data, qk = nets.data_net(), {}
            z_sum = torch.zeros(z_kernel.shape, dtype=torch.float64, device=z_kernel.device)
            e_first = None  # rescaled nets: every batch is brought to the first one's factor
            for batch in batches:
                x = batch["pixel_values"]
                run.record(nets.masked, x)
                z = run.data(data, x)
                e_first = run.state.cum_exp if e_first is None else e_first
                f = 2.0 ** (run.state.cum_exp - e_first)  # exact: a power of two
                if run.state.keep_qk:
                    run.qk_grads(z, z_kernel, qk, f)
                z_sum += z.detach().to(torch.float64).sum(0) * f
            if run.state.scaled:
                # one factor for the whole call: that of batch 0 (always on process 0)
                e = torch.tensor([float(e_first or 0) if ctx.reducer.rank == 0 else 0.0])
                f = 2.0 ** ((e_first or 0) - int(ctx.reducer.all_reduce_sum(e.double())[0]))
                z_sum *= f
                for n in qk:
                    qk[n] *= f
            z_sum = ctx.reducer.all_reduce_sum(z_sum)
            return DataSide(nets.key, density, z_sum=z_sum, qk=nets.finish_qk(qk))

    side = data_side(ctx, nets.key, data_passes)
    z_sum, qk_side = side.z_sum, side.qk
    if not (torch.isfinite(z_sum).all() and torch.isfinite(z_kernel).all()):
        raise AuxNetOverflow(
            "PX's auxiliary nets overflowed on this model; score with px option "
            "bn='rms' and norm='rms' (own-statistics normalisation keeps them finite)"
        )
    if run.state.scaled:
        # R to [0.5, 1) by one power of two: scores then sit where the float32
        # threshold resolves them, whatever factors the cuts took (copies: the
        # data side may be reused by the next round)
        r_val = float((z_sum * z_kernel.detach().to(torch.float64)).sum())
        if r_val > 0 and math.isfinite(r_val):
            f = 2.0 ** -math.frexp(r_val)[1]
            z_sum = z_sum * f
            qk_side = {n: g * f for n, g in qk_side.items()}
    names = list(leaves)
    with timed(timer, "kernel_s"):
        r = (z_sum.to(z_kernel.dtype) * z_kernel).sum()
        grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
    scores = {}
    for n, g in zip(names, grads, strict=True):
        e2 = nets.masked[n].pow(2) if n in nets.as_is else leaves[n].detach()
        scores[n] = torch.zeros_like(e2) if g is None else g.detach().abs() * e2
    return scores, qk_side
