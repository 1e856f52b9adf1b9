"""Read a saved checkpoint directory: format, per-tensor sparsity, size on disk, pruning config.

Used by ``hf-px inspect``. Reads safetensors headers and, for dense tensors,
the tensors themselves (to count zeros); never imports or runs model code.
A tensor's sparsity is the fraction of its elements equal to 0 (for `bitmask`
tensors: the elements not stored, which are exactly +0.0, and the stored zeros of
a weight whose index codes its mask, read from its values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME, REPORT_NAME
from ..errors import HfPxError
from ..utils import check_weight_files, read_checkpoint_json, weight_files
from . import bitmask
from .constants import INDEX_SUFFIX, MARKER_KEY, MASKS_METADATA, QUANT_METHOD
from .state import read_masks_metadata

_DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16}


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Describe the checkpoint in directory `path` as a JSON-able dict.

    Keys: ``format`` ("dense" | "bitmask"), ``model_type``, ``weight_files``,
    ``size_bytes`` (weight files), ``total_bytes`` (all files), ``num_elements``,
    ``sparsity`` (over the pruned tensors when a sparsity report is present, else
    over all tensors of rank ≥ 2), ``tensors`` ({name: shape, dtype, numel,
    zeros, sparsity, storage, stored_bytes}), ``pruning_config`` (or None).
    """

    root = Path(path).expanduser()
    if not (root / "config.json").is_file():
        raise HfPxError(f"{path} is not a saved model directory (no config.json)")
    config = read_checkpoint_json(root / "config.json") or {}
    qc = config.get("quantization_config") or {}
    fmt = "bitmask" if qc.get("quant_method") == QUANT_METHOD else "dense"
    files = _weight_files(root)
    check_weight_files(root)
    tensors: dict[str, dict[str, Any]] = {}
    for fname in files:
        tensors.update(_describe_file(root / fname))
    report = read_checkpoint_json(root / REPORT_NAME)
    pruned = _pruned_tensors(tensors, (report or {}).get("per_tensor", {}))
    scope = pruned or {k for k, v in tensors.items() if len(v["shape"]) >= 2}
    n = sum(tensors[k]["numel"] for k in scope)
    z = sum(tensors[k]["zeros"] for k in scope)
    all_files = [p for p in root.rglob("*") if p.is_file()]
    return {
        "format": fmt,
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "weight_files": files,
        "size_bytes": sum((root / f).stat().st_size for f in files),
        "total_bytes": sum(p.stat().st_size for p in all_files),
        "num_elements": sum(v["numel"] for v in tensors.values()),
        "sparsity": z / n if n else 0.0,
        "sparsity_scope": "pruned tensors" if pruned else "tensors of rank >= 2",
        "tensors": tensors,
        "pruning_config": read_checkpoint_json(root / CONFIG_NAME),
    }


def _describe_file(path: Path) -> dict[str, dict[str, Any]]:
    """Per stored tensor of one safetensors file: shape, dtype, numel, zeros, sparsity,
    storage and stored bytes (a bitmask tensor described from its index)."""
    from safetensors import safe_open

    tensors: dict[str, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        # these indices list kept positions, a kept weight that is 0 among them
        coding = read_masks_metadata((f.metadata() or {}).get(MASKS_METADATA, "[]"))
        mask_coded = {key for key in coding.values() if key is not None}
        for key in sorted(keys):
            if key == MARKER_KEY or key.endswith(INDEX_SUFFIX):
                continue
            sl = f.get_slice(key)
            dtype = sl.get_dtype()
            idx_key = key + INDEX_SUFFIX
            if idx_key in keys:
                idx = f.get_tensor(idx_key)
                head = bitmask.read_header(idx)
                shape = list(head.shape)
                numel = head.numel
                if head.codec == bitmask.CODEC_FULL:  # every element stored, zeros too
                    zeros = int((f.get_tensor(key) == 0).sum())
                elif key in mask_coded:
                    zeros = numel - head.count + int((f.get_tensor(key) == 0).sum())
                else:
                    zeros = numel - head.count
                width = _DTYPE_BITS.get(dtype, 8) // 8
                stored_bytes = sl.get_shape()[0] * width + idx.numel()
                storage = head.codec_name
            else:
                t = f.get_tensor(key)
                shape = list(t.shape)
                numel = t.numel()
                zeros = int((t == 0).sum()) if t.numel() else 0
                stored_bytes = numel * t.element_size()
                storage = "dense"
            tensors[key] = {
                "shape": shape,
                "dtype": dtype,
                "numel": numel,
                "zeros": zeros,
                "sparsity": zeros / numel if numel else 0.0,
                "storage": storage,
                "stored_bytes": stored_bytes,
            }
    return tensors


def _pruned_tensors(tensors: dict[str, dict], per_tensor: dict[str, dict]) -> set[str]:
    """The stored tensors the sparsity report describes.

    The report names parameters as the model does; a `dense` checkpoint stores
    them under transformers' original (checkpoint) names, which may differ. Then
    each report entry is matched to an unused stored tensor with the same shape
    and the same number of zeros — any such tensor gives the same totals. An
    entry without a match (weights changed since) means no scope: empty set.
    """
    if not per_tensor:
        return set()
    if set(per_tensor) <= set(tensors):
        return set(per_tensor)
    free: dict[tuple, list[str]] = {}
    for name, info in tensors.items():
        free.setdefault((tuple(info["shape"]), info["zeros"]), []).append(name)
    found = set()
    for entry in per_tensor.values():
        bucket = free.get((tuple(entry.get("shape", ())), entry.get("pruned")))
        if not bucket:
            return set()
        found.add(bucket.pop())
    return found


def _weight_files(root: Path) -> list[str]:
    files, _ = weight_files(root)
    if files:
        return files
    if any(root.glob("*.bin")):
        raise HfPxError(
            f"{root} has only pickle (.bin) weights; hf-px inspect reads safetensors only"
        )
    raise HfPxError(f"{root} has no model.safetensors; not a saved checkpoint")
