"""The transformers classes of the `hf_px_bitmask` quantization method.

Imported only by :func:`hf_px.checkpoint.quantizer.register` (the registry), once transformers'
quantizer registry exists, so ``import hf_px`` stays cheap; that module explains
how a `bitmask` checkpoint loads, and how it fails without hf-px.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter, _IdentityOp
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import HfPxError
from .bitmask import decode, decode_in_background
from .constants import FORMAT_VERSION, HINT, INDEX_SUFFIX, QUANT_METHOD


class HfPxBitmaskConfig(QuantizationConfigMixin):
    """``quantization_config`` of a `bitmask` checkpoint (format description only)."""

    # class attribute, so never serialised: transformers drops the quantizer after load
    dequantize = True

    def __init__(
        self, format: str = "bitmask", version: int = FORMAT_VERSION, **kwargs: Any
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.format = format
        self.version = int(version)
        self.requires = kwargs.pop("requires", HINT)
        kwargs.pop("quant_method", None)
        if self.version > FORMAT_VERSION:
            raise HfPxError(
                f"this checkpoint uses hf-px bitmask format version {self.version}, newer "
                f"than this hf-px ({FORMAT_VERSION}); pip install -U hf-px"
            )


class BitmaskDecode(ConversionOps):
    """(values, index) → dense weight; dense tensors pass through (cast if asked).

    transformers folds this op in front of a model's own converters (its
    checkpoint key renaming, e.g. one fused tensor chunked into two weights):
    their sources then gain the ``_hfpx_index`` companions, so the converter
    reads several keys for several targets. The decode merges each pair back
    into one tensor under the weight's own key before the model's ops run, so
    it declares that it maps many to many.
    """

    supports_many_to_many = True

    def __init__(self, hf_quantizer: Any) -> None:
        self.hf_quantizer = hf_quantizer

    def __deepcopy__(self, memo: dict) -> BitmaskDecode:
        return self  # stateless; copying the quantizer along is slow (docs/checkpoints.md)

    def convert(
        self,
        input_dict: dict[str, Any],
        source_patterns: list[str] | None = None,
        target_patterns: list[str] | None = None,
        full_layer_name: str | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        target = _target_dtype(model, full_layer_name)
        out: dict[str, Any] = {}
        for key, tensors in input_dict.items():
            if key.endswith(INDEX_SUFFIX):
                continue
            many = isinstance(tensors, list)
            items = tensors if many else [tensors]
            indices = input_dict.get(key + INDEX_SUFFIX)
            if indices is not None:
                indices = indices if isinstance(indices, list) else [indices]
                if len(indices) != len(items):
                    raise HfPxError(f"{full_layer_name}: values and index counts differ")
                items = [self._decode(v, i, target) for v, i in zip(items, indices, strict=True)]
            if target is not None:
                items = [t if t.dtype == target else t.to(target) for t in items]
            out[key] = items if many else items[0]
        return out

    def _decode(self, values: Any, index: Any, target: Any) -> Any:
        quantizer = self.hf_quantizer
        if (
            getattr(quantizer, "decode_in_background", False)
            and values.device.type == "cpu"
            and (target is None or target == values.dtype)
        ):
            # filled on the decoding threads while transformers goes on placing the
            # other weights; the quantizer waits for it before from_pretrained returns
            out, pending = decode_in_background(values, index)
            if pending is not None:
                quantizer.pending_decodes.append(pending)
            return out
        # decoded on the CPU, handed back where transformers placed the values
        return decode(values.cpu(), index.cpu()).to(values.device)

    @property
    def reverse_op(self) -> ConversionOps:
        return _IdentityOp()  # decoded weights are dense: saving back needs no conversion


class BitmaskConverter(WeightConverter):
    """A `WeightConverter` copied slot by slot (transformers deep-copies it once per
    weight): fresh containers, shared patterns and stateless ops (docs/checkpoints.md)."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> BitmaskConverter:
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if not hasattr(self, slot):
                    continue
                value = getattr(self, slot)
                if isinstance(value, (list, dict, set)):
                    value = (
                        copy.deepcopy(value, memo)
                        if any(isinstance(v, (list, dict, set)) for v in value)
                        else copy.copy(value)
                    )
                object.__setattr__(new, slot, value)
        return new


def _target_dtype(model: Any, name: str | None) -> torch.dtype | None:
    if model is None or not name:
        return None
    try:
        ref = model.get_parameter(name)
    except AttributeError:
        try:
            ref = model.get_buffer(name)
        except AttributeError:
            return None
    return ref.dtype if ref.is_floating_point() else None


class HfPxBitmaskQuantizer(HfQuantizer):
    """Decodes hf-px `bitmask` checkpoints at load time; the loaded model is dense."""

    requires_calibration = False
    serialized_names = {"weight": ["weight", "weight" + INDEX_SUFFIX]}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Decoding overlaps the rest of loading only when nothing reads a weight
        # between its conversion and `_process_model_after_weight_loading`, which
        # waits for it: all on the CPU (no device map, so no dispatch or offload).
        self.decode_in_background = False
        self.pending_decodes: list = []

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        return None

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # the marker tensor is for plain transformers' error report only
        ignore = set(model._keys_to_ignore_on_load_unexpected or ())
        ignore.add(r"^hf_px_bitmask_checkpoint")
        model._keys_to_ignore_on_load_unexpected = ignore
        self.decode_in_background = kwargs.get("device_map") is None
        self.pending_decodes = []
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        pending, self.pending_decodes = self.pending_decodes, []
        error = None
        for job in pending:  # wait for every job, even after a failure
            try:
                job.wait()
            except HfPxError as exc:
                error = error or exc
        if error is not None:
            raise error
        return model

    def get_load_operations(self) -> dict:
        return {"dequantize": BitmaskDecode, "deserialize": BitmaskDecode}

    def get_weight_conversions(self) -> list:
        if not self.pre_quantized:
            return []
        return [
            BitmaskConverter(list(names), param, [BitmaskDecode(self)])
            for param, names in self.serialized_names.items()
        ]

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True
