"""Calibration data: image processors, data sets, and batches for a calibration pass."""

from .data import (
    DEFAULT_DATASET,
    DEFAULT_EXAMPLES_PER_CLASS,
    DEFAULT_NUM_SAMPLES,
    dataset_label_names,
    default_image_processor,
    digits_dataset,
    image_size_of,
    load_calibration_batches,
    load_image_processor,
    load_labelled_batches,
    open_dataset,
    to_rgb,
)

__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_EXAMPLES_PER_CLASS",
    "DEFAULT_NUM_SAMPLES",
    "dataset_label_names",
    "default_image_processor",
    "digits_dataset",
    "image_size_of",
    "load_calibration_batches",
    "load_image_processor",
    "load_labelled_batches",
    "open_dataset",
    "to_rgb",
]
