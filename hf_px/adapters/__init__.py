"""Adapters registered by ``config.model_type``, with a generic fallback."""

from __future__ import annotations

import logging

from torch import nn

from .base import Adapter, Attention, Gate, Norm

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Adapter]] = {}
_warned: set[str] = set()


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`'s family; the generic one (warned once) otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]()
    if model_type is not None and model_type not in _warned:
        _warned.add(model_type)
        logger.warning(
            "model_type %r has no hf-px adapter; using the generic path "
            "(Conv2d/Linear weights, activation modules as gates)",
            model_type,
        )
    return Adapter()


def registered_model_types() -> list[str]:
    return sorted(_REGISTRY)


from . import families  # noqa: E402,F401  (registers the built-in families)

__all__ = [
    "Adapter",
    "Attention",
    "Gate",
    "Norm",
    "get_adapter",
    "register_adapter",
    "registered_model_types",
]
