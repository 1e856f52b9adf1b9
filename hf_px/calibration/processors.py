"""Image processors: the model's own, or the documented default, and image-size parsing."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import HfPxError
from ..utils import first_line

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224  # transformers' default for configs without `image_size` (ResNet)


def image_size_of(size: Any) -> tuple[int, int]:
    """(height, width) from a config's ``image_size``: an int, a pair, a
    ``{"height", "width"}`` dict, or None for transformers' default."""
    if size is None:
        size = DEFAULT_IMAGE_SIZE
    if isinstance(size, dict):
        size = (size.get("height", DEFAULT_IMAGE_SIZE), size.get("width", DEFAULT_IMAGE_SIZE))
    if isinstance(size, list | tuple):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def default_image_processor(config: Any = None, *, image_size: int | None = None):
    """The documented default when a model ships no image processor.

    Resize (bilinear) to ``image_size`` — else the model config's ``image_size``,
    else 224 — square, rescale to [0, 1], normalise with the ImageNet mean/std
    (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): the statistics most
    `transformers` image classifiers were trained with. A `transformers`
    ViT image processor, so it can be saved beside a checkpoint.
    """
    from transformers.image_utils import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        PILImageResampling,
    )

    size = image_size if image_size is not None else getattr(config, "image_size", None)
    height, width = image_size_of(size)
    if height < 1 or width < 1:
        raise HfPxError(f"image size must be positive, got {size!r}")
    try:  # transformers >= 5 without torchvision: the PIL backend, without a warning
        from transformers import ViTImageProcessorPil as processor_class
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as processor_class
    return processor_class(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def load_image_processor(
    model: str | os.PathLike, *, revision: str | None = None, trust_remote_code: bool = False
):
    """The model's own `AutoImageProcessor`, or None when it has none.

    A local directory without ``preprocessor_config.json`` gives None without
    touching the network, and an unreadable one is an error naming the file; a Hub
    id is tried through the normal cache (so it works offline for a cached model)
    and gives None when absent or unreachable. A processor whose code needs a
    package that is not installed gives None too (the caller uses the default).
    """
    from transformers import AutoImageProcessor

    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        if not (path / "preprocessor_config.json").is_file():
            return None
        try:
            return AutoImageProcessor.from_pretrained(
                str(path), trust_remote_code=trust_remote_code
            )
        except ImportError as err:
            return _no_processor(model, err)
        except (OSError, ValueError, KeyError) as err:
            raise HfPxError(
                f"cannot read {path / 'preprocessor_config.json'} ({err}); fix or delete it"
            ) from None
    try:
        return AutoImageProcessor.from_pretrained(
            os.fspath(model), revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, ImportError) as err:  # not found, offline, no config
        return _no_processor(model, err)


def _no_processor(model, err: BaseException) -> None:
    logger.info("no image processor for %s (%s); using the default", model, first_line(err))
    return None
