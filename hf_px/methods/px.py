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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..adapters.base import BATCH_NORM
from ..errors import HfPxError
from ..utils import all_kept, loaded_from_checkpoint
from . import auxnets, pxtrained
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
    timed,
)
from .options import MethodOptions, option
from .refresh import DEFAULT_REFRESH, check_refresh, kept_density, refresh_policy

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

logger = logging.getLogger(__name__)

#: the default treatment per normalisation kind: ``bn`` for BatchNorm nets, ``norm``
#: for LayerNorm/GroupNorm nets (docs/method.md §3–4.3 say how each was chosen)
DEFAULTS = {"bn": "eval", "norm": "gate"}
BN_MODES = ("reference", "rms", "eval")
NORM_MODES = ("rms", "gate")
QK_MODES = ("tied", "gate", "off")
ATTN_MODES = ("sum", "mean")


@dataclass(frozen=True)
class PxOptions(MethodOptions):
    """PX's options. None = not given: the default in the help applies, and for the
    bound-only ones (:data:`BOUND_OPTIONS`) ``form`` is then free to follow the weights."""

    method: ClassVar[str] = "px"

    form: str | None = option(
        None,
        "PX score: 'bound' = the paper's NTK-trace bound, 'fisher' = per-sample "
        "output-gradient form for trained networks, 'paths' = per-class logit form "
        "(default auto: fisher when the weights were loaded from a checkpoint, else bound)",
        choices=("auto", *pxtrained.FORMS),
    )
    bn: str | None = option(
        None,
        f"PX BatchNorm treatment in the auxiliary nets (default: {DEFAULTS['bn']})",
        choices=BN_MODES,
    )
    norm: str | None = option(
        None,
        f"PX LayerNorm/GroupNorm treatment in the auxiliary nets (default: {DEFAULTS['norm']})",
        choices=NORM_MODES,
    )
    qk: str | None = option(
        None,
        "PX bound: attention q/k weights ranked by gate sensitivity with the budget tied "
        "to the block's v ('tied', the default), by gate sensitivity alone ('gate'), or "
        "not through the gates ('off')",
        choices=QK_MODES,
    )
    attn: str | None = option(
        None,
        "PX bound: attention's path weights summed over keys or averaged (default: sum)",
        choices=ATTN_MODES,
    )
    cut_scale: bool | None = option(
        None,
        "PX bound: exact power-of-two rescaling at graph cuts where no norm uses own "
        "statistics (default: true)",
        kind=bool,
    )
    keep_classifier: bool | None = option(
        None,
        "PX bound: the classification head keeps its values in the auxiliary nets (default: true)",
        kind=bool,
    )
    refresh: float | str | None = option(
        DEFAULT_REFRESH,
        "PX: recompute the data side once the kept density has fallen by F since the "
        f"last recompute, reusing it in between (default: {DEFAULT_REFRESH}); 'every' = "
        "the paper's full recompute every round",
        check=check_refresh,
        metavar="F|every",
    )
    fisher_classes: int = option(
        pxtrained.DEFAULT_FISHER_CLASSES,
        "PX form=fisher: each sample's most probable classes summed over "
        f"(default: {pxtrained.DEFAULT_FISHER_CLASSES})",
        kind=int,
        metavar="N",
    )


def untouched_parameter_names(ctx: ScoringContext) -> set[str]:
    keep_classifier = ctx.options.keep_classifier is not False
    names = set(ctx.adapter.norm_parameter_names(ctx.model))
    if keep_classifier:
        names |= ctx.adapter.classifier_parameter_names(ctx.model)
    return names


class _Runner:
    """Runs the model in one of the auxiliary modes (see :mod:`auxnets`)."""

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


def _tie_to_value(scores, masks, attn):
    """Budget rule for gate-only weights: q and k of a block take the score
    distribution of the block's v, rank for rank, so a global threshold keeps them
    at v's density while their own gate sensitivity decides *which* weights stay.

    One block after the other: running blocks on a thread pool saved 3% of a
    ViT-base scoring call but raised its peak RSS by 730 MB over three calls
    (glibc's per-thread arenas keep what the workers freed; measured)."""

    def tie_block(a) -> None:
        if a.v not in scores:
            return
        if all(_numpy_ok(scores[n]) for n in (a.v, a.q, a.k) if n in scores):
            return _tie_block_numpy(scores, masks, a)
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


def _numpy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32


