"""Built-in model families."""

from __future__ import annotations

from . import register_adapter
from .base import Adapter


@register_adapter
class ResNetAdapter(Adapter):
    """ReLU/BatchNorm CNN: the reference semantics of PX apply as published."""

    name = "resnet"
    model_types = ("resnet",)


@register_adapter
class ConvNextAdapter(Adapter):
    """Depthwise 7x7 + pointwise MLP blocks, GELU, channels-first/last LayerNorm."""

    name = "convnext"
    model_types = ("convnext", "convnextv2")


@register_adapter
class ViTAdapter(Adapter):
    """Patch-embedding conv, pre-LN attention + GELU MLP blocks."""

    name = "vit"
    model_types = ("vit", "deit", "dinov2", "beit", "swin")
