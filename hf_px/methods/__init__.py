"""Scoring methods, one module (or package, `px/`) each; all share the signature
``score(ctx, batches)`` and declare their options (`options.py`)."""

from __future__ import annotations

from ..errors import HfPxError
from . import grasp, magnitude, px, random, snip, synflow, wanda
from .base import Method, RoundCache, ScoringContext

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (px, snip, grasp, synflow, magnitude, random, wanda)
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise HfPxError(
            f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}"
        ) from None


__all__ = ["METHODS", "Method", "RoundCache", "ScoringContext", "get_method"]
