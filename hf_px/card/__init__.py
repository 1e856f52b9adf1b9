"""Model cards for pruned checkpoints (``huggingface_hub.ModelCard`` + a Jinja template)."""

from .build import (
    CHART_NAME,
    README_NAME,
    count_macs,
    retarget_card,
    template_path,
    write_card,
)

__all__ = [
    "CHART_NAME",
    "README_NAME",
    "count_macs",
    "retarget_card",
    "template_path",
    "write_card",
]
