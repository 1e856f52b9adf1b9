"""Small facts every layer reads the same way: the Hub's offline switch, lenient JSON
files, which safetensors files hold a checkpoint's weights, and an error's first line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but at call time (tests and
    users may set it after import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_checkpoint_json(path: Path) -> dict[str, Any] | None:
    """A checkpoint's JSON file: None when absent, a one-line error when corrupt."""
    from .errors import HfPxError

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise HfPxError(f"{path.name} is not valid JSON; re-save the checkpoint") from None


def weight_files(directory: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The safetensors files of a checkpoint folder and its index (None when unsharded);
    ``([], None)`` when there are none."""
    directory = Path(directory)
    index_path = directory / SAFE_INDEX_NAME
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        return sorted(set(index["weight_map"].values())), index
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME], None
    return [], None


def not_found_hint(online_hint: str) -> str:
    """What to do about a model the Hub did not give: offline mode first, else `online_hint`."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set: download it first or pass a local directory"
    return online_hint


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
