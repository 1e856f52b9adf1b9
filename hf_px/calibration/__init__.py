"""Calibration data (:mod:`.data`) and the data-parallel calibration pass (:mod:`.distributed`)."""

from .data import (
    DEFAULT_DATASET,
    DEFAULT_EXAMPLES_PER_CLASS,
    DEFAULT_NUM_SAMPLES,
    dataset_label_names,
    default_image_processor,
    digits_dataset,
    load_calibration_batches,
    load_image_processor,
    load_labelled_batches,
    open_dataset,
    to_rgb,
)
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
    "DEFAULT_DATASET",
    "DEFAULT_EXAMPLES_PER_CLASS",
    "DEFAULT_NUM_SAMPLES",
    "AccelerateReducer",
    "Reducer",
    "check_not_offloaded",
    "check_same_weights",
    "check_world_size",
    "dataset_label_names",
    "default_image_processor",
    "digits_dataset",
    "load_calibration_batches",
    "load_image_processor",
    "load_labelled_batches",
    "make_accelerator",
    "make_reducer",
    "move_batches",
    "open_dataset",
    "to_rgb",
]
