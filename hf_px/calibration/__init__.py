"""Calibration data and the data-parallel calibration pass."""

from .distributed import AccelerateReducer, Reducer, make_reducer

__all__ = ["AccelerateReducer", "Reducer", "make_reducer"]
