"""The typed records the CLI, `save_pruned` and the card pass one another.

`Evaluation` names each stage once (dense, pruned, fine-tuned); `from_mapping` is the one
place that still reads the ``*_before``/``*_after`` spelling of `hf-px prune --eval`'s
JSON and of reports written before these records. `CalibrationRecord` is the data the
scores were computed on, saved in ``pruning_config.json`` under ``calibration``;
`FinetuneRecipe` is what `hf-px finetune` ran, saved inside it under
``calibration["finetune"]`` (where earlier versions put it, so their files read the
same). The files hold the dicts; everything in between passes the records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# the spelling `hf-px prune --eval` prints, and reports written before these records hold
_OLD_NAMES = {
    "accuracy_before": "accuracy_dense",
    "accuracy_after": "accuracy_pruned",
    "loss_before": "loss_dense",
    "loss_after": "loss_pruned",
}


@dataclass(frozen=True)
class Evaluation:
    """Top-1 accuracy and mean cross-entropy on one labelled set at each stage measured
    (None: not measured). `dataset` is a public name (a Hub id or a folder's last part)."""

    dataset: str | None = None
    split: str | None = None
    num_samples: int | None = None
    accuracy_dense: float | None = None
    loss_dense: float | None = None
    accuracy_pruned: float | None = None
    loss_pruned: float | None = None
    accuracy_finetuned: float | None = None
    loss_finetuned: float | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Evaluation:
        """From a dict in either spelling (a new name wins over its old one); other keys
        (nested per-stage dicts, timings) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        picked = {_OLD_NAMES[k]: v for k, v in values.items() if k in _OLD_NAMES}
        picked.update({k: v for k, v in values.items() if k in fields and v is not None})
        return cls(**{k: v for k, v in picked.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The measured fields (None left out): what ``sparsity_report.json`` records."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a pruned checkpoint was fine-tuned with its masks fixed (None: not recorded;
    `hf-px finetune` records every field, the Python API may record fewer)."""

    dataset: str | None = None
    split: str | None = None
    num_samples: int | None = None
    epochs: int | None = None
    steps: int | None = None
    learning_rate: float | None = None
    schedule: str | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    num_processes: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    bf16: bool | None = None
    seed: int | None = None
    trainer: str | None = None

    @classmethod
    def from_mapping(cls, values: Any) -> FinetuneRecipe | None:
        """From a saved ``calibration["finetune"]`` (keys it does not know are dropped);
        None when there is none."""
        if not isinstance(values, dict):
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        """The recorded fields, as ``pruning_config.json`` and ``hf-px finetune --json``
        hold them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class CalibrationRecord:
    """The images a checkpoint's scores were computed on (None: not recorded). `dataset`
    is a public name (a Hub id or a folder's last part); `hub_id` a Hub dataset id when
    the name alone does not say it; `finetune` what `hf-px finetune` later ran on it."""

    dataset: str | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str | None = None
    num_samples: int | None = None
    examples_per_class: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    batchnorm_recalibrated: bool | None = None
    finetune: FinetuneRecipe | None = None

    @classmethod
    def from_mapping(cls, values: Any) -> CalibrationRecord:
        """From a saved ``calibration`` dict (keys it does not know are dropped; an empty
        or missing one is the empty record)."""
        if isinstance(values, CalibrationRecord):
            return values
        if not isinstance(values, dict):
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)} - {"finetune"}
        picked = {k: v for k, v in values.items() if k in fields and v is not None}
        return cls(**picked, finetune=FinetuneRecipe.from_mapping(values.get("finetune")))

    def to_dict(self) -> dict[str, Any]:
        """The recorded fields as ``pruning_config.json`` holds them."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "finetune" and getattr(self, f.name) is not None
        }
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out
