"""hf-px: PX (Path eXclusion) pruning for Hugging Face vision models.

Public API — everything else may change::

    from hf_px import compute_scores, prune, PruningConfig, PruningResult
    from hf_px import save_pruned, load_pruning
"""

from .checkpoint import (  # also registers the bitmask loader, lazily
    load_pruning,
    save_pruned,
)
from .config import PruningConfig, PruningResult
from .errors import HfPxError, HfPxFailure
from .methods import METHODS
from .pruning import compute_scores, prune, recalibrate_batchnorm
from .version import __version__

__all__ = [
    "METHODS",
    "HfPxError",
    "HfPxFailure",
    "PruningConfig",
    "PruningResult",
    "__version__",
    "compute_scores",
    "load_pruning",
    "prune",
    "recalibrate_batchnorm",
    "save_pruned",
]
