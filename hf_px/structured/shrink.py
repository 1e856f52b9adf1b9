"""Physical removal of units: gather the kept rows/columns into smaller modules.

:func:`shrink` turns a model whose removed units are merely unused into one whose
tensors no longer have them (the same function, fewer MACs). :func:`resize` gives a
module new shapes without values; the structured checkpoint's load hook uses it on
the freshly built (often meta-device) model before transformers fills the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HfPxError
from .units import UnitGroup


def channel_index(group: UnitGroup, kept_units: torch.Tensor) -> torch.Tensor:
    """Kept unit numbers (sorted) → the channel indices they span."""
    units = kept_units.to(torch.long).reshape(-1, 1)
    return (units * group.width + torch.arange(group.width)).reshape(-1)


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=requires_grad)


def _take(t: torch.Tensor, dim: int, index: torch.Tensor | None, n: int) -> torch.Tensor:
    if index is not None:
        return t.detach().index_select(dim, index.to(t.device)).clone()
    shape = list(t.shape)
    shape[dim] = n
    return torch.empty(shape, dtype=t.dtype, device=t.device)


def resize_output(module: nn.Module, n: int, index: torch.Tensor | None = None) -> None:
    """Keep `n` output channels of a Linear/Conv2d/BatchNorm (`index`: which; None = shapes only)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        for attr in ("weight", "bias"):
            p = getattr(module, attr)
            if p is not None:
                setattr(module, attr, _param(_take(p, 0, index, n), p.requires_grad))
        for attr in ("running_mean", "running_var"):
            b = getattr(module, attr)
            if b is not None:
                setattr(module, attr, _take(b, 0, index, n))
        module.num_features = n
        return
    _check_type(module)
    module.weight = _param(_take(module.weight, 0, index, n), module.weight.requires_grad)
    if module.bias is not None:
        module.bias = _param(_take(module.bias, 0, index, n), module.bias.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features = n
    else:
        module.out_channels = n


def resize_input(module: nn.Module, n: int, index: torch.Tensor | None = None) -> None:
    """Keep `n` input channels of a Linear/Conv2d (ungrouped)."""
    _check_type(module)
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise HfPxError(f"cannot remove input channels of a grouped convolution ({module})")
    module.weight = _param(_take(module.weight, 1, index, n), module.weight.requires_grad)
    if isinstance(module, nn.Linear):
        module.in_features = n
    else:
        module.in_channels = n


def _check_type(module: nn.Module) -> None:
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise HfPxError(f"structured pruning cannot resize a {type(module).__name__}")


def resize_group(
    model: nn.Module, group: UnitGroup, n_units: int, kept: torch.Tensor | None = None
) -> None:
    """Give `group`'s modules `n_units` units: those in `kept` (sorted unit numbers),
    or uninitialised ones of the right shape when `kept` is None."""
    index = channel_index(group, kept) if kept is not None else None
    n = n_units * group.width
    for name in (*group.producers, *group.norms):
        resize_output(model.get_submodule(name), n, index)
    for name in group.consumers:
        resize_input(model.get_submodule(name), n, index)
    if group.kind == "heads":
        attention = model.get_submodule(group.name)
        if hasattr(attention, "num_attention_heads"):
            attention.num_attention_heads = n_units
        # Swin: one column of relative position biases per head
        bias = getattr(attention, "relative_position_bias", None)
        table = getattr(bias, "relative_position_bias_table", None)
        if table is not None:
            heads = kept.to(torch.long) if kept is not None else None
            bias.relative_position_bias_table = _param(
                _take(table, 1, heads, n_units), table.requires_grad
            )


@torch.no_grad()
def shrink(model: nn.Module, groups: list[UnitGroup], kept: dict[str, torch.Tensor]) -> None:
    """Remove every unit whose entry in ``kept[group.name]`` (bool, one per unit) is
    False, in place."""
    for g in groups:
        mask = kept[g.name]
        if mask.shape != (g.size,):
            raise HfPxError(f"{g.name}: kept mask of shape {tuple(mask.shape)}, want ({g.size},)")
        units = torch.nonzero(mask).reshape(-1)
        if units.numel() == g.size:
            continue
        if g.kind == "blocks":
            drop_blocks(model, g, mask)
            continue
        resize_group(model, g, units.numel(), units)


def drop_blocks(model: nn.Module, group: UnitGroup, kept: torch.Tensor) -> None:
    """Delete the removed blocks from their list (the rest renumbered, as a model built
    with fewer layers numbers them) and write the new depth into the model's config:
    ``num_hidden_layers`` (ViT/DeiT) or the stage's entry of ``depths`` (ResNet/ConvNeXt)."""
    gone = {b for b, k in zip(group.producers, kept.tolist(), strict=True) if not k}
    parent_name, _, attr = group.name.rpartition(".")
    container = model.get_submodule(group.name)
    blocks = [m for i, m in enumerate(container) if f"{group.name}.{i}" not in gone]
    setattr(
        model.get_submodule(parent_name),
        attr,
        type(container)(*[blocks] if isinstance(container, nn.ModuleList) else blocks),
    )
    config = model.config
    parts = group.name.split(".")
    if "stages" in parts:  # …stages.<i>.layers
        depths = list(config.depths)
        depths[int(parts[parts.index("stages") + 1])] = len(blocks)
        config.depths = depths
    else:
        config.num_hidden_layers = len(blocks)
        _renumber_stages(config)


def _renumber_stages(config) -> None:
    """A config that names one backbone stage per layer (DINOv2's ``stage_names``) names
    the layers left; its backbone outputs go back to the default, the last layer (they
    named layers that may be gone; a classifier does not read them)."""
    names = getattr(config, "stage_names", None)
    if not (isinstance(names, list) and names[:1] == ["stem"]):
        return
    if not hasattr(config, "set_output_features_output_indices"):
        return
    config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, config.num_hidden_layers + 1)]
    config.set_output_features_output_indices(out_features=None, out_indices=None)
