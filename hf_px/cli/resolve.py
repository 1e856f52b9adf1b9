"""Model references on the command line: shipped aliases, names, and loading."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..loading import load_model
from ..refs import is_local

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# short names for the models hf-px ships (usable wherever MODEL is expected)
SHIPPED = {"px-digits-resnet": ASSETS / "digits-resnet"}


def resolve(reference: str) -> str:
    """A shipped alias → its folder; anything else unchanged (Hub id or path)."""
    if reference in SHIPPED and not Path(reference).exists():
        return str(SHIPPED[reference])
    return reference


def is_shipped(reference: str) -> bool:
    """Whether `reference` names (or is the folder of) a model hf-px ships."""
    try:
        target = Path(resolve(reference)).expanduser().resolve()
    except OSError:
        return False
    return any(target == p.resolve() for p in SHIPPED.values())


def model_name(reference: str) -> str:
    """The last component of a Hub id or path: ``google/vit-base`` → ``vit-base``."""
    if reference in SHIPPED:
        return reference
    name = Path(str(reference).rstrip("/\\")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def sparsity_tag(sparsity: float) -> str:
    """0.9 → ``90``, 0.975 → ``97.5``."""
    return f"{round(100 * sparsity, 4):g}"


def default_output_dir(reference: str, sparsity: float) -> Path:
    return Path(f"{model_name(reference)}-px{sparsity_tag(sparsity)}")


def load(reference: str, args: Any = None) -> tuple[Any, Any]:
    """(model, image processor or None) through :func:`hf_px.loading.load_model`."""
    return load_model(
        resolve(reference),
        allow_pickle=bool(getattr(args, "allow_pickle", False)),
        trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
    )


def source_info(reference: str) -> dict[str, str]:
    """``{"model_id"}`` for a Hub id, ``{"local_path"}`` for a folder (never in files)."""
    resolved = resolve(reference)
    if is_local(resolved):
        return {"local_path": str(Path(resolved).expanduser())}
    return {"model_id": reference}


def size_on_disk(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
