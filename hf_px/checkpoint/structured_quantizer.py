"""The transformers classes of the ``hf_px_structured`` load hook.

Imported only by :func:`hf_px.checkpoint.quantizer.register`, once transformers'
quantizer registry exists. :mod:`.structured` explains the layout and how loading
fails without hf-px. Nothing is quantized: the "quantizer" only resizes the modules
of the freshly built model to the saved widths before the weights are filled, and
stays attached (no ``dequantize``) so that ``save_pretrained`` writes the hook's
config again.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import HfPxError
from .structured import FORMAT_VERSION, HINT, QUANT_METHOD, resize_to


class HfPxStructuredConfig(QuantizationConfigMixin):
    """``quantization_config`` of a structured checkpoint: the kept width per group."""

    def __init__(
        self,
        widths: dict[str, int] | None = None,
        kinds: list[str] | None = None,
        version: int = FORMAT_VERSION,
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.version = int(version)
        self.widths = {str(k): int(v) for k, v in (widths or {}).items()}
        self.kinds = list(kinds or [])
        self.requires = kwargs.pop("requires", HINT)
        if self.version > FORMAT_VERSION:
            raise HfPxError(
                f"this checkpoint uses hf-px structured format version {self.version}, newer "
                f"than this hf-px ({FORMAT_VERSION}); pip install -U hf-px"
            )


class HfPxStructuredQuantizer(HfQuantizer):
    """Resizes the modules to the saved widths before transformers loads the weights."""

    requires_calibration = False

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        return None

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        ignore = set(model._keys_to_ignore_on_load_unexpected or ())
        ignore.add(r"^hf_px_structured_checkpoint")
        model._keys_to_ignore_on_load_unexpected = ignore
        resize_to(model, self.quantization_config.kinds, self.quantization_config.widths)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # Trainer refuses a "purely quantized" model unless this holds; these weights are
        # ordinary float tensors of smaller shapes, so plain training is all there is
        return True
