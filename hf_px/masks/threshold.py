"""Selecting which weights to keep, given scores.

Ties are broken by a stable rule: among equal scores, the weight that comes
first — parameters in `model.named_parameters()` order, then row-major flat
index — is kept. Already-pruned weights score −∞ and are never kept again.

Collapse guard (`min_density_ratio` = ρ, docs/method.md §6): every tensor keeps
at least ``max(1, ceil(ρ · d · n_t))`` of its best weights when the round's
target density is d (and it still has them). With the reference PX semantics an
HF ResNet loses its whole stem at 90% (measured, docs/method.md §3); the guard
reserves the floor first and spends the rest of the budget on one global
threshold, so the total count stays exact. ρ = 0 is the reference behaviour.

Degenerate scores are an error, for every method: when every weight of a tensor
that is still dense (two or more weights, none pruned yet — in the first round,
every tensor) has the same score, all zero typically, the method has not ranked
that tensor at all and any mask would be chosen by the tie rule alone.
Selection then raises :class:`~hf_px.errors.HfPxFailure` naming the tensors,
before any weight is touched, instead of reporting success. Ties among the
survivors of a tensor that earlier rounds already pruned (pruning cut their
paths, so they all score 0) are broken by the stable rule above.
"""

from __future__ import annotations

import math

import torch

from ..errors import HfPxFailure


def _prepared(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
    out = {}
    tied: list[tuple[str, float]] = []
    for n, s in scores.items():
        # float64 stays float64: PX rescores in it when float32 underflows
        s = s.detach().reshape(-1)
        s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
        if torch.isnan(s).any():
            raise HfPxFailure(
                f"scores of {n!r} contain NaN; check the model's weights or use float32 data"
            )
        alive = masks[n].reshape(-1).to(s.device)
        if alive.numel() >= 2 and bool(alive.all()):
            lo, hi = s.min(), s.max()
            if bool(lo == hi):
                tied.append((n, float(lo)))
        out[n] = torch.where(alive, s, torch.full_like(s, -math.inf))
    if tied:
        raise degenerate_scores_error(tied, len(scores))
    return out


def degenerate_scores_error(tied: list[tuple[str, float]], total: int) -> HfPxFailure:
    """The error for tensors whose alive scores all tie (see the module docstring)."""
    names = ", ".join(repr(n) for n, _ in tied[:3]) + (", ..." if len(tied) > 3 else "")
    zero = all(v == 0.0 for _, v in tied)
    what = "all zero" if zero else "all equal"
    return HfPxFailure(
        f"scores of {len(tied)} of {total} prunable tensors are {what} ({names}): the method "
        "cannot rank their weights, so a mask would be chosen by tie order; exclude them "
        "(--exclude / exclude=[regex]) or use another method"
    )


def top_k_stable(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries; ties go to the lowest index."""
    n = flat.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    threshold = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    above = flat > threshold
    need = k - int(above.sum())
    equal = flat == threshold
    keep = above | (equal & (torch.cumsum(equal.to(torch.int64), 0) <= need))
    return keep


def floors(masks: dict[str, torch.Tensor], density: float, ratio: float) -> dict[str, int]:
    if ratio <= 0:
        return {n: 0 for n in masks}
    return {
        n: min(int(m.sum()), max(1, math.ceil(ratio * density * m.numel() - 1e-9)))
        for n, m in masks.items()
    }


def select_global(
    scores: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    k: int,
    density: float,
    min_density_ratio: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Keep exactly k weights over all tensors (one threshold, with the floor guard)."""
    prepared = _prepared(scores, masks)
    names = list(prepared)
    alive_total = sum(int(m.sum()) for m in masks.values())
    if k > alive_total:
        raise HfPxFailure(f"asked to keep {k} weights but only {alive_total} remain")
    floor = floors(masks, density, min_density_ratio)
    if sum(floor.values()) > k:  # too many tensors for the budget: one weight each, or none
        floor = {n: min(1, f) for n, f in floor.items()}
        if sum(floor.values()) > k:
            floor = {n: 0 for n in names}
    guarded: set[str] = set()
    while True:
        budget = k - sum(floor[n] for n in guarded)
        free = [n for n in names if n not in guarded]
        keep: dict[str, torch.Tensor] = {}
        if free:
            flat = torch.cat([prepared[n] for n in free])
            chosen = top_k_stable(flat, budget)
            offset = 0
            for n in free:
                size = prepared[n].numel()
                keep[n] = chosen[offset : offset + size]
                offset += size
        short = [n for n in free if int(keep[n].sum()) < floor[n]]
        if not short:
            break
        guarded.update(short)
    for n in guarded:
        keep[n] = top_k_stable(prepared[n], floor[n])
    return {n: keep[n].view(masks[n].shape) for n in names}


def apportion(k: int, sizes: dict[str, int], caps: dict[str, int], minimum: dict[str, int]):
    """Split k over tensors in proportion to their size (largest remainder), each
    between its minimum and its cap; the total is exactly k when k ≤ Σ caps."""
    total = sum(sizes.values())
    quota = {n: k * s / total for n, s in sizes.items()}
    alloc = {n: min(caps[n], max(minimum[n], math.floor(q))) for n, q in quota.items()}
    order = sorted(sizes, key=lambda n: (-(quota[n] - math.floor(quota[n])), list(sizes).index(n)))
    diff = k - sum(alloc.values())
    while diff != 0:
        moved = False
        for n in order if diff > 0 else reversed(order):
            if diff > 0 and alloc[n] < caps[n]:
                alloc[n] += 1
                diff -= 1
                moved = True
            elif diff < 0 and alloc[n] > minimum[n]:
                alloc[n] -= 1
                diff += 1
                moved = True
            if diff == 0:
                break
        if not moved:
            raise HfPxFailure("cannot apportion the layer-wise budget; lower the sparsity")
    return alloc


def select_layerwise(
    scores: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    k: int,
    density: float,
    min_density_ratio: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Each tensor keeps its share of k (proportional to its size), best weights first."""
    prepared = _prepared(scores, masks)
    sizes = {n: m.numel() for n, m in masks.items()}
    caps = {n: int(m.sum()) for n, m in masks.items()}
    floor = floors(masks, density, min_density_ratio)
    if sum(floor.values()) > k:
        floor = {n: 0 for n in masks}
    alloc = apportion(k, sizes, caps, floor)
    return {n: top_k_stable(prepared[n], alloc[n]).view(masks[n].shape) for n in masks}
