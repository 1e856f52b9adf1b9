"""Which adapter serves which ``config.model_type``: the registry apart from the adapter
classes (``families``) and from the lookup (the package), so none imports another back."""

from __future__ import annotations

from .base import Adapter

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: `cls` serves every type in its ``model_types``."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls
