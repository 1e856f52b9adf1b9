"""Structured checkpoints: the physically smaller model, loadable with ``from_pretrained``.

Two layouts, chosen by what the model's own config can say:

* **plain** — every group of a config field has the same width (ViT/DeiT: one
  ``intermediate_size`` for all MLPs; one head count, with ``head_dim`` written
  explicitly since it no longer equals ``hidden_size / heads``). ``config.json``
  gets the new widths and the directory is an ordinary transformers checkpoint:
  plain ``from_pretrained`` and ``pipeline()`` work without hf-px.
* **hf_px_structured** — anything else (different widths per layer; every ResNet
  and ConvNeXt, whose internal widths are fixed ratios of the stage width in their
  configs). ``config.json`` carries ``quantization_config = {"quant_method":
  "hf_px_structured", "widths": {group: units kept}, ...}``; after ``import hf_px``
  the registered quantizer (:mod:`.structured_quantizer`) resizes the freshly built
  model's modules before transformers fills them. Without hf-px the method is
  unknown to transformers and the smaller tensors do not fit the dense model:
  loading raises (never random weights); the load report names a marker tensor
  that says to install hf-px.

Both write ``structured_units.json``: the method, target and, per group, the kept
unit numbers of the dense model, the MACs/parameters before and after, and the
latency when measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..card.records import CalibrationRecord, Evaluation
from ..errors import HfPxError
from ..refs import scrub_paths
from ..structured import StructuredResult, shrink
from ..structured.units import UnitGroup, find_units, fixed_blocks
from .constants import UNITS_NAME
from .save import _commit, _input_dirs, _new_parents, _staging, check_output_dir

QUANT_METHOD = "hf_px_structured"
FORMAT_VERSION = 1
HINT = "pip install hf-px, then import hf_px before from_pretrained"
MARKER_KEY = f"hf_px_structured_checkpoint: {HINT}"


def config_widths(model: nn.Module, result: StructuredResult) -> dict[str, int] | None:
    """The config fields that describe the pruned model, or None if none can."""
    counts = result.counts()
    fields: dict[str, set[int]] = {}
    for g in result.groups:
        if g.kind == "blocks":  # the depth: `shrink` wrote it into the config already
            continue
        if not g.uniform_key:
            return None
        fields.setdefault(g.uniform_key, set()).add(counts[g.name])
    if any(len(v) != 1 for v in fields.values()):
        return None
    return {k: next(iter(v)) for k, v in fields.items()}


def is_shrunk(model: nn.Module, result: StructuredResult) -> bool:
    counts = result.counts()
    shapes = []
    for g in result.groups:
        if g.kind == "blocks":  # the removable blocks in the list: dense size, or the kept count
            blocks = model.get_submodule(g.name)
            shapes.append((len(blocks) - fixed_blocks(blocks), g.size, counts[g.name]))
            continue
        w = model.get_submodule(g.consumers[0]).weight
        shapes.append((w.shape[1], g.size * g.width, counts[g.name] * g.width))
    if all(have == kept for have, _, kept in shapes):
        return True
    if all(have == dense for have, dense, _ in shapes):
        return False
    raise HfPxError("the model's widths match neither the dense nor the pruned model of `result`")


def save_structured(
    model: nn.Module,
    output_dir: str | os.PathLike,
    result: StructuredResult,
    *,
    image_processor: Any = None,
    overwrite: bool = False,
    latency: dict[str, Any] | None = None,
    evaluation: Evaluation | dict[str, Any] | None = None,
    calibration: CalibrationRecord | dict[str, Any] | None = None,
    card: bool = True,
) -> Path:
    """Write the structured-pruned `model` (shrunk in place first if it is not yet) as
    a Hugging Face model directory; returns its path. Plain checkpoint when the
    config can express the widths, else the ``hf_px_structured`` layout (module
    docstring). `evaluation` (top-1 before/after) and `calibration` (the data the units
    were scored on) are recorded in the unit record and shown on the card."""
    if not hasattr(model, "save_pretrained"):
        raise HfPxError("save_structured needs a transformers model")
    if not is_shrunk(model, result):
        shrink(model, result.groups, result.kept)
    target = Path(output_dir).expanduser()
    check_output_dir(target, overwrite, _input_dirs(model, None))
    widths = config_widths(model, result)
    record = units_record(result, latency)
    record["layout"] = "plain" if widths is not None else QUANT_METHOD
    for key, value, kind in (
        ("evaluation", evaluation, Evaluation),
        ("calibration", calibration, CalibrationRecord),
    ):
        if value is not None:  # local paths never reach the folder (a Hub push shares it)
            typed = value if isinstance(value, kind) else kind.from_mapping(value)
            record[key] = scrub_paths(typed.to_dict())
    parent = target.absolute().parent
    config = model.config
    saved = {k: getattr(config, k, None) for k in ("intermediate_size", "num_attention_heads")}
    had_head_dim = hasattr(config, "head_dim")
    try:
        if widths is not None:
            if "num_attention_heads" in widths:
                head_dim = next(g.width for g in result.groups if g.kind == "heads")
                config.head_dim = head_dim
            for k, v in widths.items():
                setattr(config, k, v)
        with _new_parents(parent), _staging(parent, target.name) as tmp:
            model.save_pretrained(tmp)
            if widths is None:
                _add_structured_config(tmp, result)
            if image_processor is not None:
                image_processor.save_pretrained(tmp)
            (tmp / UNITS_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            if card:
                (tmp / "README.md").write_text(model_card(result, record))
            _commit(tmp, target, overwrite)
    finally:
        for k, v in saved.items():
            if v is not None:
                setattr(config, k, v)
        if not had_head_dim and hasattr(config, "head_dim"):
            del config.head_dim
    return target


def load_result(directory: str | os.PathLike, model: nn.Module) -> StructuredResult:
    """The :class:`StructuredResult` a structured checkpoint in `directory` was saved
    from, for `model` loaded from it (already shrunk): what `save_structured` needs to
    write it again after fine-tuning."""
    record = load_units(directory)
    saved = record.get("groups", {})
    groups = []
    kept = {}
    for g in find_units(model, record["config"]["structure"]):
        if g.name not in saved:
            raise HfPxError(f"{UNITS_NAME} in {directory} does not list unit group {g.name}")
        rec = saved[g.name]
        groups.append(dataclasses.replace(g, size=int(rec["size"])))
        mask = torch.zeros(int(rec["size"]), dtype=torch.bool)
        mask[torch.tensor(rec["kept"], dtype=torch.long)] = True
        kept[g.name] = mask
    return StructuredResult(
        groups=groups,
        kept=kept,
        config=dict(record["config"]),
        macs=(record["macs"]["before"], record["macs"]["after"]),
        params=(record["params"]["before"], record["params"]["after"]),
    )


def units_record(result: StructuredResult, latency: dict[str, Any] | None = None) -> dict:
    counts = result.counts()
    return {
        "version": FORMAT_VERSION,
        "config": result.config,
        "macs": {"before": result.macs[0], "after": result.macs[1]},
        "params": {"before": result.params[0], "after": result.params[1]},
        "removed": result.removed,
        "latency": latency or {},
        "groups": {
            g.name: {
                "kind": g.kind,
                "size": g.size,
                "width": g.width,
                "kept_count": counts[g.name],
                "kept": torch.nonzero(result.kept[g.name]).reshape(-1).tolist(),
            }
            for g in result.groups
        },
    }


def quantization_config_dict(result: StructuredResult) -> dict[str, Any]:
    return {
        "quant_method": QUANT_METHOD,
        "version": FORMAT_VERSION,
        "kinds": list(result.config["structure"]),
        "widths": result.counts(),
        "requires": HINT,
    }


def _add_structured_config(directory: Path, result: StructuredResult) -> None:
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg["quantization_config"] = quantization_config_dict(result)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    weights = directory / "model.safetensors"
    if weights.exists():  # the marker: its name is in plain transformers' load report
        tensors = load_file(weights)
        tensors[MARKER_KEY] = torch.zeros(1, dtype=torch.uint8)
        save_file(tensors, weights, metadata={"format": "pt"})


def load_units(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``structured_units.json`` record of a structured checkpoint."""
    path = Path(directory) / UNITS_NAME
    if not path.is_file():
        raise HfPxError(f"{directory} has no {UNITS_NAME}; it is not a structured checkpoint")
    return json.loads(path.read_text())


def resize_to(model: nn.Module, kinds: list[str], widths: dict[str, int]) -> list[UnitGroup]:
    """Give the dense-shaped `model` the saved widths (values uninitialised)."""
    from ..structured.shrink import resize_group
    from ..structured.units import find_units

    groups = find_units(model, kinds)
    names = {g.name for g in groups}
    unknown = sorted(set(widths) - names)
    if unknown:
        raise HfPxError(
            f"this structured checkpoint names unit groups the model does not have "
            f"({', '.join(unknown[:3])}); it was written for another architecture"
        )
    for g in groups:
        n = int(widths.get(g.name, g.size))
        if n != g.size:
            resize_group(model, g, n)
    return groups


def model_card(result: StructuredResult, record: dict[str, Any]) -> str:
    cfg = result.config
    lat = record.get("latency") or {}
    rows = [
        ("parameters", f"{result.params[0]:,}", f"{result.params[1]:,}"),
        (f"MACs per image ({cfg['image_size']} px)", f"{result.macs[0]:,}", f"{result.macs[1]:,}"),
    ]
    for key, value in sorted(lat.items()):
        if isinstance(value, dict) and "before" in value and "after" in value:
            rows.append((key, f"{value['before']:.4g}", f"{value['after']:.4g}"))
    ev = Evaluation.from_mapping(record.get("evaluation") or {})
    measured_on = f"{ev.dataset} [{ev.split}], {ev.num_samples} images"
    if ev.accuracy_dense is not None and ev.accuracy_pruned is not None:
        rows.append((f"top-1 on {measured_on}", _pct(ev.accuracy_dense), _pct(ev.accuracy_pruned)))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    if record["layout"] == "plain":
        load = (
            "A plain transformers checkpoint: `AutoModelForImageClassification.from_pretrained` "
            "and `pipeline()` load it without hf-px."
        )
    else:
        load = (
            "Layer widths differ from what the model's config can describe: `import hf_px` "
            "before `from_pretrained` (without it, loading fails with a size mismatch)."
        )
    form = cfg.get("px_form", {}).get("form")
    tuned = cfg.get("finetune") or {}
    notes = (
        f"Fine-tuned after pruning: {tuned.get('epochs')} epoch(s) on {tuned.get('dataset')} "
        f"[{tuned.get('split')}], {tuned.get('num_samples')} images, {tuned.get('optimizer')} "
        f"lr {tuned.get('learning_rate')} ({tuned.get('trainer')}).\n\n"
        if tuned
        else ""
    )
    if ev.accuracy_finetuned is not None:
        notes += f"Top-1 after fine-tuning on {measured_on}: {_pct(ev.accuracy_finetuned)}.\n\n"
    calib = CalibrationRecord.from_mapping(record.get("calibration"))
    if calib.dataset:
        split = f" [{calib.split}]" if calib.split else ""
        images = f", {calib.num_samples} images" if calib.num_samples else ""
        notes = f"Units scored on {calib.dataset}{split}{images}.\n\n" + notes
    return (
        "---\ntags:\n- hf-px\n- structured-pruning\n- image-classification\n---\n\n"
        f"# Structured-pruned {cfg['model_type']} ({cfg['method']}"
        f"{f' ({form} form)' if form else ''}, "
        f"{cfg['remove']:.0%} of {cfg['target']} removed)\n\n"
        f"Units removed: {', '.join(cfg['structure'])}, {cfg['rounds']} rounds"
        f"{', uniform widths' if cfg['uniform'] else ''}. {load}\n\n"
        "| | before | after |\n| --- | --- | --- |\n"
        f"{table}\n\n"
        f"{notes}"
        "Latency: " + (lat.get("note") or "not measured") + ".\n"
        "Which units were kept: `structured_units.json`.\n"
    )


def _pct(value: float) -> str:
    return f"{100 * float(value):.2f}%"
