"""Model cards for pruned checkpoints (``huggingface_hub.ModelCard`` + a Jinja template)."""

from .build import (
    CHART_NAME,
    README_NAME,
    count_macs,
    retarget_card,
    template_path,
    write_card,
)
from .records import CalibrationRecord, Evaluation, FinetuneRecipe

__all__ = [
    "CHART_NAME",
    "CalibrationRecord",
    "Evaluation",
    "FinetuneRecipe",
    "README_NAME",
    "count_macs",
    "retarget_card",
    "template_path",
    "write_card",
]
