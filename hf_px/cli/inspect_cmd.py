"""``hf-px inspect``: sparsity, pruning config, format and size of a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..checkpoint import inspect_checkpoint
from ..errors import HfPxError
from ..utils import first_line, not_found_hint
from . import output, parsing
from .resolve import resolve

_PATTERNS = ["*.json", "*.safetensors", "README.md"]


def _local_dir(reference: str) -> Path:
    """A local directory as is; a Hub id → its files (config, safetensors, JSON) in the cache."""
    path = Path(resolve(reference)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HfPxError(f"{reference} is a file; pass a checkpoint directory or a Hub id")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(reference, allow_patterns=_PATTERNS))
    except LocalEntryNotFoundError:
        hint = not_found_hint("check your network or pass a local directory")
        raise HfPxError(f"cannot find {reference!r} locally or on the Hub; {hint}") from None
    except (HfHubHTTPError, ValueError) as e:
        raise HfPxError(
            f"cannot fetch {reference!r} from the Hub ({first_line(e)}); check the id or pass "
            "a local directory"
        ) from None


def run_inspect(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr():
        info = inspect_checkpoint(_local_dir(args.model))
    if args.json:
        output.emit_json({"model": args.model, **info}, sys.stdout)
    else:
        _print(args.model, info)
    return 0


def _print(reference: str, info: dict[str, Any]) -> None:
    say, pct = output.say, output.pct
    arch = ", ".join(info.get("architectures") or []) or info.get("model_type") or "?"
    say(f"{reference}: {arch}, format {info['format']}")
    say(
        f"  sparsity: {pct(info['sparsity'])} ({info.get('sparsity_scope', '')}); "
        f"weights {output.human_size(info['size_bytes'])}, "
        f"folder {output.human_size(info['total_bytes'])}"
    )
    cfg = info.get("pruning_config")
    if cfg:
        say(
            f"  pruned with {cfg.get('method')} to {pct(cfg.get('sparsity'))} "
            f"({cfg.get('rounds')} rounds, {cfg.get('scope')}, seed {cfg.get('seed')})"
        )
    else:
        say("  no pruning_config.json (not written by hf-px)")
    rows = [(n, t) for n, t in info["tensors"].items() if len(t["shape"]) >= 2]
    if rows:
        width = max(len(n) for n, _ in rows)
        say(f"  {'tensor'.ljust(width)}  {'shape':>18}  {'density':>8}  storage")
        for n, t in rows:
            shape = "x".join(str(d) for d in t["shape"])
            say(f"  {n.ljust(width)}  {shape:>18}  {pct(1 - t['sparsity']):>8}  {t['storage']}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px inspect`` and its arguments."""
    p = subparsers.add_parser(
        "inspect",
        help="sparsity, pruning config, format and size of a checkpoint",
        description="Overall and per-tensor sparsity, the pruning config if "
        "present, the storage format and the size on disk.",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    parsing.common(p)
    p.set_defaults(func=run_inspect)
