"""PX — Path eXclusion (Iurada, Ciccone, Tommasi, CVPR 2024).

R(x, θ) = Σ_k z_data,k(x) · z_kernel,k(θ²) bounds the NTK trace from above;
the saliency is S_j = |∂R/∂θ_j²| · θ_j² (docs/method.md).

* **kernel net**: transformed parameters → θ² (prunable ones masked), gates →
  identity, input = ones, normalisation layers on their own batch statistics.
* **data net**: transformed parameters → 1 (prunable ones → their 0/1 mask),
  gates → the gate the real masked model (eval mode) had on this batch, input
  = x², no gradient.
* *transformed* = every parameter but normalisation parameters and, for
  `transformers` classifiers, the classification head (reference semantics:
  both keep their values in both auxiliary nets); BatchNorm is recognised by
  type, not by name.

Two exact savings over the reference implementation, neither changes a score:

1. The kernel net's input is all ones, so every sample of a batch — and every
   batch — gives the same z_kernel (BatchNorm statistics over identical samples
   equal those of one sample). Hence R = Σ_k (Σ_batches Σ_n z_data[n, k]) ·
   z_kernel[k]: one kernel forward/backward on a single sample per scoring
   call, and the data passes need no gradient.
2. The only data-dependent quantity is the vector Σ z_data (one entry per
   class); under data parallelism that vector is all-reduced and every process
   runs the same kernel backward.

The package, one job per file: ``options`` (declaration, ``form`` choice), ``score``
(the entry: form dispatch, overflow fallback, float64 retry), ``bound`` (the two
algorithms of the bound), ``runner`` (the auxiliary nets), ``data_side`` (what a
round may reuse), ``tie`` (the q/k budget tie) and ``per_sample`` (the trained forms).
"""

from __future__ import annotations

from ..base import Method
from ..refresh import DEFAULT_REFRESH, refresh_policy
from .bound import AuxNetOverflow
from .options import (
    BN_MODES,
    BOUND_OPTIONS,
    DEFAULTS,
    FORMS,
    NORM_MODES,
    PxOptions,
    form_choice,
    resolve_options,
)
from .score import OWN_STATISTICS, score

METHOD = Method(
    name="px",
    score=score,
    label="PX (Path eXclusion)",
    short_label="PX",
    default_rounds=100,
    resolve_options=resolve_options,
    options=PxOptions,
)


__all__ = [
    "BN_MODES",
    "BOUND_OPTIONS",
    "DEFAULTS",
    "DEFAULT_REFRESH",
    "FORMS",
    "METHOD",
    "NORM_MODES",
    "OWN_STATISTICS",
    "AuxNetOverflow",
    "PxOptions",
    "form_choice",
    "refresh_policy",
    "resolve_options",
    "score",
]
