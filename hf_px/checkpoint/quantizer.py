"""Load-time decompression of `bitmask` checkpoints inside plain ``from_pretrained``.

transformers 5 lets a package register a quantization method
(``register_quantization_config`` / ``register_quantizer``). A `bitmask`
checkpoint's ``config.json`` carries ``quantization_config = {"quant_method":
"hf_px_bitmask", ...}``; with hf-px imported, ``from_pretrained`` builds
:class:`HfPxBitmaskQuantizer`, whose load operation turns each
``(<name>.weight, <name>.weight_hfpx_index)`` pair back into the dense weight
(:func:`hf_px.checkpoint.bitmask.decode`). The config says ``dequantize``, so
transformers drops the quantizer after loading: the model is a plain dense
model (``save_pretrained`` then writes a dense checkpoint).

Without hf-px the method is unknown, transformers skips it with a warning, and
the 1-D value tensors stored under the weights' own names do not fit the
model's shapes (under every transformers version: the keys are the checkpoint
names transformers writes): loading raises instead of falling back to random
weights. A marker tensor whose *name* says what to install is listed in the
load report printed just before that error. Known limit: a caller passing
``ignore_mismatched_sizes=True`` asks transformers to re-initialise mismatched
weights, and gets that (the report still names hf-px).

Registration is lazy so that ``import hf_px`` stays cheap: if transformers'
quantizer registry is already imported it happens at once, otherwise a
post-import hook runs it when transformers imports that registry (which every
``from_pretrained`` does before reading ``config.quantization_config``).
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

QUANT_METHOD = "hf_px_bitmask"
FORMAT_VERSION = 1
INDEX_SUFFIX = "_hfpx_index"
HINT = "pip install hf-px, then import hf_px before from_pretrained"
# Stored as a 1-byte tensor: its name shows up in plain transformers' load report.
MARKER_KEY = f"hf_px_bitmask_checkpoint: {HINT}"
_REGISTRY_MODULE = "transformers.quantizers.auto"

# re-entrant: importing the registry below runs the post-import hook, which registers
_lock = threading.RLock()
_registered = False


def quantization_config_dict() -> dict[str, Any]:
    """What `save_pruned` writes under ``config.json``'s ``quantization_config``."""
    return {
        "quant_method": QUANT_METHOD,
        "format": "bitmask",
        "version": FORMAT_VERSION,
        "requires": HINT,
    }


def _build_classes() -> tuple[type, type, type]:
    # transformers imports stay inside: this runs only once its registry exists
    import torch
    from transformers.core_model_loading import ConversionOps, WeightConverter
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from ..errors import HfPxError
    from .bitmask import decode, decode_in_background

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
            # stateless: transformers deep-copies the converter once per weight, and
            # copying the quantizer with it cost a quarter of a ResNet-50 load (measured)
            return self

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
                    items = [
                        self._decode(v, i, target) for v, i in zip(items, indices, strict=True)
                    ]
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
            # decoded weights are dense: saving them back needs no conversion
            from transformers.core_model_loading import _IdentityOp

            return _IdentityOp()

    class BitmaskConverter(WeightConverter):
        """transformers deep-copies the converter once per weight: a slot-wise copy does the
        same (fresh containers, shared immutable patterns and stateless ops) in a quarter of
        the time, 3 ms of a 45 ms ViT-B load (measured)."""

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

    return HfPxBitmaskConfig, HfPxBitmaskQuantizer, BitmaskDecode


def register() -> None:
    """Register the `hf_px_bitmask` method with transformers (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        from transformers.quantizers import auto

        if _registered:  # the post-import hook did it while the registry was imported
            return
        config_cls, quantizer_cls, _ = _build_classes()
        if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
            auto.register_quantization_config(QUANT_METHOD)(config_cls)
        if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
            auto.register_quantizer(QUANT_METHOD)(quantizer_cls)
        _registered = True
        logger.debug("registered transformers quantization method %r", QUANT_METHOD)


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Post-import hook: runs :func:`register` right after transformers' registry loads."""

    def __init__(self) -> None:
        self._inner: importlib.abc.Loader | None = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                self._inner = spec.loader
                spec.loader = self
                return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._inner.create_module(spec) if self._inner is not None else None

    def exec_module(self, module: Any) -> None:
        assert self._inner is not None
        self._inner.exec_module(module)
        _remove_hook()
        register()


_hook: _RegisterAfterImport | None = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def install() -> None:
    """Make ``from_pretrained`` able to load `bitmask` checkpoints; cheap (imports nothing)."""
    global _hook
    if _registered:
        return
    if _REGISTRY_MODULE in sys.modules:
        register()
        return
    if _hook is None:
        _hook = _RegisterAfterImport()
        sys.meta_path.insert(0, _hook)