def _tie_block_numpy(scores, masks, a) -> None:
    """`_tie_to_value` for one block on float32 CPU scores, in numpy: the same values
    (same rank rule, same float64 positions), 3x faster on ViT-base (measured)."""
    sv = scores[a.v].detach().contiguous().numpy().reshape(-1)
    v_sorted = np.sort(sv[masks[a.v].contiguous().numpy().reshape(-1)])
    for name in (a.q, a.k):
        if name not in scores or v_sorted.size == 0:
            continue
        s = scores[name]
        sn = s.detach().contiguous().numpy().reshape(-1)
        idx = np.flatnonzero(masks[name].contiguous().numpy().reshape(-1))
        if idx.size == 0:
            continue
        values = sn[idx] + np.float32(0.0)  # −0.0 → +0.0
        if not (values >= 0).all():  # also rules out NaN
            order = _stable_order(torch.from_numpy(values)).numpy()
        else:  # non-negative floats order like their bits: one sort of (bits, index)
            keys = values.view(np.int32).astype(np.int64)
            keys <<= 32
            keys |= np.arange(idx.size, dtype=np.int64)
            keys.sort()
            keys &= 0xFFFFFFFF
            order = keys
        if idx.size == v_sorted.size:
            quantiles = v_sorted
        else:
            pos = (np.arange(idx.size, dtype=np.float64) + 0.5) / idx.size
            take = np.clip((pos * v_sorted.size).astype(np.int64), 0, v_sorted.size - 1)
            quantiles = v_sorted[take]
        mapped = np.zeros_like(sn)
        mapped[idx[order]] = quantiles
        scores[name] = torch.from_numpy(mapped).view_as(s)


@dataclass
class _DataSide:
    """What the data net gives a round: all a later round may reuse (see `_data_side`)."""

    key: tuple
    density: float  # kept density of the masks it was computed with
    z_sum: torch.Tensor | None = None  # Σ_batches Σ_n z_data (float64, all-reduced)
    z_batches: list[torch.Tensor] = field(default_factory=list)  # reference BN: per local batch
    qk: dict[str, torch.Tensor] = field(default_factory=dict)  # ∂R/∂W_q,k, float64, all-reduced


def _data_side(ctx: ScoringContext, key: tuple, compute) -> _DataSide:
    """The data side of this round: reused from `ctx.cache` while the refresh policy
    allows it, else computed by `compute(density)` and stored. Without a cache (one
    scoring call) or with ``refresh="every"`` it is always computed."""
    policy = refresh_policy(ctx.options.refresh)
    density = kept_density(ctx.masks)
    cache = ctx.cache
    old = cache.store.get("px") if cache is not None else None
    if (
        policy is not None
        and isinstance(old, _DataSide)
        and old.key == key
        and density > (1.0 - policy) * old.density
    ):
        cache.notes["data_refreshed"] = False
        return old
    side = compute(density)
    if cache is not None:
        cache.notes["data_refreshed"] = True
        if policy is not None:  # lets `prune` count the refreshes still to come (its ETA)
            cache.refresh_plan = (policy, density)
        if isinstance(old, _DataSide) and old.key == key:
            cache.notes["data_drift"] = _drift(old, side)
        if policy is not None:
            cache.store["px"] = side
    return side


def _drift(old: _DataSide, new: _DataSide) -> float:
    """1 − cos between the old and new per-class data vector: how stale reuse was."""

    def vec(side):
        if side.z_sum is not None:
            return side.z_sum.reshape(-1)
        return torch.cat([z.to(torch.float64).sum(0) for z in side.z_batches])

    a, b = vec(old), vec(new)
    if a.shape != b.shape:
        return math.nan
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    # |cos| may pass 1 by round-off (−2e-16 drifts on AVX2-only CPUs); a distance is ≥ 0
    return min(2.0, max(0.0, 1.0 - cos))


#: options only the bound (``form="bound"``) reads; with one of them set, ``form`` defaults
#: to the bound whatever the weights
BOUND_OPTIONS = ("bn", "norm", "qk", "attn", "cut_scale", "keep_classifier")


def form_choice(model: nn.Module, options: dict[str, Any]) -> tuple[str, str]:
    """(form, why) for these options: the one given, else ``"fisher"`` for a model whose
    weights were loaded from a checkpoint (a trained function: docs/method.md §10 says
    why, and the benchmark that chose it), else the paper's ``"bound"`` (a freshly
    initialised model, or a bound-only option given)."""
    form = options.get("form")
    if form not in (None, "auto"):
        bound_only = [k for k in BOUND_OPTIONS if options.get(k) is not None]
        if form != "bound" and bound_only:
            raise HfPxError(
                f"px option(s) {', '.join(bound_only)} apply to form='bound' only, not "
                f"form={form!r}; drop them or use form='bound'"
            )
        return str(form), "given"
    bound_only = [k for k in BOUND_OPTIONS if options.get(k) is not None]
    if bound_only:
        return "bound", f"bound-only option(s) {', '.join(bound_only)} given"
    if loaded_from_checkpoint(model):
        return "fisher", "weights loaded from a checkpoint: a trained model"
    return "bound", "weights not loaded from a checkpoint: an initialised model"


