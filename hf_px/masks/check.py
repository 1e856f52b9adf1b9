"""The one check a set of masks passes before anything applies, saves or scores with it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import HfPxError


def check_masks(
    masks: Mapping[str, torch.Tensor],
    params: Mapping[str, nn.Parameter],
    *,
    fix: str,
    kind: str = "parameter of the model",
) -> dict[str, torch.Tensor]:
    """`masks` as bool tensors on their parameters' devices.

    Every name must be one of `params` and every shape must match, so masks made for
    another architecture fail here instead of broadcasting; `fix` ends each message.
    """
    if not isinstance(masks, Mapping):
        raise HfPxError("masks must be a dict {parameter name: bool tensor}, e.g. result.masks")
    out = {}
    for name, mask in masks.items():
        p = params.get(name)
        if p is None:
            raise HfPxError(f"mask for {name!r} names no {kind}; {fix}")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(p.shape):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise HfPxError(
                f"mask for {name!r} has shape {shape}, expected {tuple(p.shape)}; {fix}"
            )
        out[name] = mask.to(device=p.device, dtype=torch.bool)
    return out
