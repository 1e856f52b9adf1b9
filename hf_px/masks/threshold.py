"""Selecting which weights to keep, given scores.

Ties are broken by a stable rule: among equal scores, the weight that comes
first — parameters in `model.named_parameters()` order, then row-major flat
index — is kept. Already-pruned weights are never kept again: the selection
ranks only the weights the masks still keep (on CPU in numpy, by an exact
bracketed search, `keep_top`; on other devices with one `kthvalue`,
`keep_top_torch`, where pruned weights score −∞).

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

import numpy as np
import torch

from ..errors import HfPxFailure
from ..utils import count_kept


def _prepared(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
    """Flat float32/float64 scores and flat alive masks, checked (NaN, all-tied)."""
    out = {}
    tied: list[tuple[str, float]] = []
    for n, s in scores.items():
        # float64 stays float64: PX rescores in it when float32 underflows
        s = s.detach().reshape(-1)
        s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
        alive = masks[n].reshape(-1).to(s.device)
        if s.device.type == "cpu":
            s, alive = s.contiguous(), alive.contiguous()
            sn, an = s.numpy(), alive.numpy()
            has_nan, dense = bool(np.isnan(sn).any()), bool(an.all())
        else:
            has_nan, dense = bool(torch.isnan(s).any()), bool(alive.all())
        if has_nan:
            raise HfPxFailure(
                f"scores of {n!r} contain NaN; check the model's weights or use float32 data"
            )
        if alive.numel() >= 2 and dense:
            lo, hi = s.min(), s.max()
            if bool(lo == hi):
                tied.append((n, float(lo)))
        out[n] = (s, alive)
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


#: below this many alive entries a full partition is as fast as the bracketed search
_BRACKET_MIN = 1 << 20
_SAMPLE = 1 << 16


def _kth_largest(values: list[np.ndarray], alive: list[np.ndarray], n_alive: int, k: int):
    """The k-th largest alive entry over all arrays (1 ≤ k ≤ n_alive), exactly.

    Large inputs: a fixed-seed sample of the alive entries brackets the value,
    one pass counts the alive entries above the bracket, and the partition runs on
    the bracket alone (a full selection over every weight was most of a reused
    round on ViT-base-sized models, docs/benchmarks.md §3). A bracket that misses
    falls back to the full partition; the value is the same either way.
    """
    if n_alive >= _BRACKET_MIN:
        sizes = [v.size for v in values]
        total = sum(sizes)
        rng = np.random.default_rng(n_alive)
        draws = min(total, int(_SAMPLE * 1.25 * total / n_alive) + 1)
        pos = np.sort(rng.integers(0, total, draws))
        bounds = np.searchsorted(pos, np.cumsum([0, *sizes]))
        parts, offset = [], 0
        for v, a, i, j in zip(values, alive, bounds[:-1], bounds[1:], strict=True):
            local = pos[i:j] - offset
            offset += v.size
            parts.append(v[local][a[local]])
        sample = np.sort(np.concatenate(parts))
        m = sample.size
        if m >= 1000:
            p = 1.0 - (k - 0.5) / n_alive  # fraction of the alive entries below the value
            eps = 6.0 * math.sqrt(max(p * (1.0 - p), 1.0 / m) / m) + 4.0 / m
            lo = sample[max(0, math.floor((p - eps) * m))]
            hi = sample[min(m - 1, math.ceil((p + eps) * m))]
            above = sum(
                int(np.count_nonzero(a & (v > hi))) for v, a in zip(values, alive, strict=True)
            )
            r = k - above  # rank from the top inside the bracket
            if r >= 1:
                band = np.concatenate(
                    [v[a & (v >= lo) & (v <= hi)] for v, a in zip(values, alive, strict=True)]
                )
                if r <= band.size:
                    return np.partition(band, band.size - r)[band.size - r]
    pool = np.concatenate([v[a] for v, a in zip(values, alive, strict=True)])
    return np.partition(pool, pool.size - k)[pool.size - k]


def _keep_top_numpy(values, alive, k: int) -> list[torch.Tensor]:
    vs = [v.numpy() for v in values]
    als = [a.numpy() for a in alive]
    n_alive = sum(int(np.count_nonzero(a)) for a in als)
    if k >= n_alive:
        return [torch.from_numpy(a.copy()) for a in als]
    if k <= 0:
        return [torch.zeros(a.size, dtype=torch.bool) for a in als]
    t = _kth_largest(vs, als, n_alive, k)
    keep = [a & (v >= t) for v, a in zip(vs, als, strict=True)]
    extra = sum(int(np.count_nonzero(kp)) for kp in keep) - k
    for i in reversed(range(len(keep))):  # ties at the threshold: the last ones go
        if extra <= 0:
            break
        equal = np.flatnonzero(als[i] & (vs[i] == t))
        drop = min(extra, equal.size)
        keep[i][equal[equal.size - drop :]] = False
        extra -= drop
    return [torch.from_numpy(kp) for kp in keep]


def keep_top(values: list[torch.Tensor], alive: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Per array, the boolean mask of the k largest *alive* entries over all arrays
    (1-D, same lengths as `alive`); ties go to the lowest (array, index)."""
    if all(v.device.type == "cpu" for v in values):
        return _keep_top_numpy(values, alive, k)
    return keep_top_torch(values, alive, k)


