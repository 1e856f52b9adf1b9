"""Loading the *source* model: an image classifier and its image processor, safely.

Safetensors only unless the caller allows pickle, remote code only when trusted, and
a one-line :class:`~hf_px.errors.HfPxError` for a model that is not an image
classifier, cannot be found, or has only pickle weights. `bitmask` checkpoints load
too: ``import hf_px`` (which importing this module implies) registers their decoder
with transformers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from .calibration import load_image_processor
from .errors import HfPxError
from .utils import check_weight_files, first_line, not_found_hint, read_checkpoint_json


def load_model(
    name_or_path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load an image classifier (eval mode) and its image processor (or None).

    Reads safetensors only unless ``allow_pickle`` (a ``.bin`` checkpoint runs
    pickle code); remote code only with ``trust_remote_code``. Dense and
    `bitmask` checkpoints both load (hf-px registers the decoder on import).
    """
    name = str(name_or_path)
    config = _load_config(name, trust_remote_code)
    from transformers import AutoModelForImageClassification

    mapping = AutoModelForImageClassification._model_mapping
    auto_map = getattr(config, "auto_map", None) or {}
    if type(config) not in mapping and "AutoModelForImageClassification" not in auto_map:
        raise HfPxError(
            f"{name} is a {getattr(config, 'model_type', '?')!r} model, not an image classifier; "
            "pass an image-classification checkpoint"
        )
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    local = Path(name).expanduser()
    if local.is_dir():
        check_weight_files(local)
    try:
        # no request to the Hub's safetensors-conversion bot on our users' behalf
        with _env("DISABLE_SAFETENSORS_CONVERSION", "1"):
            model = AutoModelForImageClassification.from_pretrained(name, **kwargs)
    except Exception as e:
        if type(e).__name__ == "SafetensorError":  # a damaged download from the Hub
            raise HfPxError(
                f"a weight file of {name} is corrupt ({first_line(e)}); download it again"
            ) from None
        if not isinstance(e, OSError):
            raise
        if not allow_pickle and _has_pickle_weights(name, str(e)):
            raise HfPxError(
                f"{name} has no safetensors weights, only pickle (.bin) ones, which can run "
                "arbitrary code when loaded; pass --allow-pickle if you trust it"
            ) from None
        raise HfPxError(f"cannot load weights of {name}: {first_line(e)}") from None
    model.eval()
    return model, load_image_processor(name, trust_remote_code=trust_remote_code)


def _load_config(name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    local = Path(name).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise HfPxError(f"{name} is not a model directory (no config.json)")
    if local.is_dir():  # a damaged config is named as such, not as missing
        read_checkpoint_json(local / "config.json")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError:
        if local.exists():
            raise HfPxError(f"{name} is not a model directory (no config.json)") from None
        hint = not_found_hint("check the model id, your network, or pass a local directory")
        raise HfPxError(f"cannot find model {name!r} locally or on the Hub; {hint}") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise HfPxError(
                f"{name} needs custom code from its repository; pass --trust-remote-code "
                "if you trust it"
            ) from None
        raise HfPxError(f"cannot read the config of {name}: {first_line(e)}") from None


@contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _has_pickle_weights(name: str, message: str) -> bool:
    local = Path(name).expanduser()
    if local.is_dir():
        return any(local.glob("*.bin")) and not any(local.glob("*.safetensors"))
    # transformers: "... cannot be loaded with `safetensors`" (a Hub repo without them)
    return "cannot be loaded with `safetensors`" in message
