"""Masks as saved state: in the `bitmask` weights' indices or ``pruning_masks.safetensors``,
and `load_pruning`.

The masks are what pruning decided; the weights' zeros are not the same thing (a
kept weight may be exactly 0, and after fine-tuning that difference matters).
So every checkpoint carries them, once, in the :mod:`.bitmask` position code. In a
`bitmask` checkpoint a pruned weight's index lists its mask's kept positions
(:func:`hf_px.checkpoint.bitmask.positions_of` reads it back; the shards'
metadata names those masks), so its masks cost nothing more. A `dense`
checkpoint, and a mask the weights cannot carry, use ``pruning_masks.safetensors``:

* one uint8 tensor per masked parameter, named like the parameter: the bitmask
  *index* of the kept positions (no values: a mask's values are all 1). When
  more than half of a tensor is kept, the pruned positions are stored instead,
  under ``<name>:pruned`` — the code is cheapest for the minority (Elias-Fano at
  density 0.1 costs ≈ 2 + log2 10 ≈ 5.3 bits per listed position, i.e. ≈ 0.53
  bit per weight against 32 for fp32 values);
* in the rare case the codec stores every element (``full``, tiny tensors) the
  values go along under ``<name>:values``;
* the safetensors metadata holds the parameter order (``names``).

Checkpoints written before masks were saved load too: the masks are then
rebuilt as ``weight != 0`` with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..config import CONFIG_NAME, REPORT_NAME, PruningConfig, PruningResult
from ..errors import HfPxError
from ..refs import local_files
from ..utils import SAFE_WEIGHTS_NAME, read_checkpoint_json, weight_files
from . import bitmask
from .constants import INDEX_SUFFIX, MASKS_METADATA, UNITS_NAME

logger = logging.getLogger(__name__)

MASKS_NAME = "pruning_masks.safetensors"
_PRUNED = ":pruned"
_VALUES = ":values"
_FORMAT = "hf_px_masks"


def encode_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: bool mask}`` → the tensors of ``pruning_masks.safetensors``."""
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        m = mask.detach().to("cpu", torch.bool).contiguous()
        kept = int(m.sum())
        invert = kept > m.numel() - kept
        values, index = bitmask.encode((~m if invert else m).to(torch.uint8))
        key = name + (_PRUNED if invert else "")
        out[key] = index
        if bitmask.read_header(index).codec == bitmask.CODEC_FULL:
            out[key + _VALUES] = values
    return out


def decode_masks(tensors: dict[str, torch.Tensor], names: list[str] | None = None) -> dict:
    """Inverse of :func:`encode_masks`, in the order `names` (else sorted)."""
    masks: dict[str, torch.Tensor] = {}
    for key, index in tensors.items():
        if key.endswith(_VALUES):
            continue
        head = bitmask.read_header(index)
        values = tensors.get(key + _VALUES)
        if values is None:
            values = torch.ones(head.count, dtype=torch.uint8)
        bits = bitmask.decode(values, index).to(torch.bool)
        if key.endswith(_PRUNED):
            masks[key[: -len(_PRUNED)]] = ~bits
        else:
            masks[key] = bits
    order = [n for n in (names or []) if n in masks]
    order += sorted(set(masks) - set(order))
    return {n: masks[n] for n in order}


def masks_metadata(keys_of: dict[str, str | None]) -> str:
    """A shard's :data:`.constants.MASKS_METADATA`: ``{mask name: key coding it in this
    shard, or None}`` as a JSON list in the masks' order — ``"name"`` when the key is the
    name, ``["name", "key"]`` when another, ``["name"]`` when none (headers stay small)."""
    entries: list = []
    for name, key in keys_of.items():
        entries.append(name if key == name else [name] if key is None else [name, key])
    return json.dumps(entries, separators=(",", ":"))


def read_masks_metadata(text: str) -> dict[str, str | None]:
    """Inverse of :func:`masks_metadata`."""
    keys_of: dict[str, str | None] = {}
    for entry in json.loads(text):
        if isinstance(entry, str):
            keys_of[entry] = entry
        else:
            keys_of[entry[0]] = entry[1] if len(entry) > 1 else None
    return keys_of


