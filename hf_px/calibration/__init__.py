"""Calibration data: a dataset reference → the batches `compute_scores`/`prune` take.

One module per job, in the order the data passes them:

* :mod:`.processors` — the model's image processor, or the documented default;
* :mod:`.sources` — opening a dataset reference (the built-in digits, a
  ``save_to_disk`` directory, an image folder, a Hub id, streamed by default);
* :mod:`.columns` — which columns hold the images and the labels;
* :mod:`.sampling` — which rows a sample takes (seeded, the same on every machine);
* :mod:`.images` — decoding an image value to RGB (grey, palette, 16-bit;
  transparency composited on white);
* :mod:`.loaders` — the one flow from a reference to
  ``[{"pixel_values": N×C×H×W float, "labels": N long}]``.

Sampling for calibration: ``examples_per_class=k`` draws k images of every class
(the paper's class-balanced set, k = 10), ``num_samples=n`` draws n images; with
neither, ``examples_per_class=10`` when the dataset has labels, else
``num_samples=100``. The batch list is materialised: every pruning round reuses it
without re-decoding.
"""

from .columns import dataset_label_names
from .images import to_rgb
from .loaders import load_calibration_batches, load_labelled_batches
from .processors import default_image_processor, image_size_of, load_image_processor
from .sampling import DEFAULT_EXAMPLES_PER_CLASS, DEFAULT_NUM_SAMPLES
from .sources import DEFAULT_DATASET, digits_dataset, open_dataset, resolve_split

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
    "resolve_split",
    "to_rgb",
]
