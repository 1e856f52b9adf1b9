"""PX's auxiliary networks as *modes* of the one model: hooks and an attention function.

Three modes (docs/method.md):

* ``record`` — the real masked model in eval mode; every gate g(z) of every
  activation call and every attention probability matrix A is recorded, with
  the query/key and the q/k projection inputs needed for gate sensitivity;
* ``replay`` — the data net: act(z) → z · g², attention → A² · V (the squared
  gates of the path data term Σ_p a_p² x_p²; for ReLU g² = g);
* ``kernel`` — the path-kernel net: act(z) → z, attention → 1 · V (every token
  reaches every token: all paths counted, as gate removal does for ReLU).

Normalisation layers (reference-mode BatchNorm aside) are replaced in the
auxiliary nets only: ``rms`` normalises by the net's own statistics without
centring; ``eval`` BatchNorm and ``gate`` LayerNorm/GroupNorm keep the layer as
the linear map it is around the real forward pass (running statistics, resp. the
recorded per-token 1/σ as a gate), which leaves both nets unnormalised, so their
scale is kept in range by exact power-of-two rescaling at graph cuts
(:func:`cut_hooks`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters.base import BATCH_NORM, GROUP_NORM, LAYER_NORM, Attention, Gate, Norm

ATTN_NAME = "hf_px_gates"


@dataclass
class AttentionCall:
    module: nn.Module
    a: torch.Tensor  # probabilities, (B, H, Tq, Tk)
    q: torch.Tensor
    k: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    leaf: torch.Tensor | None = None  # data-net copy of `a` that receives dR/dA


@dataclass
class AuxState:
    mode: str = "record"
    keep_qk: bool = False
    gates: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attention: list[AttentionCall] = field(default_factory=list)
    replay_pos: int = 0
    proj_inputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: the aux nets are unnormalised (no norm uses own statistics): cut/bias hooks on
    scaled: bool = False
    #: multiply at the cuts (off: the same op sequence with factor 1, for checks)
    rescale: bool = True
    #: log2 of the factor the current aux pass has divided its signal by so far
    cum_exp: int = 0
    #: px option attn="mean": the kernel net averages over the attended tokens and the
    #: data net weights A² by their count (the bound split at 1/√T per hop, method.md §10)
    attn_mean: bool = False

    def cut_scale(self) -> float:
        """The factor every additive constant (bias-path start) takes at this point."""
        return 2.0 ** (-self.cum_exp)


_ACTIVE: list[AuxState] = []


@contextlib.contextmanager
def active(state: AuxState) -> Iterator[AuxState]:
    _ACTIVE.append(state)
    try:
        yield state
    finally:
        _ACTIVE.pop()


def _probabilities(q, k, mask, scaling):
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask is not None:
        logits = logits + mask
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)


def px_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function: the attention of the current aux mode."""
    state = _ACTIVE[-1]
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[-2]]
    if state.mode == "kernel":
        ones = torch.ones(query.shape[-2], key.shape[-2], dtype=value.dtype, device=value.device)
        if mask is not None:  # pairs the mask forbids are not paths
            ones = ones * (mask > -50).to(value.dtype)
        if state.attn_mean:
            ones = ones / ones.sum(-1, keepdim=True).clamp_min(1.0)
        out = torch.matmul(ones, value)
    elif state.mode == "record":
        a = _probabilities(query, key, mask, scaling)
        state.attention.append(
            AttentionCall(
                module,
                a.detach(),
                query.detach() if state.keep_qk else query[:0],
                key.detach() if state.keep_qk else key[:0],
                None if mask is None else mask.detach(),
                float(scaling),
            )
        )
        out = torch.matmul(a, value)
    else:  # replay
        call = state.attention[state.replay_pos]
        state.replay_pos += 1
        a = call.a
        if state.keep_qk:
            call.leaf = a.clone().requires_grad_(True)
            a = call.leaf
        a2 = a.pow(2)
        if state.attn_mean:  # times the number of keys each query may attend to
            allowed = torch.ones_like(a2) if call.mask is None else (call.mask > -50).to(a2.dtype)
            a2 = a2 * allowed.expand_as(a2).sum(-1, keepdim=True)
        out = torch.matmul(a2, value)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, px_attention)