def keep_top_torch(values, alive, k: int) -> list[torch.Tensor]:
    """`keep_top` with torch ops on any device: one `kthvalue` over every score."""
    flat = torch.cat(
        [
            torch.where(a, v, torch.full_like(v, -math.inf))
            for v, a in zip(values, alive, strict=True)
        ]
    )
    chosen = _top_k_torch(flat, k)
    return list(torch.split(chosen, [v.numel() for v in values]))


def top_k_stable(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries; ties go to the lowest index."""
    if flat.device.type == "cpu" and flat.is_floating_point():
        wide = flat.dtype in (torch.float32, torch.float64)
        values = (flat if wide else flat.to(torch.float32)).reshape(-1).contiguous()
        return keep_top([values], [torch.ones(flat.numel(), dtype=torch.bool)], k)[0]
    return _top_k_torch(flat, k)


def _top_k_torch(flat: torch.Tensor, k: int) -> torch.Tensor:
    n = flat.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    threshold = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    keep = flat >= threshold
    extra = int(keep.sum()) - k
    if extra > 0:  # ties at the threshold: the highest-index ones go
        equal = torch.nonzero(flat == threshold).squeeze(1)
        keep[equal[equal.numel() - extra :]] = False
    return keep


def floors(masks: dict[str, torch.Tensor], density: float, ratio: float) -> dict[str, int]:
    if ratio <= 0:
        return {n: 0 for n in masks}
    return {
        n: min(count_kept(m), max(1, math.ceil(ratio * density * m.numel() - 1e-9)))
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
    alive_total = sum(count_kept(m) for m in masks.values())
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
            chosen = keep_top(
                [prepared[n][0] for n in free], [prepared[n][1] for n in free], budget
            )
            keep.update(zip(free, chosen, strict=True))
        short = [n for n in free if count_kept(keep[n]) < floor[n]]
        if not short:
            break
        guarded.update(short)
    for n in guarded:
        keep[n] = keep_top([prepared[n][0]], [prepared[n][1]], floor[n])[0]
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
    caps = {n: count_kept(m) for n, m in masks.items()}
    floor = floors(masks, density, min_density_ratio)
    if sum(floor.values()) > k:
        floor = {n: 0 for n in masks}
    alloc = apportion(k, sizes, caps, floor)
    return {
        n: keep_top([prepared[n][0]], [prepared[n][1]], alloc[n])[0].view(masks[n].shape)
        for n in masks
    }
