"""Decoding one image value (PIL, bytes/path dict, array) into an RGB PIL image."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ..errors import HfPxError


def to_rgb(image):
    """RGB PIL image: grey/palette/16-bit converted, transparency composited on white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if image.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(value: Any, where: str):
    """An RGB PIL image from a dataset's image value; `where` names it in the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            if value.get("path"):
                where = str(value["path"])
            if value.get("bytes"):
                image = Image.open(io.BytesIO(value["bytes"]))
            else:
                image = Image.open(value["path"])
        elif isinstance(value, np.ndarray | list | torch.Tensor):
            arr = np.asarray(value)
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # C×H×W → H×W×C
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.dtype != np.uint8:
                scale = 255.0 if arr.max() <= 1.0 else 1.0
                arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
            image = Image.fromarray(arr)
        else:
            raise HfPxError(
                f"{where}: the image column holds {type(value).__name__}, not an image; "
                "name the image column with --image-column"
            )
        image.load()
        return to_rgb(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, TypeError) as err:
        raise HfPxError(f"cannot read image {where} ({err}); remove or replace that file") from None
