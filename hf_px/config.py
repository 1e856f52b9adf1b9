"""`PruningConfig` (saved beside checkpoints) and `PruningResult`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import HfPxError

CONFIG_NAME = "pruning_config.json"
REPORT_NAME = "sparsity_report.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def local_files(
    ref: str | os.PathLike,
    patterns: list[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local directory holding `ref`'s files that match `patterns`.

    A directory is used as it is; a Hub model id is fetched through
    `huggingface_hub` (only the matching files, into the normal cache, so it
    works offline for a cached repo). Which of the files exist is the caller's
    to check.
    """
    path = Path(os.fspath(ref)).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(ref)
    if path.exists() or text.startswith((".", "/", "~")) or not _REPO_ID.match(text):
        raise HfPxError(f"{text} is not a directory or a Hub model id; check the path")
    from huggingface_hub import errors, snapshot_download

    try:
        return Path(
            snapshot_download(text, revision=revision, token=token, allow_patterns=patterns)
        )
    except errors.RepositoryNotFoundError:
        raise HfPxError(
            f"no model {text!r} on the Hub (or it is private); check the id or set HF_TOKEN"
        ) from None
    except errors.RevisionNotFoundError:
        raise HfPxError(f"{text!r} has no revision {revision!r}; check --revision") from None
    except errors.LocalEntryNotFoundError:
        raise HfPxError(
            f"{text!r} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE?); "
            "download it once online, or pass a local directory"
        ) from None
    except (errors.HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HfPxError(f"cannot download {text!r} from the Hub ({first}); retry later") from None


@dataclass
class PruningConfig:
    """Everything needed to reproduce a pruning run; round-trips to JSON.

    `rounds=None` in the Python API means "the method's published default"
    (100 for px and synflow, 1 for the one-shot methods); the resolved number
    is stored here.
    """

    method: str = "px"
    sparsity: float = 0.9
    rounds: int = 100
    scope: str = "global"
    schedule: str = "exponential"
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    min_density_ratio: float = 0.0
    method_options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    hf_px_version: str = ""

    def __post_init__(self) -> None:
        if not self.hf_px_version:
            from . import __version__

            self.hf_px_version = __version__
        self.exclude = list(self.exclude)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HfPxError(f"unknown pruning-config keys {unknown}; upgrade hf-px or remove them")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PruningConfig:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PruningConfig:
        return cls.from_json((Path(directory) / CONFIG_NAME).read_text())


@dataclass
class PruningResult:
    """What `prune` did: boolean masks (True = kept) by parameter name."""

    masks: dict[str, torch.Tensor]
    config: PruningConfig
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def num_prunable(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over the prunable weights."""
        total = self.num_prunable
        return self.num_pruned / total if total else 0.0

    @property
    def per_tensor_sparsity(self) -> dict[str, float]:
        return {n: float((~m).sum()) / m.numel() for n, m in self.masks.items()}

    def report(self) -> dict[str, Any]:
        """JSON-able sparsity report saved beside checkpoints."""
        return {
            "sparsity": self.sparsity,
            "requested_sparsity": self.config.sparsity,
            "num_prunable": self.num_prunable,
            "num_pruned": self.num_pruned,
            "per_tensor": {
                n: {
                    "shape": list(m.shape),
                    "numel": m.numel(),
                    "pruned": int((~m).sum()),
                    "sparsity": float((~m).sum()) / m.numel(),
                }
                for n, m in self.masks.items()
            },
        }
