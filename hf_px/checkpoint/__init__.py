"""Sparse checkpoints that plain ``from_pretrained`` loads.

``save_pruned`` writes a Hugging Face model directory in the ``dense`` or
``bitmask`` format; importing this package registers (lazily, see
:mod:`.quantizer`) the transformers quantization method that decodes
``bitmask`` checkpoints on load.
"""

from .inspect import inspect_checkpoint
from .quantizer import install as _install
from .save import FORMATS, check_output_dir, save_pruned
from .state import MASKS_NAME, load_pruning

_install()

__all__ = [
    "FORMATS",
    "MASKS_NAME",
    "check_output_dir",
    "inspect_checkpoint",
    "load_pruning",
    "save_pruned",
]
