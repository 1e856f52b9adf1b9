"""Masks: the schedule and the thresholds."""

from .schedule import densities, keep_counts
from .threshold import select_global, select_layerwise, top_k_stable

__all__ = ["densities", "keep_counts", "select_global", "select_layerwise", "top_k_stable"]
