"""Structured pruning: whole channels, MLP neurons and attention heads, physically removed.

``prune_structured`` scores units (PX or a baseline) and zeroes the removed ones;
``shrink`` gathers the kept ones into smaller modules (same function, fewer MACs);
:func:`hf_px.checkpoint.structured.save_structured` writes a checkpoint that
``from_pretrained`` loads (see docs/checkpoints.md).
"""

from .cost import CostModel
from .prune import TARGETS, StructuredResult, prune_structured
from .scores import METHODS, apply_masks, score_units
from .shrink import shrink
from .units import FAMILY_KINDS, KINDS, UnitGroup, find_units, resolve_kinds

__all__ = [
    "FAMILY_KINDS",
    "KINDS",
    "METHODS",
    "TARGETS",
    "CostModel",
    "StructuredResult",
    "UnitGroup",
    "apply_masks",
    "find_units",
    "prune_structured",
    "resolve_kinds",
    "score_units",
    "shrink",
]
