"""The names a `bitmask` checkpoint carries on disk, apart from the writer, the reader and
the transformers quantizer, so that none of those imports another for a constant."""

from __future__ import annotations

from typing import Any

QUANT_METHOD = "hf_px_bitmask"
FORMAT_VERSION = 1
INDEX_SUFFIX = "_hfpx_index"
# Weight-file metadata of a `bitmask` checkpoint: every mask's name in order, with the key
# whose index in this file codes it, if one does (checkpoint.state.masks_metadata).
MASKS_METADATA = "hf_px_masks"
HINT = "pip install hf-px, then import hf_px before from_pretrained"
# Stored as a 1-byte tensor: its name shows up in plain transformers' load report.
MARKER_KEY = f"hf_px_bitmask_checkpoint: {HINT}"
# The record of a structured checkpoint (checkpoint.structured), named here so that the
# mask reader can say what a structured directory is without importing its writer.
UNITS_NAME = "structured_units.json"


def quantization_config_dict() -> dict[str, Any]:
    """What `save_pruned` writes under ``config.json``'s ``quantization_config``."""
    return {
        "quant_method": QUANT_METHOD,
        "format": "bitmask",
        "version": FORMAT_VERSION,
        "requires": HINT,
    }
