"""Load-time decompression of `bitmask` checkpoints inside plain ``from_pretrained``.

transformers 5 lets a package register a quantization method
(``register_quantization_config`` / ``register_quantizer``). A `bitmask`
checkpoint's ``config.json`` carries ``quantization_config = {"quant_method":
"hf_px_bitmask", ...}``; with hf-px imported, ``from_pretrained`` builds
:class:`~.bitmask_quantizer.HfPxBitmaskQuantizer`, whose load operation turns each
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
``from_pretrained`` does before reading ``config.quantization_config``). This module is
the registry only: the classes live in :mod:`.bitmask_quantizer` and
:mod:`.structured_quantizer`, which only :func:`register` imports, and the names on disk in
:mod:`.constants`, which neither side imports from the other.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from typing import Any

from .constants import QUANT_METHOD

logger = logging.getLogger(__name__)

_REGISTRY_MODULE = "transformers.quantizers.auto"

# re-entrant: importing the registry below runs the post-import hook, which registers
_lock = threading.RLock()
_registered = False


def register() -> None:
    """Register the `hf_px_bitmask` and `hf_px_structured` methods with transformers
    (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        from transformers.quantizers import auto

        if _registered:  # the post-import hook did it while the registry was imported
            return
        from .bitmask_quantizer import HfPxBitmaskConfig, HfPxBitmaskQuantizer

        if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
            auto.register_quantization_config(QUANT_METHOD)(HfPxBitmaskConfig)
        if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
            auto.register_quantizer(QUANT_METHOD)(HfPxBitmaskQuantizer)
        # structured checkpoints (hf_px.checkpoint.structured): the same registry
        from .structured import QUANT_METHOD as STRUCTURED
        from .structured_quantizer import HfPxStructuredConfig, HfPxStructuredQuantizer

        if STRUCTURED not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
            auto.register_quantization_config(STRUCTURED)(HfPxStructuredConfig)
        if STRUCTURED not in auto.AUTO_QUANTIZER_MAPPING:
            auto.register_quantizer(STRUCTURED)(HfPxStructuredQuantizer)
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
