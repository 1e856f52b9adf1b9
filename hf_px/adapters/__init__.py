"""Adapters registered by ``config.model_type``, with a generic fallback."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..errors import HfPxError
from . import families  # noqa: F401  (registers the built-in families)
from .base import Adapter, Attention, Gate, Norm
from .registry import ADAPTERS, register_adapter

logger = logging.getLogger(__name__)

_warned: set[str] = set()

#: image-classification model types hf-px refuses up front, and why (one clause each)
REFUSED: dict[str, str] = {
    "dinat": "its neighbourhood attention needs the natten package, which hf-px does not "
    "install or test",
    "imagegpt": "it classifies colour-cluster token ids (input_ids), not pixel_values",
    "pp_lcnet": "its classifier returns no `logits` (transformers' output has only "
    "last_hidden_state), so neither hf-px nor pipeline() can read its predictions",
    "shieldgemma2": "it is a vision-language model that needs a text prompt (input_ids) "
    "with every image",
    "siglip2": "it takes patchified pixel_values with pixel_attention_mask and spatial_shapes, "
    "not an N x C x H x W image batch",
    "timm_wrapper": "it wraps a timm model, whose layers hf-px neither adapts nor tests",
}


def refusal(model_type: str | None) -> str | None:
    """Why hf-px refuses `model_type` (None: it does not)."""
    return REFUSED.get(model_type) if model_type is not None else None


def check_supported(model_or_config: Any) -> None:
    """Raise :class:`HfPxError` (one line naming why) for a refused model type.

    Takes a model or its config, so callers can refuse before loading any weight.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    why = refusal(model_type)
    if why is not None:
        raise HfPxError(
            f"hf-px cannot prune model_type {model_type!r}: {why}; pick another image "
            "classifier (docs/families.md lists the supported ones)"
        )


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`'s family; the generic one (warned once) otherwise.

    Refused model types (:data:`REFUSED`) raise :class:`HfPxError` here, before
    any scoring work.
    """
    check_supported(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]()
    if model_type is not None and model_type not in _warned:
        _warned.add(model_type)
        logger.warning(
            "model_type %r has no hf-px adapter; using the generic path "
            "(Conv2d/Linear weights, activation modules as gates)",
            model_type,
        )
    return Adapter()


__all__ = [
    "REFUSED",
    "Adapter",
    "Attention",
    "Gate",
    "Norm",
    "check_supported",
    "get_adapter",
    "register_adapter",
    "refusal",
]
