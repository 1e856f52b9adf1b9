"""`PruningConfig` (saved beside checkpoints) and `PruningResult`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import HfPxError
from .methods import get_method  # the registry is the list of valid method names
from .refs import local_files
from .version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "pruning_config.json"
REPORT_NAME = "sparsity_report.json"


SCOPES = ("global", "layerwise")
# the collapse guard of hf_px.masks.threshold: no tensor below this x the target density
DEFAULT_MIN_DENSITY_RATIO = 0.1


def check_sparsity(sparsity: Any) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise HfPxError(f"sparsity must be a number in (0, 1), got {sparsity!r}") from None
    if not (0.0 < s < 1.0) or math.isnan(s):
        hint = f" (did you mean {s / 100:g}?)" if 1.0 < s < 100.0 else ""
        raise HfPxError(f"sparsity must be a fraction in (0, 1), e.g. 0.9 for 90%; got {s:g}{hint}")
    return s


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


FORMATS = ("dense", "bitmask")  # how a checkpoint stores its weights (hf_px.checkpoint)


@dataclass
class PruningConfig:
    """Everything needed to reproduce a pruning run; saved beside checkpoints.

    The defaults are :func:`hf_px.prune`'s: ``prune(model, batches, config=cfg)``
    with ``cfg = PruningConfig()`` does what ``prune(model, batches)`` does.
    ``rounds=None`` means the method's published default (100 for px and
    synflow, 1 for the one-shot methods); a config that comes back from
    ``prune`` (``result.config``) holds the resolved number. Every field is
    checked on construction with the same one-line errors as ``prune``.
    ``save_pretrained`` / ``from_pretrained`` write and read
    ``pruning_config.json`` (a directory, or a Hub repo for reading).
    """

    method: str = "px"
    sparsity: float = 0.9
    rounds: int | None = None
    scope: str = "global"
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    min_density_ratio: float = DEFAULT_MIN_DENSITY_RATIO
    method_options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    hf_px_version: str = ""

    def __post_init__(self) -> None:
        if not self.hf_px_version:
            self.hf_px_version = __version__
        if not isinstance(self.method, str):
            raise HfPxError(f"method must be a name such as 'px', got {self.method!r}")
        method = get_method(self.method)
        self.sparsity = check_sparsity(self.sparsity)
        if self.rounds is not None and (not _is_int(self.rounds) or self.rounds < 1):
            raise HfPxError(f"rounds must be a positive integer, got {self.rounds!r}")
        if self.scope not in SCOPES:
            raise HfPxError(f"unknown scope {self.scope!r}; choose 'global' or 'layerwise'")
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        self.exclude = list(self.exclude or [])
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise HfPxError(
                    f"invalid --exclude regular expression {pattern!r} ({err}); fix the pattern"
                ) from None
        if not _is_int(self.seed):
            raise HfPxError(f"seed must be an integer, got {self.seed!r}")
        try:
            ratio = float(self.min_density_ratio)
        except (TypeError, ValueError):
            ratio = math.nan
        if not (0.0 <= ratio <= 1.0):
            raise HfPxError("min_density_ratio must lie in [0, 1]")
        self.min_density_ratio = ratio
        for name in ("method_options", "calibration"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict):
                raise HfPxError(f"{name} must be a dict, got {type(value).__name__}")
        method.parse_options(self.method_options)  # a misspelt option is refused here

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        """Keys this version does not know (another hf-px version wrote them: a newer one's
        options, an older one's retired fields such as ``schedule``) warn and are dropped,
        and so are method options the method does not declare here."""
        if not isinstance(data, dict):
            raise HfPxError(f"a pruning config is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "ignoring pruning-config keys %s unknown to this hf-px (written by another "
                "version); upgrade hf-px if a newer one wrote them",
                unknown,
            )
        data = {k: v for k, v in data.items() if k in known}
        options = data.get("method_options")
        if isinstance(options, dict) and isinstance(data.get("method"), str):
            unknown = get_method(data["method"]).options.unknown(options)
            if unknown:
                logger.warning(
                    "ignoring %s options %s unknown to this hf-px (written by another "
                    "version); upgrade hf-px if a newer one wrote them",
                    data["method"],
                    unknown,
                )
                data["method_options"] = {k: v for k, v in options.items() if k not in unknown}
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PruningConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HfPxError(f"{CONFIG_NAME} is not valid JSON ({err}); re-save it") from None
        return cls.from_dict(data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``pruning_config.json`` into `save_directory` (created if missing)."""
        directory = Path(save_directory).expanduser()
        if directory.exists() and not directory.is_dir():
            raise HfPxError(f"{directory} is a file; save_pretrained takes a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> PruningConfig:
        """The config saved in a directory or a Hub repo; `kwargs` override its fields."""
        root = local_files(
            pretrained_model_name_or_path, [CONFIG_NAME], revision=revision, token=token
        )
        path = root / CONFIG_NAME
        if not path.is_file():
            raise HfPxError(
                f"{pretrained_model_name_or_path} has no {CONFIG_NAME}; pass a checkpoint "
                "written by hf-px (or a directory holding PruningConfig.save_pretrained's file)"
            )
        config = cls.from_json(path.read_text())
        return dataclasses.replace(config, **kwargs) if kwargs else config

    def merged(self, **overrides: Any) -> PruningConfig:
        """A copy with every override that is not None applied (``method_options``
        merged key by key), validated; how ``prune``'s keyword arguments meet ``config=``."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "method_options" in given:
            given["method_options"] = {**self.method_options, **given["method_options"]}
        return dataclasses.replace(self, **given)


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
