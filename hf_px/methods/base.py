"""Shared machinery for scoring methods: masked functional calls, logits, context.

Methods are pure: ``score(ctx, batches) -> {name: tensor}``. They substitute
parameters with :func:`torch.func.functional_call` instead of copying the model,
so memory stays near one extra copy of the weights, and they never touch the
model's own tensors, flags or hooks (the caller checks that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..adapters import Adapter
from ..distributed import Reducer
from ..errors import HfPxError
from ..utils import times_mask
from .options import MethodOptions

Batch = dict[str, Any]


@dataclass
class RoundCache:
    """State carried from one round of a `prune` to the next.

    `prune` creates one per run and hands it to every round's context; a method
    that does not use it ignores it. ``store`` is the methods' own (PX keeps its
    data-side sums there), ``timings`` sums seconds per phase over the rounds,
    ``notes`` holds what the current round wants in the prune's history (reset
    by `prune` before every round). ``refresh_plan`` = (f, d): a method that
    reuses expensive work recomputes it once the kept density falls to (1 − f)·d
    (d: the density at the last recompute); `prune` uses it for its ETA.
    """

    store: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    refresh_plan: tuple[float, float] | None = None

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


@contextlib.contextmanager
def timed(cache: RoundCache | None, key: str) -> Iterator[None]:
    """Add the block's wall time to ``cache.timings[key]`` (no-op without a cache)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if cache is not None:
            cache.add_time(key, time.perf_counter() - t0)


@dataclass
class ScoringContext:
    model: nn.Module
    adapter: Adapter
    params: dict[str, nn.Parameter]  # prunable, by name
    masks: dict[str, torch.Tensor]  # bool, True = kept
    reducer: Reducer = field(default_factory=Reducer)
    seed: int = 0
    round_index: int = 0
    #: the method's typed options (`Method.options`); a dict is typed by `pruning._score`
    options: MethodOptions | dict[str, Any] = field(default_factory=dict)
    cache: RoundCache | None = None  # set by `prune`; None for a single scoring call
    #: one real input (1×C×H×W) for methods that feed their own (synflow's ones, px's
    #: kernel net); set by `pruning._score` from the first batch
    sample_input: torch.Tensor | None = None

    def effective(self, name: str) -> torch.Tensor:
        """theta * mask, detached."""
        return times_mask(self.params[name].detach(), self.masks[name])


@dataclass(frozen=True)
class Method:
    """Everything the rest of hf-px knows about a scoring method, in one place.

    ``needs_data``: the scores depend on the calibration images. ``needs_sample``:
    data-free (SynFlow feeds ones) but still needs one batch for the input shape.
    ``label``/``short_label``/``citation`` are what the model card prints.
    ``options``: the dataclass of :class:`~.options.MethodOptions` declaring what the
    method takes (none when not given). ``resolve_options(model, options)``: the
    options with the defaults that depend on the model filled in (px: ``form`` from
    whether the weights are trained), called once per prune before the first round;
    what it returns is what the run records.
    """

    name: str
    score: Callable[[ScoringContext, Sequence[Batch]], dict[str, torch.Tensor]]
    label: str
    short_label: str | None = None  # the card title's tag; None = `name`
    citation: str | None = None
    needs_labels: bool = False
    needs_data: bool = True
    needs_sample: bool = False
    default_rounds: int = 1
    resolve_options: Callable[[nn.Module, dict[str, Any]], dict[str, Any]] | None = None
    options: type[MethodOptions] | None = None

    def __post_init__(self) -> None:
        if self.options is None:  # a method without options still refuses any given
            empty = dataclasses.make_dataclass(
                f"{self.name.capitalize()}Options",
                [],
                bases=(MethodOptions,),
                frozen=True,
                namespace={"method": self.name},
            )
            object.__setattr__(self, "options", empty)

    def parse_options(self, options: dict[str, Any]) -> MethodOptions:
        """`options` typed and checked (an unknown name or a bad value: `HfPxError`)."""
        return self.options.from_dict(options)

    def options_for(self, model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
        """`options` checked, normalised (``"0.3"`` → 0.3) and with the model-dependent
        defaults filled in: what a run uses and records (a new dict)."""
        typed = self.parse_options(options)
        options = {k: getattr(typed, k) for k in options}
        return self.resolve_options(model, options) if self.resolve_options else options

    @property
    def needs_batches(self) -> bool:
        return self.needs_data or self.needs_sample


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, an object with `.logits`, or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise HfPxError(
        "the model returned neither logits nor an output with `.logits`; "
        "pass an image classifier (e.g. AutoModelForImageClassification)"
    )


def call(model: nn.Module, tensors: dict[str, torch.Tensor], pixel_values: torch.Tensor):
    """``model(pixel_values=...)`` with `tensors` substituted for parameters/buffers."""
    out = functional_call(
        model, tensors, args=(), kwargs={"pixel_values": pixel_values}, strict=False
    )
    return logits_of(out)


def cloned_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fresh copies of every buffer: BatchNorm in train mode updates its running
    stats in place, and the model's own must stay untouched."""
    return {n: b.clone() for n, b in model.named_buffers()}


def masked_tensors(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Every parameter, prunable ones multiplied by their mask, all detached."""
    out = {n: p.detach() for n, p in ctx.model.named_parameters()}
    for n in ctx.params:
        out[n] = ctx.effective(n)
    return out


@contextlib.contextmanager
def model_mode(model: nn.Module, train_types: tuple[type, ...] = ()) -> Iterator[None]:
    """Put `model` in eval mode, with modules of `train_types` in train mode; restore."""
    modules = list(model.modules())  # one walk: it ran in every pass of every round
    flags = [(m, m.training) for m in modules]
    try:
        for m in modules:
            m.training = bool(train_types) and isinstance(m, train_types)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def require_labels(batches: Sequence[Batch], method: str) -> None:
    for b in batches:
        if b.get("labels") is None:
            raise HfPxError(
                f"method {method!r} needs labels: give batches with a 'labels' tensor "
                "(or pick a data-only method such as px, synflow, magnitude, random)"
            )


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long())


@contextlib.contextmanager
def attention_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """Temporarily route `transformers` attention through `implementation`
    (a name known to `AttentionInterface`); restores the previous choice."""
    configs = {}
    for module in [model, *model.modules()]:
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            configs[id(cfg)] = cfg
    saved = {k: c._attn_implementation_internal for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation_internal = implementation
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]
