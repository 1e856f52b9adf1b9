"""How often a method recomputes its data side across a prune's rounds (the ``refresh``
option of PX and of its trained ``form``s), apart from both so neither imports the other."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import HfPxError
from ..utils import count_kept

DEFAULT_REFRESH = 0.3


def refresh_policy(value: Any) -> float | None:
    """``refresh`` option → None ("every": the paper's full recompute every round) or
    the fraction f: the data side is recomputed once the kept density has fallen
    to (1 − f) × its value at the last recompute."""
    if value in ("every", None) or value == 0:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not 0.0 < f < 1.0:
        raise HfPxError(
            f"px option refresh={value!r} is unknown; use 'every' or a fraction in (0, 1) "
            f"such as {DEFAULT_REFRESH} (recompute the data side when the kept density "
            "has fallen by that fraction)"
        )
    return f


def check_refresh(value: Any) -> float | str:
    """A ``refresh`` value as the options keep it: ``"every"`` or the fraction (a float,
    also from text such as ``"0.3"``); anything else is refused by :func:`refresh_policy`."""
    f = refresh_policy(value)
    return value if f is None else f


def reusable(ctx: Any, slot: str, key: tuple) -> tuple[Any, bool, float | None, float]:
    """(stored, reuse, policy, density) for a round: what ``ctx.cache.store[slot]`` holds
    (an entry with ``key`` and ``density``), whether this round may reuse it (same key,
    and the kept density has not yet fallen by the policy's fraction), the policy and
    the current kept density."""
    policy = refresh_policy(ctx.options.refresh)
    density = kept_density(ctx.masks)
    stored = ctx.cache.store.get(slot) if ctx.cache is not None else None
    reuse = (
        policy is not None
        and stored is not None
        and stored.key == key
        and density > (1.0 - policy) * stored.density
    )
    return stored, reuse, policy, density


def kept_density(masks: dict[str, torch.Tensor]) -> float:
    """The kept fraction over all `masks` (what the refresh policy compares)."""
    kept = sum(count_kept(m) for m in masks.values())
    return kept / max(1, sum(m.numel() for m in masks.values()))
