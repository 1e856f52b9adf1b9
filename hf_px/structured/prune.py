"""`prune_structured`: remove whole units until a fraction of MACs or parameters is gone.

Round r of R keeps cost C₀ · (1 − s)^(r/R) (the exponential schedule of unstructured
PX, on MACs or parameters instead of weights); every round re-scores the units with
the removed ones masked, then removes units until the round's cost is met:

* methods whose scores compare across layers (``px``, ``taylor``) take the units of
  the whole model in ascending order of score per unit of cost (what removing the
  unit saves, at the round's start: a head saves as much as ~70 MLP neurons of
  ViT-base); ties: group order, then unit number;
* ``l1`` and ``random``, and any method with ``uniform=True``, remove the same
  fraction from every group, each group's lowest-scored units first. ``uniform``
  gives every layer the same width, so a ViT stays expressible in its own config.

Every group keeps at least one unit. The model is left with the removed units'
weights at zero (it computes what the physically smaller model computes);
:func:`hf_px.structured.shrink` then removes them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import HfPxError
from ..pruning import flush_denormal
from .cost import CostModel
from .scores import METHODS, apply_masks, score_units, unit_form
from .units import UnitGroup, find_units, model_type, resolve_kinds

logger = logging.getLogger(__name__)

TARGETS = ("macs", "params")
MIN_KEEP = 1
_STEPS = 1 << 16  # resolution of the uniform removal fraction


@dataclass
class StructuredResult:
    groups: list[UnitGroup]
    kept: dict[str, torch.Tensor]  # group name → bool per unit (True = kept)
    config: dict[str, Any]
    macs: tuple[int, int]  # (before, after), one image at `image_size`
    params: tuple[int, int]
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {n: int(k.sum()) for n, k in self.kept.items()}

    @property
    def removed(self) -> dict[str, float]:
        return {
            "macs": 1.0 - self.macs[1] / self.macs[0],
            "params": 1.0 - self.params[1] / self.params[0],
        }


def check_settings(remove: float, target: str, method: str, rounds: int | None) -> None:
    if not isinstance(remove, int | float) or not 0.0 < float(remove) < 1.0:
        raise HfPxError(f"--remove must be a fraction in (0, 1) such as 0.5, not {remove!r}")
    if target not in TARGETS:
        raise HfPxError(f"target {target!r} is unknown; use one of {', '.join(TARGETS)}")
    if method not in METHODS:
        raise HfPxError(f"structured method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if rounds is not None and (not isinstance(rounds, int) or rounds < 1):
        raise HfPxError(f"rounds must be a positive integer, not {rounds!r}")


def prune_structured(
    model: nn.Module,
    batches: Iterable[dict[str, Any]] | None,
    remove: float = 0.5,
    *,
    target: str = "macs",
    structure: str | list[str] = "auto",
    method: str = "px",
    rounds: int | None = None,
    uniform: bool = False,
    round_to: int = 1,
    seed: int = 0,
    image_size: int | None = None,
    callback: Any = None,
    **method_options: Any,
) -> StructuredResult:
    """Remove units of the kinds `structure` names until `remove` of the model's
    `target` ("macs": per image at `image_size`, default the batches'; "params") is
    gone; zeroes the removed units' weights in place and returns which units stay.
    ``round_to``: every group keeps a multiple of that many channels (8 suits the CPU
    and GPU convolution/matmul kernels; widths such as 26 can run slower than 24),
    still meeting the target.

    Longer than most on purpose: the round loop (score units, select against the cost
    model, zero, record) reads top to bottom in one place, as `hf_px.prune`'s does.
    """
    check_settings(remove, target, method, rounds)
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise HfPxError(f"round_to must be a positive integer such as 8, not {round_to!r}")
    m = METHODS[method]
    px_form = unit_form(model, method_options) if method == "px" else None
    if px_form is not None:
        method_options = {**method_options, "form": px_form[0]}
        logger.info("structured px: form=%r (%s)", *px_form)
    data = list(batches or [])
    if m.needs_data and not data:
        raise HfPxError(f"structured method {method!r} needs calibration batches")
    if m.needs_labels and any(b.get("labels") is None for b in data):
        raise HfPxError(f"structured method {method!r} needs batches with 'labels'")
    if image_size is None:
        if not data:
            raise HfPxError("give image_size (or batches) to count MACs")
        image_size = int(data[0]["pixel_values"].shape[-1])
    kinds = resolve_kinds(model, structure)
    groups = find_units(model, kinds)
    if not groups:
        raise HfPxError(
            f"this {model_type(model)} model has no removable units of kind {'+'.join(kinds)} "
            "(blocks: a list of alike blocks with more than the one that must stay); "
            "choose another --structure"
        )
    rounds = rounds if rounds is not None else m.default_rounds
    cost = CostModel(model, groups, image_size)
    total = cost.cost(target)
    final = math.floor(total * (1.0 - float(remove)))
    floor_cost = cost.cost(target, {g.name: _least(g, round_to) for g in groups})
    if floor_cost > final:
        why, other = (
            ("one block kept per list", "prune widths instead (--structure auto)")
            if kinds == ["blocks"]
            else (
                "one unit kept per group, or round_to's channels",
                "add unit kinds (--structure auto)",
            )
        )
        raise HfPxError(
            f"removing {remove:.0%} of the {target} is out of reach with structure "
            f"{'+'.join(kinds)}: at most {1 - floor_cost / total:.1%} can go ({why}); lower "
            f"--remove or {other}"
        )
    kept = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    history = []
    t0 = time.perf_counter()
    scoring_s = 0.0
    for r in range(1, rounds + 1):
        goal = final if r == rounds else math.floor(total * (1.0 - float(remove)) ** (r / rounds))
        apply_masks(model, groups, kept)
        t = time.perf_counter()
        with flush_denormal():
            scores = score_units(
                method, model, data, groups, kept, seed=seed, round_index=r, options=method_options
            )
        scoring_s += time.perf_counter() - t
        if uniform or not m.global_rank:
            _remove_uniform(cost, target, groups, kept, scores, goal, round_to)
        else:
            rounding = round_to > 1 and r == rounds
            start = {n: k.clone() for n, k in kept.items()} if rounding else {}
            _remove_global(cost, target, groups, kept, scores, goal, round_to)
            if rounding:
                _round_widths(cost, target, groups, kept, start, scores, goal, round_to)
        counts = {n: int(k.sum()) for n, k in kept.items()}
        history.append({"round": r, "goal": goal, target: cost.cost(target, counts)})
        if callback is not None:
            callback(history[-1])
    apply_masks(model, groups, kept)
    counts = {n: int(k.sum()) for n, k in kept.items()}
    config = {
        "method": method,
        "structure": kinds,
        "remove": float(remove),
        "target": target,
        "rounds": rounds,
        "uniform": bool(uniform),
        "round_to": round_to,
        "seed": seed,
        "image_size": image_size,
        "model_type": model_type(model),
        "method_options": {k: v for k, v in method_options.items() if _jsonable(v)},
    }
    if px_form is not None:
        config["px_form"] = {"form": px_form[0], "why": px_form[1]}
    return StructuredResult(
        groups=groups,
        kept=kept,
        config=config,
        macs=(cost.macs(), cost.macs(counts)),
        params=(cost.params(), cost.params(counts)),
        history=history,
        timings={"prune_s": time.perf_counter() - t0, "scoring_s": scoring_s},
    )


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _unit_cost(cost: CostModel, target: str, counts: dict[str, int], group: str) -> int:
    """What one more removed unit of `group` saves, exactly."""
    saved = 0
    for t in cost.terms(target):
        if group in t.groups:
            saved += t.per_unit * math.prod(counts[g] for g in t.groups if g != group)
    return saved


def _remove_global(cost, target, groups, kept, scores, goal, round_to: int = 1) -> None:
    counts = {n: int(k.sum()) for n, k in kept.items()}
    now = cost.cost(target, counts)
    order = []
    for gi, g in enumerate(groups):
        alive = torch.nonzero(kept[g.name]).reshape(-1).tolist()
        per_cost = 1.0 / max(1, _unit_cost(cost, target, counts, g.name))
        s = scores[g.name].tolist()
        order += [(s[u] * per_cost, gi, u) for u in alive]
    order.sort()
    for _, gi, u in order:
        if now <= goal:
            break
        name = groups[gi].name
        if counts[name] <= _least(groups[gi], round_to):
            continue
        now -= _unit_cost(cost, target, counts, name)
        counts[name] -= 1
        kept[name][u] = False


def _step(group: UnitGroup, round_to: int) -> int:
    """Units per `round_to` channels of `group` (a 64-channel head is a multiple of 8)."""
    if group.kind == "blocks":
        return 1
    return round_to // math.gcd(round_to, group.width)


def _least(group: UnitGroup, round_to: int) -> int:
    """The fewest units a group keeps: one (none for a ResNet stage's removable blocks,
    whose projecting block stays), or one step of `round_to` channels."""
    if group.kind == "blocks":
        return group.min_keep
    return max(MIN_KEEP, min(group.size, _step(group, round_to)))


def _rounded(n: int, group: UnitGroup, round_to: int) -> int:
    """`n` units rounded down to whole steps, never below :func:`_least`."""
    return max(_least(group, round_to), n - n % _step(group, round_to))


def _remove_uniform(cost, target, groups, kept, scores, goal, round_to: int = 1) -> None:
    current = {n: int(k.sum()) for n, k in kept.items()}

    def counts_at(step: int) -> dict[str, int]:
        return {
            g.name: min(
                current[g.name],
                _rounded(max(g.min_keep, g.size - (step * g.size) // _STEPS), g, round_to),
            )
            for g in groups
        }

    lo, hi = 0, _STEPS  # smallest step whose cost meets the goal (hi always does)
    while lo < hi:
        mid = (lo + hi) // 2
        if cost.cost(target, counts_at(mid)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    final = counts_at(lo)
    for g in groups:
        _drop_lowest(kept[g.name], scores[g.name], int(kept[g.name].sum()) - final[g.name])


def _round_widths(cost, target, groups, kept, start, scores, goal, round_to: int) -> None:
    """Each group's kept count to a multiple of its step: up to the nearest one by giving
    back its best units removed this round (earlier rounds' units are already zeroed),
    else down by dropping its worst; then whole steps of the lowest score per cost saved
    go until the cost meets `goal` again."""
    counts = {}
    for g in groups:
        step, alive = _step(g, round_to), kept[g.name]
        n = int(alive.sum())
        up = min(g.size, -(-n // step) * step)
        back = torch.nonzero(start[g.name] & ~alive).reshape(-1)
        if n % step and up - n <= back.numel() and up - n < n - _rounded(n, g, round_to):
            best = torch.sort(scores[g.name][back], descending=True, stable=True).indices
            alive[back[best[: up - n]]] = True
        else:
            _drop_lowest(alive, scores[g.name], n - _rounded(n, g, round_to))
        counts[g.name] = int(alive.sum())
    while cost.cost(target, counts) > goal:
        options = []
        for gi, g in enumerate(groups):
            step = _step(g, round_to)
            if counts[g.name] - step < _least(g, round_to):
                continue
            fewer = {**counts, g.name: counts[g.name] - step}
            saved = cost.cost(target, counts) - cost.cost(target, fewer)
            worst = torch.sort(scores[g.name][kept[g.name]], stable=True).values[:step]
            options.append((float(worst.sum()) / max(1, saved), gi))
        if not options:
            return
        g = groups[min(options)[1]]
        _drop_lowest(kept[g.name], scores[g.name], _step(g, round_to))
        counts[g.name] = int(kept[g.name].sum())


def _drop_lowest(alive: torch.Tensor, scores: torch.Tensor, n: int) -> None:
    """Mark the `n` lowest-scored alive units removed (ties: lower unit number first)."""
    if n <= 0:
        return
    idx = torch.nonzero(alive).reshape(-1)
    order = torch.sort(scores[idx], stable=True).indices
    alive[idx[order[:n]]] = False