# -- activation gates -------------------------------------------------------------------
def gate_hooks(gates: list[Gate], state: AuxState) -> list:
    handles = []
    stash: dict[int, torch.Tensor] = {}

    def pre(module, inputs):
        z = inputs[0]
        if state.mode == "record":
            fn = gate_fn[id(module)]
            state.gates.setdefault(id(module), []).append(fn(z.detach()))
        else:
            stash[id(module)] = z.clone() if getattr(module, "inplace", False) else z

    def post(module, inputs, output):
        if state.mode == "record":
            return None
        z = stash.pop(id(module))
        if state.mode == "kernel":
            return z
        g = state.gates[id(module)].pop(0)
        return z * g.pow(2)

    gate_fn = {id(g.module): g.fn for g in gates}
    for g in gates:
        handles.append(g.module.register_forward_pre_hook(pre))
        handles.append(g.module.register_forward_hook(post))
    return handles


def projection_hooks(attn: list[Attention], state: AuxState) -> list:
    """Record the input of q_proj/k_proj in the real pass (for gate sensitivity)."""
    handles = []

    def pre(module, inputs):
        if state.mode == "record":
            state.proj_inputs.setdefault(id(module), []).append(inputs[0].detach())

    for a in attn:
        for proj in (a.module.q_proj, a.module.k_proj):
            handles.append(proj.register_forward_pre_hook(pre))
    return handles


# -- normalisation ------------------------------------------------------------------------
def _affine(y, module, shape=None):
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if weight is not None:
        y = y * (weight if shape is None else weight.reshape(shape))
    if bias is not None:
        y = y + (bias if shape is None else bias.reshape(shape))
    return y


def rms_normalise(module: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """x / rms(x) · γ + β over the layer's own normalisation axes, no centring.

    Centring maps the data net's constant-per-channel activations to 0 (every
    score 0) and makes a BatchNorm kernel net's pooled output independent of
    every conv weight; dividing by the RMS keeps the scale normalisation that
    keeps both nets finite.
    """
    eps = getattr(module, "eps", 1e-5)
    per_channel = (1, -1) + (1,) * (x.dim() - 2)
    if kind == BATCH_NORM:
        dims = (0,) + tuple(range(2, x.dim()))
        return _affine(
            x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps), module, per_channel
        )
    if kind == GROUP_NORM:
        n = x.shape[0]
        xs = x.reshape(n, module.num_groups, -1)
        y = (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)).reshape_as(x)
        return _affine(y, module, per_channel)
    if getattr(module, "data_format", "channels_last") == "channels_first":
        return _affine(x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + eps), module, per_channel)
    dims = tuple(range(-len(module.normalized_shape), 0))
    return _affine(x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps), module)


def _param(module: nn.Module, name: str, x: torch.Tensor, shape) -> torch.Tensor:
    """γ or β reshaped for broadcasting (1 resp. 0 where the layer has none)."""
    t = getattr(module, name, None)
    if t is None:
        return torch.full((), 1.0 if name == "weight" else 0.0, dtype=x.dtype, device=x.device)
    return t if shape is None else t.reshape(shape)


def _indicator(t: torch.Tensor) -> torch.Tensor:
    """1 where a fixed additive constant is non-zero: a bias path starts there."""
    return (t != 0).to(t.dtype)


