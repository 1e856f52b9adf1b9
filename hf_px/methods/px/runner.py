"""Runs the model as PX's auxiliary nets: the record, data and kernel passes.

The hooks that make a pass one of the nets are in :mod:`hf_px.methods.auxnets`;
this class chooses them per pass and keeps what they share (the gates recorded on
the real model, the cut scale, the attention gates of the data pass).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...adapters.base import BATCH_NORM
from .. import auxnets
from ..auxnets import AuxState
from ..base import (
    ScoringContext,
    attention_implementation,
    call,
    cloned_buffers,
    hooks,
    model_mode,
)

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def untouched_parameter_names(ctx: ScoringContext) -> set[str]:
    """Parameters both auxiliary nets keep as they are (normalisation parameters and,
    unless ``keep_classifier=False``, the classification head): reference semantics."""
    keep_classifier = ctx.options.keep_classifier is not False
    names = set(ctx.adapter.norm_parameter_names(ctx.model))
    if keep_classifier:
        names |= ctx.adapter.classifier_parameter_names(ctx.model)
    return names


class AuxNets:
    """Runs the model in one of the auxiliary modes (see :mod:`hf_px.methods.auxnets`)."""

    def __init__(
        self, ctx: ScoringContext, bn_mode: str, keep_qk: bool, norm_mode: str = "rms"
    ) -> None:
        self.ctx = ctx
        self.model = ctx.model
        self.bn_mode = bn_mode
        self.norm_mode = norm_mode
        found = ctx.cache.store.get("px_modules") if ctx.cache is not None else None
        if found is None or found[0] is not self.model:  # the module walk, once per prune
            found = (
                self.model,
                ctx.adapter.gates(self.model),
                ctx.adapter.norms(self.model),
                ctx.adapter.attention(self.model),
            )
            if ctx.cache is not None:
                ctx.cache.store["px_modules"] = found
        _, self.gates, self.norms, self.attn = found
        self.state = AuxState(keep_qk=keep_qk and bool(self.attn))
        self.state.attn_mean = ctx.options.attn == "mean"
        # without own-statistics normalisation the aux nets grow like fan-in^depth;
        # rescaling at cuts is exact only then (an RMS norm would undo it per branch)
        own_stats = any(
            (bn_mode if n.kind == BATCH_NORM else norm_mode) in ("reference", "rms")
            for n in self.norms
        )
        self.cuts = ctx.adapter.cuts(self.model)
        self.state.scaled = bool(self.cuts) and not own_stats
        self.state.rescale = ctx.options.cut_scale is not False
        self.biased = {
            m: f"{name}.bias" if name else "bias"
            for name, m in self.model.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and m.bias is not None
        }
        if self.attn:
            auxnets.register_attention()

    def _run(self, mode, tensors, x, train_bn):
        self.state.mode = mode
        self.state.cum_exp = 0
        handles = auxnets.gate_hooks(self.gates, self.state)
        handles += auxnets.norm_hooks(self.norms, self.state, self.bn_mode, self.norm_mode)
        if self.state.scaled and mode != "record":
            # biases are added by the cut hooks, times the cumulative cut scale
            tensors = dict(tensors)
            biases = [(m, tensors[n]) for m, n in self.biased.items() if n in tensors]
            for m, n in self.biased.items():
                if n in tensors:
                    tensors[n] = torch.zeros_like(tensors[n])
            handles += auxnets.cut_hooks(self.cuts, biases, self.state)
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
        """z_data of a batch; after the pass ``state.cum_exp`` holds the log2 factor
        it was divided by (0 unless the nets are rescaled at cuts)."""
        self.state.replay_pos = 0
        tensors = {**data, **cloned_buffers(self.model)}
        train_bn = self.bn_mode != "eval"
        if self.state.keep_qk:
            with torch.enable_grad():
                return self._run("replay", tensors, x.pow(2), train_bn=train_bn)
        with torch.no_grad():
            return self._run("replay", tensors, x.pow(2), train_bn=train_bn)

    def kernel(self, kernel, ones):
        tensors = {**kernel, **cloned_buffers(self.model)}
        train_bn = self.bn_mode != "eval"
        try:
            return self._run("kernel", tensors, ones, train_bn=train_bn)
        except ValueError:  # BatchNorm refuses one value per channel: two equal samples
            if ones.shape[0] != 1:
                raise
            two = torch.cat([ones, ones])
            return self._run("kernel", {**kernel, **cloned_buffers(self.model)}, two, True)[:1]

    def qk_grads(self, z_data, z_kernel, acc, factor=1.0):
        """Add factor · ∂R_batch/∂W_q, ∂R_batch/∂W_k (through the attention gates) to `acc`."""
        leaves = [c.leaf for c in self.state.attention]
        r = (z_data * z_kernel.detach()).sum()
        grads = torch.autograd.grad(r, leaves, allow_unused=True)
        for n, g in auxnets.qk_gradients(self.state, self.attn, list(grads)).items():
            g = g.to(torch.float64) * factor  # exact sums: independent of the process count
            acc[n] = acc[n] + g if n in acc else g
