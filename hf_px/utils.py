"""Small facts every layer reads the same way: the Hub's offline switch, lenient JSON
files, which safetensors files hold a checkpoint's weights, an error's first line, and
counting a mask's kept entries (numpy's counts are ~30x torch's bool sum on one CPU
thread, measured), and computing on a float16/bfloat16 model in float32."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"


_TRUE = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """A boolean environment variable, read at call time (tests and users may set it
    after import): 1/true/yes/on in any case is set, anything else is not."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it."""
    return env_flag("HF_HUB_OFFLINE")


def loaded_from_checkpoint(model: torch.nn.Module) -> bool:
    """Whether most of `model`'s weight matrices/kernels (by count) came from a checkpoint.

    ``from_pretrained`` marks every parameter it fills with ``_is_hf_initialized``;
    ``from_config`` or a model built by hand marks none, and a head re-initialised by
    ``ignore_mismatched_sizes`` stays unmarked (the body decides). The mark does not
    survive ``copy.deepcopy``.
    """
    sizes = [
        (p.numel(), bool(getattr(p, "_is_hf_initialized", False)))
        for p in model.parameters()
        if p.dim() > 1
    ]
    total = sum(n for n, _ in sizes)
    return total > 0 and 2 * sum(n for n, marked in sizes if marked) >= total


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def corrupt_file(path: Path, why: str):
    """The one-line error for a checkpoint file that exists but cannot be read (not for a
    missing one: the fix differs)."""
    from .errors import HfPxError

    path = Path(path)
    return HfPxError(
        f"{path.name} in {path.parent.name or path.parent} is corrupt ({why}); "
        "save or download the checkpoint again"
    )


def read_checkpoint_json(path: Path) -> dict[str, Any] | None:
    """A checkpoint's JSON file: None when absent, a one-line error when corrupt."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise corrupt_file(path, f"not valid JSON: {first_line(e)}") from None


def weight_files(directory: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The safetensors files of a checkpoint folder and its index (None when unsharded);
    ``([], None)`` when there are none."""
    directory = Path(directory)
    index_path = directory / SAFE_INDEX_NAME
    if index_path.is_file():
        index = read_checkpoint_json(index_path)
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise corrupt_file(index_path, "no weight_map")
        return sorted(set(index["weight_map"].values())), index
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME], None
    return [], None


def check_weight_files(directory: Path) -> None:
    """Each safetensors file of a local checkpoint has a readable header that covers the
    file (safetensors checks both on open): a truncated or damaged file is named."""
    from safetensors import safe_open

    directory = Path(directory)
    for name in weight_files(directory)[0]:
        path = directory / name
        if not path.is_file():
            continue  # missing: the loader names it
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as e:  # SafetensorError, or OSError from a short read
            raise corrupt_file(path, f"safetensors: {first_line(e)}") from None


def not_found_hint(online_hint: str) -> str:
    """What to do about a model the Hub did not give: offline mode first, else `online_hint`."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set: download it first or pass a local directory"
    return online_hint


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def count_kept(mask: torch.Tensor) -> int:
    """Number of True entries of a bool mask."""
    if mask.device.type == "cpu" and mask.dtype == torch.bool:
        return int(np.count_nonzero(mask.contiguous().numpy()))
    return int(torch.count_nonzero(mask))


def all_kept(mask: torch.Tensor) -> bool:
    """Whether every entry of a bool mask is True."""
    if mask.device.type == "cpu" and mask.dtype == torch.bool:
        return bool(mask.contiguous().numpy().all())
    return bool(mask.all())


def zero_where_pruned(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of `scores` that is exactly +0.0 where `mask` is False (never −0.0, never
    NaN from 0·inf). On CPU a branch-free product does it (5x a `where` on a random
    mask, measured); a NaN it made is redone with `where`."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        given = scores.detach().contiguous().numpy()
        with np.errstate(invalid="ignore"):  # inf·0 is handled below
            out = given * mask.contiguous().numpy()
        out += 0.0  # −0.0 + 0.0 is +0.0
        if not np.isnan(out).any() or np.isnan(given).any():
            return torch.from_numpy(out)
    return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))


def times_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values * mask`` as a new tensor, bit for bit (pruned entries ±0.0); numpy's
    float·bool product is ~3x torch's on one CPU thread (measured)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(values.detach().contiguous().numpy() * mask.contiguous().numpy())
    return values * mask.to(values.dtype)


#: storage dtypes computed in float32: fp16 overflows PX's path sums, and a half model
#: cannot take the float32 pixel_values the data loaders give
HALF_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def float32_compute(model: torch.nn.Module) -> Iterator[None]:
    """Run a block with `model`'s float16/bfloat16 parameters and buffers in float32,
    then cast each back to its own dtype (in place: the Parameter objects stay the same).

    Zeros stay exactly zero both ways, and a half value survives the round trip
    bit for bit; only values the block changes are rounded on the way back.
    """
    tensors = [
        (owner, key, t.dtype)
        for owner in model.modules()
        for store in (owner._parameters, owner._buffers)
        for key, t in store.items()
        if t is not None and t.dtype in HALF_DTYPES
    ]
    _cast(tensors, lambda _: torch.float32)
    try:
        yield
    finally:
        _cast(tensors, lambda dtype: dtype)


@torch.no_grad()
def _cast(tensors: list, to: Any) -> None:
    """Cast each (module, name, dtype) to ``to(dtype)``; a tensor several modules share
    is cast once and stays shared."""
    done: dict[int, torch.Tensor] = {}
    for owner, key, dtype in tensors:
        if key in owner._parameters:
            param = owner._parameters[key]
            param.data = param.data.to(to(dtype))  # the same Parameter: optimizers keep it
            param.grad = None  # a gradient of the other dtype cannot stay on it
        else:
            old = owner._buffers[key]
            if id(old) not in done:
                done[id(old)] = old.to(to(dtype))
            owner._buffers[key] = done[id(old)]