def eval_batchnorm(module: nn.Module, x: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    """BatchNorm on running statistics as the path map it is: BN(z) = s·z + t with
    s = γ/√(var+ε), t = β − s·mean (fixed per channel).

    s is a fixed coefficient on every path through the channel, t starts a bias
    path (input the constant 1): kernel net s²·z + t², data net z + 1[t ≠ 0]
    (the data term Σ a_p² x_p² carries no path value). `scale` is the cut scale
    that additive constants take at this point.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var = module.running_var if module.running_var is not None else torch.ones_like(x[0, :, 0])
    mean = module.running_mean if module.running_mean is not None else torch.zeros_like(var)
    s = _param(module, "weight", x, None) * torch.rsqrt(var.to(x.dtype) + module.eps)
    t = _param(module, "bias", x, None) - s * mean.to(x.dtype)
    s, t = s.expand_as(var).reshape(shape), t.expand_as(var).reshape(shape)
    if mode == "kernel":
        return x * s.pow(2) + t.pow(2) * scale
    return x + _indicator(t) * scale


def _norm_axes(module: nn.Module, x: torch.Tensor, kind: str):
    """(view of x with the normalised elements on the last axis, γ/β shape or None)."""
    if kind == GROUP_NORM:
        return x.reshape(x.shape[0], module.num_groups, -1), (1, -1) + (1,) * (x.dim() - 2)
    if getattr(module, "data_format", "channels_last") == "channels_first":
        return x.movedim(1, -1), (1, -1) + (1,) * (x.dim() - 2)
    return x.flatten(x.dim() - len(module.normalized_shape)), None


def norm_gate(module: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """1/σ of the real input, per normalised group (token, or sample·group), keepdim."""
    xs, _ = _norm_axes(module, x, kind)
    eps = getattr(module, "eps", 1e-5)
    return torch.rsqrt(xs.var(-1, unbiased=False, keepdim=True) + eps)


def gated_norm(
    module: nn.Module, x: torch.Tensor, kind: str, mode: str, g: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """LayerNorm/GroupNorm around the real forward pass: LN(z) = γ·g·(z − mean z) + β
    with g = 1/σ recorded from the real model — a linear map of z times a gate.

    Centring is the fixed matrix I − 11ᵀ/m over the m normalised elements; its
    coefficients are path values. Kernel net (gate → identity): γ²·[(1 − 2/m)·z +
    Σz/m²] + β² (squared coefficients); data net: g²·Σz + 1[β ≠ 0] (every (j→i)
    pair is a path, the data term carries no path value).
    """
    xs, shape = _norm_axes(module, x, kind)
    m = xs.shape[-1]
    total = xs.sum(-1, keepdim=True)
    if mode == "kernel":
        ys = xs * (1.0 - 2.0 / m) + total / (m * m)
    else:
        ys = (g.pow(2) * total).expand_as(xs)
    if kind == GROUP_NORM:
        y = ys.reshape_as(x)
    elif shape is not None:
        y = ys.movedim(-1, 1)
    else:
        y = ys.reshape_as(x)
    gamma, beta = _param(module, "weight", x, shape), _param(module, "bias", x, shape)
    if mode == "kernel":
        return y * gamma.pow(2) + beta.pow(2) * scale
    return y + _indicator(beta) * scale


def norm_hooks(norms: list[Norm], state: AuxState, bn_mode: str, norm_mode: str = "rms") -> list:
    handles = []
    for nm in norms:
        if nm.kind not in (BATCH_NORM, LAYER_NORM, GROUP_NORM):
            continue
        mode = bn_mode if nm.kind == BATCH_NORM else norm_mode
        if mode == "reference":
            continue  # reference semantics: BatchNorm in train mode, as is

        def replace(module, inputs, output, kind=nm.kind, mode=mode):
            x = inputs[0]
            if mode == "gate" and state.mode == "record":
                state.gates.setdefault(id(module), []).append(norm_gate(module, x.detach(), kind))
                return None
            if state.mode == "record":
                return None
            if mode == "rms":
                return rms_normalise(module, x, kind)
            if mode == "eval":
                return eval_batchnorm(module, x, state.mode, state.cut_scale())
            g = state.gates[id(module)].pop(0) if state.mode == "replay" else None
            return gated_norm(module, x, kind, state.mode, g, state.cut_scale())

        handles.append(nm.module.register_forward_hook(replace))
    return handles


# -- exact rescaling at graph cuts ------------------------------------------------------
def cut_hooks(
    cuts: list[nn.Module], biases: list[tuple[nn.Module, torch.Tensor]], state: AuxState
) -> list:
    """Keep an unnormalised aux net in floating-point range without changing a ranking.

    A *cut* is a module whose output every input→output path crosses (a block on
    the residual stream). Its output is divided by 2^e, e the exponent of its
    largest entry; every additive constant after it (a bias-path start) is
    multiplied by the cumulative factor 2^(−Σe). By induction over the graph every
    tensor is then its unscaled value times a power of two, so the net's output
    is exactly 2^(−Σe) times the unscaled one (docs/method.md §4.5). `biases`
    pairs each Conv/Linear module with its bias in the current aux net: the pass
    runs with that bias zeroed and this hook adds bias · 2^(−Σe).
    """
    handles = []

    def cut(module, inputs, output):
        if state.mode == "record" or not state.scaled:
            return None
        if not state.rescale:
            return None
        y = output[0] if isinstance(output, tuple) else output
        if not isinstance(y, torch.Tensor):  # nested outputs: no rescale here (still exact)
            return None
        peak = float(y.detach().abs().amax()) if y.numel() else 0.0
        if not (peak > 0 and math.isfinite(peak)):
            return None
        e = math.frexp(peak)[1]  # peak = m·2^e, 0.5 ≤ m < 1
        state.cum_exp += e
        y = y * 2.0 ** (-e)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    def bias_hook(b):
        def add_bias(module, inputs, output):
            if state.mode == "record" or not state.scaled:
                return None
            shape = (1, -1) + (1,) * (output.dim() - 2) if isinstance(module, _CONV) else (-1,)
            return output + b.reshape(shape) * state.cut_scale()

        return add_bias

    for m in cuts:
        handles.append(m.register_forward_hook(cut))
    for m, b in biases:
        handles.append(m.register_forward_hook(bias_hook(b)))
    return handles


_CONV = nn.modules.conv._ConvNd


# -- gate sensitivity of query/key --------------------------------------------------------
def qk_gradients(state: AuxState, attn: list[Attention], grads_a: list[torch.Tensor]):
    """∂R/∂W_q, ∂R/∂W_k through the attention gates, locally per attention call:
    A = softmax(q kᵀ s + mask), q = x W_qᵀ + b (x recorded in the real pass)."""
    by_module = {id(a.module): a for a in attn}
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, int] = {}
    for call, g_a in zip(state.attention, grads_a, strict=True):
        spec = by_module.get(id(call.module))
        if spec is None or g_a is None:
            continue
        # softmax backward in closed form on the recorded A (no second forward):
        # ∂R/∂logits = A ⊙ (G − Σ_j G_j A_j), logits = s·q kᵀ (+ a constant mask)
        a = call.a
        g = g_a.to(a.dtype)
        d_logits = a * (g - (g * a).sum(-1, keepdim=True))
        dq = torch.matmul(d_logits, call.k) * call.scaling
        dk = torch.matmul(d_logits.transpose(-1, -2), call.q) * call.scaling
        i = seen.get(id(call.module), 0)
        seen[id(call.module)] = i + 1
        for name, proj, d in ((spec.q, call.module.q_proj, dq), (spec.k, call.module.k_proj, dk)):
            x = state.proj_inputs[id(proj)][i]
            d_flat = d.transpose(1, 2).reshape(*x.shape[:-1], -1)  # (…, T, H·d)
            gw = torch.einsum("...o,...i->oi", d_flat, x)
            out[name] = out[name] + gw if name in out else gw
    return out
