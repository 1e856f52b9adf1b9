"""`PruningConfig` (saved beside checkpoints) and `PruningResult`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import HfPxError

CONFIG_NAME = "pruning_config.json"
REPORT_NAME = "sparsity_report.json"

FORMATS = ("dense", "bitmask")  # how a checkpoint stores its weights (hf_px.checkpoint)


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