def write_masks(
    directory: str | os.PathLike, masks: dict[str, torch.Tensor], names: list[str] | None = None
) -> Path:
    """Write ``pruning_masks.safetensors``; `names`, the order of all the checkpoint's masks,
    may name more than `masks` holds (the others are in the weights' indices)."""
    from safetensors.torch import save_file

    path = Path(directory) / MASKS_NAME
    metadata = {"format": "pt", _FORMAT: "1", "names": json.dumps(names or list(masks))}
    save_file(encode_masks(masks), str(path), metadata=metadata)
    return path


def read_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The masks ``pruning_masks.safetensors`` holds, in the saved order."""
    return _read_masks_file(path)[0]


def _read_masks_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise HfPxError(f"cannot read {Path(path).name} ({err}); re-save the checkpoint") from None
    if metadata.get(_FORMAT) != "1":
        raise HfPxError(f"{Path(path).name} is not an hf-px masks file; re-save the checkpoint")
    names = json.loads(metadata.get("names", "[]"))
    return decode_masks(tensors, names), names


def load_pruning(
    model_dir_or_id: str | os.PathLike,
    *,
    model: Any = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> PruningResult:
    """The :class:`PruningResult` saved with a checkpoint (a directory or a Hub id).

    Masks, :class:`PruningConfig` and per-tensor report (``result.report()``) as
    :func:`hf_px.save_pruned` wrote them; Hub repos are fetched through
    `huggingface_hub` (``revision``, ``token`` as there). A checkpoint without
    ``pruning_masks.safetensors`` and without masks in its `bitmask` weights'
    indices (written by an older hf-px) gets masks rebuilt
    as ``weight != 0`` — from `model` when given (its prunable weights minus the
    config's ``exclude``), else from the weight files, for the tensors its
    sparsity report lists — and a warning, since a kept weight that is exactly
    0 then counts as pruned.
    """
    root = local_files(
        model_dir_or_id,
        [CONFIG_NAME, REPORT_NAME, MASKS_NAME, UNITS_NAME],
        revision=revision,
        token=token,
    )
    if not (root / CONFIG_NAME).is_file() and (root / UNITS_NAME).is_file():
        raise HfPxError(
            f"{model_dir_or_id} is a structured checkpoint (`hf-px prune-structured`): its "
            f"removed units are gone, not masked; {UNITS_NAME} lists the kept ones "
            "(hf_px.checkpoint.structured.load_units, or load_result with the loaded model)"
        )
    if not (root / CONFIG_NAME).is_file():
        raise HfPxError(
            f"{model_dir_or_id} has no {CONFIG_NAME}; pass a checkpoint written by hf_px.save_pruned"
        )
    config = PruningConfig.from_pretrained(root)
    report = _read_report(root)
    masks = _saved_masks(root, model_dir_or_id, revision, token)
    if masks is None:
        logger.warning(
            "%s has no %s (written by an older hf-px); using the weights' zeros as masks, so "
            "a kept weight that is exactly 0 counts as pruned — re-save it to keep the masks",
            model_dir_or_id,
            MASKS_NAME,
        )
        if model is not None:
            masks = _masks_from_model(model, config)
        else:
            root = local_files(
                model_dir_or_id, ["*.json", "*.safetensors"], revision=revision, token=token
            )
            masks = _masks_from_weights(root, report)
    _check_against_report(masks, report, model_dir_or_id)
    return PruningResult(masks=masks, config=config)


def _saved_masks(
    root: Path, ref: Any, revision: str | None, token: str | bool | None
) -> dict[str, torch.Tensor] | None:
    """The masks from the masks file and the `bitmask` weights' indices; None when neither
    holds any (a checkpoint from before masks were saved)."""
    masks: dict[str, torch.Tensor] = {}
    names: list[str] | None = None
    if (root / MASKS_NAME).is_file():
        masks, names = _read_masks_file(root / MASKS_NAME)
        if set(names) <= set(masks):
            return masks
    weights = local_files(ref, ["*.json", "*.safetensors"], revision=revision, token=token)
    coded, order = _masks_from_indices(weights, set(masks))
    if order is None:
        if names is not None:
            raise HfPxError(
                f"{ref}: {MASKS_NAME} names masks that the weight files do not hold; "
                "download the checkpoint completely or re-save it"
            )
        return None
    masks.update(coded)
    order = names or order  # the masks file, when there is one, names every mask too
    return _in_order(
        masks,
        order,
        f"{ref}: no mask of {{!r}} in the weight files or {MASKS_NAME}; "
        "download the checkpoint completely or re-save it",
    )


def _in_order(found: dict[str, torch.Tensor], order: list[str], missing: str) -> dict:
    """`found` in `order`; the first name it lacks raises, `missing` formatted with it."""
    for name in order:
        if name not in found:
            raise HfPxError(missing.format(name))
    return {n: found[n] for n in order}


def _masks_from_indices(
    root: Path, known: set[str]
) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The masks the `bitmask` indices code (those in `known` aside) and the saved order of
    all masks; order None when no weight file names masks (dense, or an older hf-px)."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(root)[0]
    masks: dict[str, torch.Tensor] = {}
    order = None
    for fname in files:
        if not (root / fname).is_file():
            raise HfPxError(f"the checkpoint lacks {fname}; download it completely")
        try:
            with safe_open(str(root / fname), framework="pt") as f:
                listed = (f.metadata() or {}).get(MASKS_METADATA)
                if listed is None:
                    continue
                keys_of = read_masks_metadata(listed)
                order = list(keys_of)
                for name, key in keys_of.items():
                    if key is not None and name not in known:
                        masks[name] = bitmask.positions_of(f.get_tensor(key + INDEX_SUFFIX))
        except (SafetensorError, OSError) as err:
            raise HfPxError(f"cannot read {fname} ({err}); re-save the checkpoint") from None
    return masks, order


def _read_report(root: Path) -> dict[str, Any] | None:
    return read_checkpoint_json(root / REPORT_NAME)


def _masks_from_model(model: Any, config: PruningConfig) -> dict[str, torch.Tensor]:
    from ..adapters import get_adapter

    params = get_adapter(model).prunable_parameters(model, config.exclude)
    return {n: (p.detach() != 0).cpu() for n, p in params.items()}


def _masks_from_weights(root: Path, report: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not report or not report.get("per_tensor"):
        raise HfPxError(
            f"the checkpoint has neither {MASKS_NAME} nor a {REPORT_NAME}; pass model= "
            "(the loaded model) so that the masks can be rebuilt from its weights"
        )
    wanted = list(report["per_tensor"])
    files = weight_files(root)[0] or [SAFE_WEIGHTS_NAME]  # none: the loop names the missing file
    found: dict[str, torch.Tensor] = {}
    for fname in files:
        if not (root / fname).is_file():
            raise HfPxError(f"the checkpoint lacks {fname}; download it completely")
        with safe_open(str(root / fname), framework="pt") as f:
            keys = set(f.keys())
            for name in wanted:
                if name not in keys:
                    continue
                t = f.get_tensor(name)
                if name + INDEX_SUFFIX in keys:
                    t = bitmask.decode(t, f.get_tensor(name + INDEX_SUFFIX))
                found[name] = t != 0
    return _in_order(
        found,
        wanted,
        "the weight files hold no tensor {!r} of the sparsity report; pass "
        "model= (the loaded model) so that the masks can be rebuilt from its weights",
    )


def _check_against_report(masks: dict, report: dict[str, Any] | None, ref: Any) -> None:
    per_tensor = (report or {}).get("per_tensor")
    if not per_tensor:
        return
    for name, mask in masks.items():
        entry = per_tensor.get(name)
        if entry is not None and list(entry["shape"]) != list(mask.shape):
            raise HfPxError(
                f"{ref}: the mask of {name!r} has shape {list(mask.shape)} but the sparsity "
                f"report says {entry['shape']}; re-save the checkpoint"
            )


__all__ = ["MASKS_NAME", "decode_masks", "encode_masks", "load_pruning", "read_masks"]
