"""Built-in model families."""

from __future__ import annotations

from .base import Adapter
from .registry import register_adapter


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
    model_types = ("vit", "deit", "dinov2", "beit", "swin", "donut-swin")


@register_adapter
class SiglipAdapter(Adapter):
    """SigLIP vision tower; the classifier averages the tokens."""

    name = "siglip"
    model_types = ("siglip",)
    unscorable = (
        (
            r"^vision_model\.head\.",
            "the attention-pooling head is not used by SiglipForImageClassification "
            "(it averages the tokens), so no score reaches it",
        ),
    )


_INLINE_QK = (
    "its attention's softmax is computed inline, so query/key reach the output only "
    "through the kernel net's attention probabilities, whose gradient vanishes once the "
    "tokens agree"
)


@register_adapter
class MobileViTAdapter(Adapter):
    """MobileNetV2 blocks + unfolded-patch transformer blocks (inline softmax attention,
    whose query/key the base rule keeps dense: `Adapter.probability_only_weights`)."""

    name = "mobilevit"
    model_types = ("mobilevit",)


@register_adapter
class CvtAdapter(Adapter):
    """Convolutional projections (depthwise conv + BatchNorm) before inline attention."""

    name = "cvt"
    model_types = ("cvt",)
    unscorable = (
        (
            r"\.attention\.attention\.(convolution_projection|projection)_(query|key)\.",
            _INLINE_QK,
        ),
    )


@register_adapter
class PvtAdapter(Adapter):
    """Spatial-reduction attention (keys/values from a strided conv), softmax inline;
    its query/key are kept dense by the base rule (`Adapter.probability_only_weights`)."""

    name = "pvt"
    model_types = ("pvt", "pvt_v2")
