"""PX's options, declared once (:class:`PxOptions`), and the choice of ``form``.

The defaults per normalisation kind are :data:`DEFAULTS`, read at scoring time so
that one entry switches a default; :func:`form_choice` decides the score's ``form``
from the options and whether the weights were loaded from a checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ...errors import HfPxError
from ...utils import loaded_from_checkpoint
from ..options import MethodOptions, option
from ..refresh import DEFAULT_REFRESH, check_refresh

logger = logging.getLogger(__name__)

#: the per-sample forms for trained networks beside the paper's bound (per_sample.py)
FORMS = ("bound", "paths", "fisher")
DEFAULT_FISHER_CLASSES = 8

#: the default treatment per normalisation kind: ``bn`` for BatchNorm nets, ``norm``
#: for LayerNorm/GroupNorm nets (docs/method.md §3–4.3 say how each was chosen)
DEFAULTS = {"bn": "eval", "norm": "gate"}
BN_MODES = ("reference", "rms", "eval")
NORM_MODES = ("rms", "gate")
QK_MODES = ("tied", "gate", "off")
ATTN_MODES = ("sum", "mean")


@dataclass(frozen=True)
class PxOptions(MethodOptions):
    """PX's options. None = not given: the default in the help applies, and for the
    bound-only ones (:data:`BOUND_OPTIONS`) ``form`` is then free to follow the weights."""

    method: ClassVar[str] = "px"

    form: str | None = option(
        None,
        "PX score: 'bound' = the paper's NTK-trace bound, 'fisher' = per-sample "
        "output-gradient form for trained networks, 'paths' = per-class logit form "
        "(default auto: fisher when the weights were loaded from a checkpoint, else bound)",
        choices=("auto", *FORMS),
    )
    bn: str | None = option(
        None,
        f"PX BatchNorm treatment in the auxiliary nets (default: {DEFAULTS['bn']})",
        choices=BN_MODES,
    )
    norm: str | None = option(
        None,
        f"PX LayerNorm/GroupNorm treatment in the auxiliary nets (default: {DEFAULTS['norm']})",
        choices=NORM_MODES,
    )
    qk: str | None = option(
        None,
        "PX bound: attention q/k weights ranked by gate sensitivity with the budget tied "
        "to the block's v ('tied', the default), by gate sensitivity alone ('gate'), or "
        "not through the gates ('off')",
        choices=QK_MODES,
    )
    attn: str | None = option(
        None,
        "PX bound: attention's path weights summed over keys or averaged (default: sum)",
        choices=ATTN_MODES,
    )
    cut_scale: bool | None = option(
        None,
        "PX bound: exact power-of-two rescaling at graph cuts where no norm uses own "
        "statistics (default: true)",
        kind=bool,
    )
    keep_classifier: bool | None = option(
        None,
        "PX bound: the classification head keeps its values in the auxiliary nets (default: true)",
        kind=bool,
    )
    refresh: float | str | None = option(
        DEFAULT_REFRESH,
        "PX: recompute the data side once the kept density has fallen by F since the "
        f"last recompute, reusing it in between (default: {DEFAULT_REFRESH}); 'every' = "
        "the paper's full recompute every round",
        check=check_refresh,
        metavar="F|every",
    )
    fisher_classes: int = option(
        DEFAULT_FISHER_CLASSES,
        "PX form=fisher: each sample's most probable classes summed over "
        f"(default: {DEFAULT_FISHER_CLASSES})",
        kind=int,
        metavar="N",
    )


#: options only the bound (``form="bound"``) reads; with one of them set, ``form`` defaults
#: to the bound whatever the weights
BOUND_OPTIONS = ("bn", "norm", "qk", "attn", "cut_scale", "keep_classifier")


def form_choice(model: nn.Module, options: dict[str, Any]) -> tuple[str, str]:
    """(form, why) for these options: the one given, else ``"fisher"`` for a model whose
    weights were loaded from a checkpoint (a trained function: docs/method.md §10 says
    why, and the benchmark that chose it), else the paper's ``"bound"`` (a freshly
    initialised model, or a bound-only option given)."""
    form = options.get("form")
    if form not in (None, "auto"):
        bound_only = [k for k in BOUND_OPTIONS if options.get(k) is not None]
        if form != "bound" and bound_only:
            raise HfPxError(
                f"px option(s) {', '.join(bound_only)} apply to form='bound' only, not "
                f"form={form!r}; drop them or use form='bound'"
            )
        return str(form), "given"
    bound_only = [k for k in BOUND_OPTIONS if options.get(k) is not None]
    if bound_only:
        return "bound", f"bound-only option(s) {', '.join(bound_only)} given"
    if loaded_from_checkpoint(model):
        return "fisher", "weights loaded from a checkpoint: a trained model"
    return "bound", "weights not loaded from a checkpoint: an initialised model"


def resolve_options(model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with ``form`` decided (:func:`form_choice`), logged once."""
    form, why = form_choice(model, options)
    if why != "given":
        logger.info("px: form=%r (%s)", form, why)
    return {**options, "form": form}


def modes(options: PxOptions) -> tuple[str, str, str]:
    """(bn, norm, qk) modes, the ones not given from :data:`DEFAULTS` (read here, at
    scoring time, so that one entry switches a default)."""
    return (options.bn or DEFAULTS["bn"], options.norm or DEFAULTS["norm"], options.qk or "tied")