def resolve_options(model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with ``form`` decided (:func:`form_choice`), logged once."""
    form, why = form_choice(model, options)
    if why != "given":
        logger.info("px: form=%r (%s)", form, why)
    return {**options, "form": form}


def modes(options: PxOptions) -> tuple[str, str, str]:
    """(bn, norm, qk) modes, the ones not given from :data:`DEFAULTS` (read here, at
    scoring time, so that one entry switches a default)."""
    return (options.bn or DEFAULTS["bn"], options.norm or DEFAULTS["norm"], options.qk or "tied")


class AuxNetOverflow(HfPxError):
    """The auxiliary nets without own-statistics normalisation left float range."""


#: what a default-option model falls back to when its path-exact aux nets overflow
OWN_STATISTICS = {"bn": "rms", "norm": "rms"}


def score(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """PX scores (:func:`score_wide`). If the default treatments (``bn="eval"``,
    ``norm="gate"``: no normalisation in the aux nets) overflow because the model has
    no cut to rescale at, the scores are taken with own-statistics normalisation
    (:data:`OWN_STATISTICS`) and a warning, once per prune; options the caller set
    explicitly are never replaced (the overflow is then an error)."""
    form = ctx.options.form or "bound"
    if form == "auto":
        form = form_choice(ctx.model, ctx.options.given())[0]
    if form != "bound":
        return pxtrained.score(ctx, batches, form)
    cache = ctx.cache
    fallback = cache.store.get("px_fallback") if cache is not None else None
    if fallback:
        return score_wide(replace(ctx, options=replace(ctx.options, **fallback)), batches)
    try:
        return score_wide(ctx, batches)
    except AuxNetOverflow:
        if ctx.options.bn or ctx.options.norm:
            raise
        logger.warning(
            "px: the path-exact auxiliary nets overflowed on this model (no cut to rescale "
            "at); scoring with px options bn='rms', norm='rms' instead"
        )
        if cache is not None:
            cache.store["px_fallback"] = dict(OWN_STATISTICS)
        return score_wide(replace(ctx, options=replace(ctx.options, **OWN_STATISTICS)), batches)


def score_wide(ctx: ScoringContext, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
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
            sample = ctx.sample_input
            return score_once(
                replace(ctx, sample_input=None if sample is None else sample.double()), wide
            )
    except RuntimeError as exc:  # a model that hard-codes float32 somewhere
        logger.info("px: float64 rescoring failed (%s); keeping the float32 scores", exc)
        return scores


def _all_zero_dense(ctx: ScoringContext, scores: dict[str, torch.Tensor]) -> bool:
    return any(
        s.numel() >= 2 and all_kept(ctx.masks[n]) and not bool(s.any()) for n, s in scores.items()
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

    Long on purpose: the passes (record, data, kernel, backward) share the modes,
    hooks and cache state, and read here in the order the method defines them.
    """
    model = ctx.model
    bn_mode, norm_mode, qk_mode = modes(ctx.options)
    untouched = untouched_parameter_names(ctx)
    eff = masked_tensors(ctx)
    run = _Runner(ctx, bn_mode, keep_qk=qk_mode != "off", norm_mode=norm_mode)
    has_bn = any(n.kind == BATCH_NORM for n in run.norms)
    timer = ctx.cache

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

    def data_net() -> dict[str, torch.Tensor]:
        # data net: 1 (the 0/1 mask for prunable), untouched keep θ
        data: dict[str, torch.Tensor] = {}
        for n, p in model.named_parameters():
            if n in untouched:
                data[n] = eff[n]
            elif n in ctx.params:
                data[n] = ctx.masks[n].to(p.dtype)
            else:
                data[n] = torch.ones((), dtype=p.dtype, device=p.device).expand_as(p)
        return data

    def finish_qk(qk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not run.state.keep_qk:
            return {}
        for a in run.attn:
            for n in (a.q, a.k):
                qk.setdefault(n, torch.zeros_like(eff[n], dtype=torch.float64))
        return ctx.reducer.all_reduce_dict(dict(sorted(qk.items())))

    names = list(leaves)
    sample = ctx.sample_input
    key = (
        bn_mode,
        norm_mode,
        qk_mode,
        ctx.options.attn or "sum",
        tuple(sorted(untouched)),
        tuple(b["pixel_values"].shape for b in batches),
    )

    if has_bn and bn_mode == "reference":
        # op for op as the official code: one kernel pass per batch on ones_like(x)
        # float64: exact sums, so the result does not depend on the process count
        acc = {n: torch.zeros_like(leaves[n], dtype=torch.float64) for n in names}

        def add_grads(z_data, z_kernel):
            r = (z_data.detach() * z_kernel).sum()
            grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    acc[n] += g

        def compute(density: float) -> _DataSide:
            side = _DataSide(key, density)
            data, qk = data_net(), {}
            for batch in batches:
                x = batch["pixel_values"]
                with timed(timer, "data_s"):
                    run.record(eff, x)
                    z_data = run.data(data, x)
                with timed(timer, "kernel_s"):
                    z_kernel = run.kernel(kernel, torch.ones_like(x))
                if run.state.keep_qk:
                    with timed(timer, "data_s"):
                        run.qk_grads(z_data, z_kernel, qk)
                with timed(timer, "kernel_s"):
                    add_grads(z_data, z_kernel)
                side.z_batches.append(z_data.detach())
            with timed(timer, "data_s"):
                side.qk = finish_qk(qk)
            return side

        side = _data_side(ctx, key, compute)
        qk_side = side.qk
        if ctx.cache is not None and not ctx.cache.notes["data_refreshed"]:
            # reused z_data: batches of one shape share the kernel output (identical
            # input), so their R terms add up before the backward (equal up to round-off)
            groups: dict[tuple, torch.Tensor] = {}
            for batch, z in zip(batches, side.z_batches, strict=True):
                shape = tuple(batch["pixel_values"].shape)
                z64 = z.to(torch.float64)
                groups[shape] = groups[shape] + z64 if shape in groups else z64
            with timed(timer, "kernel_s"):
                for shape, z in groups.items():
                    ones = torch.ones(shape, dtype=sample.dtype, device=sample.device)
                    z_kernel = run.kernel(kernel, ones)
                    add_grads(z.to(z_kernel.dtype), z_kernel)
        acc = ctx.reducer.all_reduce_dict(acc)
        scores = {n: (acc[n].abs() * eff[n].pow(2)).to(eff[n].dtype) for n in names}
    else:
        # exact shortcut: z_kernel is the same for every sample, so
        # R = Σ_k (Σ_batches Σ_n z_data[n, k]) · z_kernel[k]
        ones = torch.ones((1,) + tuple(sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        with timed(timer, "kernel_s"):
            z_kernel = run.kernel(kernel, ones)[0]

        def compute(density: float) -> _DataSide:
            with timed(timer, "data_s"):
                data, qk = data_net(), {}
                z_sum = torch.zeros(z_kernel.shape, dtype=torch.float64, device=z_kernel.device)
                e_first = None  # rescaled nets: every batch is brought to the first one's factor
                for batch in batches:
                    x = batch["pixel_values"]
                    run.record(eff, x)
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
                return _DataSide(key, density, z_sum=z_sum, qk=finish_qk(qk))

        side = _data_side(ctx, key, compute)
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
        with timed(timer, "kernel_s"):
            r = (z_sum.to(z_kernel.dtype) * z_kernel).sum()
            grads = torch.autograd.grad(r, [leaves[n] for n in names], allow_unused=True)
        scores = {}
        for n, g in zip(names, grads, strict=True):
            e2 = eff[n].pow(2) if n in untouched else leaves[n].detach()
            scores[n] = torch.zeros_like(e2) if g is None else g.detach().abs() * e2

    if run.state.keep_qk:
        # S_j = ½ |θ_j ∂R/∂θ_j| — equals |∂R/∂θ_j²| θ_j² wherever both are defined
        for n, g in qk_side.items():
            if n in scores:
                scores[n] = scores[n] + (0.5 * (g * eff[n]).abs()).to(scores[n].dtype)
        if qk_mode == "tied":
            with timed(timer, "qk_tie_s"):
                scores = _tie_to_value(scores, ctx.masks, run.attn)
    return scores


METHOD = Method(
    name="px",
    score=score,
    label="PX (Path eXclusion)",
    short_label="PX",
    default_rounds=100,
    resolve_options=resolve_options,
    options=PxOptions,
)
