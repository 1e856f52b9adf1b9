"""hf-px: PX (Path eXclusion) pruning for Hugging Face vision models.

Public API — everything else may change::

    from hf_px import compute_scores, prune, PruningConfig, PruningResult
    from hf_px import save_pruned, load_pruning
"""

__version__ = "0.1.0"

from .checkpoint import (  # noqa: E402  (also registers the bitmask loader, lazily)
    load_pruning,
    save_pruned,
)
from .config import PruningConfig, PruningResult  # noqa: E402
from .errors import HfPxError, HfPxFailure  # noqa: E402
from .methods import METHODS  # noqa: E402
from .pruning import compute_scores, prune, recalibrate_batchnorm  # noqa: E402

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
