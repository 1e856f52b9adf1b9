"""PX's auxiliary networks as *modes* of the one model: hooks and an attention function.

Three modes (docs/method.md):

* ``record`` — the real masked model in eval mode; every gate g(z) of every
  activation call and every attention probability matrix A is recorded, with
  the query/key and the q/k projection inputs needed for gate sensitivity;
* ``replay`` — the data net: act(z) → z · g², attention → A² · V (the squared
  gates of the path data term Σ_p a_p² x_p²; for ReLU g² = g);
* ``kernel`` — the path-kernel net: act(z) → z, attention → 1 · V (every token
  reaches every token: all paths counted, as gate removal does for ReLU).

Normalisation layers other than reference-mode BatchNorm are replaced, in the
auxiliary nets only, by normalisation with the net's own statistics *without
centring*.
"""

from __future__ import annotations

import contextlib
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
        out = torch.matmul(a.pow(2), value)
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
    score 0, PX_METHOD.md §3) and makes a BatchNorm kernel net's pooled output
    independent of every conv weight; dividing by the RMS keeps the scale
    normalisation that keeps both nets finite.
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


def norm_hooks(norms: list[Norm], state: AuxState, bn_mode: str) -> list:
    handles = []
    for nm in norms:
        if nm.kind == BATCH_NORM and bn_mode == "reference":
            continue  # reference semantics: BatchNorm in train mode, as is
        if nm.kind not in (BATCH_NORM, LAYER_NORM, GROUP_NORM):
            continue

        def replace(module, inputs, output, kind=nm.kind):
            if state.mode == "record":
                return None
            return rms_normalise(module, inputs[0], kind)

        handles.append(nm.module.register_forward_hook(replace))
    return handles


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
        with torch.enable_grad():
            q = call.q.clone().requires_grad_(True)
            k = call.k.clone().requires_grad_(True)
            a = _probabilities(q, k, call.mask, call.scaling)
            dq, dk = torch.autograd.grad(a, [q, k], grad_outputs=g_a.to(a.dtype))
        i = seen.get(id(call.module), 0)
        seen[id(call.module)] = i + 1
        for name, proj, d in ((spec.q, call.module.q_proj, dq), (spec.k, call.module.k_proj, dk)):
            x = state.proj_inputs[id(proj)][i]
            d_flat = d.transpose(1, 2).reshape(*x.shape[:-1], -1)  # (…, T, H·d)
            gw = torch.einsum("...o,...i->oi", d_flat, x)
            out[name] = out[name] + gw if name in out else gw
    return out
