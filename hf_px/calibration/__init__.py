"""Calibration data and the data-parallel calibration pass."""

from .distributed import (
    AccelerateReducer,
    Reducer,
    check_not_offloaded,
    check_same_weights,
    check_world_size,
    make_accelerator,
    make_reducer,
    move_batches,
)

__all__ = [
    "AccelerateReducer",
    "Reducer",
    "check_not_offloaded",
    "check_same_weights",
    "check_world_size",
    "make_accelerator",
    "make_reducer",
    "move_batches",
]
