"""The model card of a pruned checkpoint: metadata, body, density chart.

The card is rendered by ``huggingface_hub.ModelCard.from_template`` from the
Jinja template ``hf_px/card/templates/pruned_model_card.md`` (``model_cards/`` links
to it); this module only computes the values the
template shows. Nothing machine-specific reaches the card: local paths are
reduced to their last component, ``base_model``/``datasets`` only ever hold Hub
ids, and no token or user name is read.

Multiply-accumulates (MACs) are counted with forward hooks on every Conv2d and
Linear layer for one input of the model's image size: a Conv2d output element
costs ``C_in/groups · k_h · k_w`` MACs, a Linear one ``in_features``. Each
weight of such a layer takes part in the same number of MACs (up to padding at
the borders), so a kernel that skips zero weights needs ``density × dense``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..calibration import image_size_of
from ..config import FORMATS, PruningResult
from ..errors import HfPxError, HfPxFailure
from ..methods import METHODS
from ..refs import is_local, last_component, looks_like_hub_id
from ..utils import read_json_dict
from .records import CalibrationRecord, Evaluation, FinetuneRecipe

logger = logging.getLogger(__name__)

README_NAME = "README.md"
CHART_NAME = "layer_density.png"
TEMPLATE_NAME = "pruned_model_card.md"

_PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "templates" / TEMPLATE_NAME


def load_line(load_id: str) -> str:
    """The loading snippet's first line: what `from_pretrained` gets (a Hub id, or ".")."""
    comment = "this repo's id on the Hub, or the folder holding this card"
    return f"model_id = {json.dumps(load_id)}  # {comment}"


def retarget_card(text: str, repo_id: str) -> str | None:
    """A card written without a Hub id, its snippet now loading `repo_id`; None if it has none."""
    local = load_line(".")
    return text.replace(local, load_line(repo_id)) if local in text else None


def template_path() -> Path:
    """The card template shipped in the package."""
    if _PACKAGED_TEMPLATE.is_file():
        return _PACKAGED_TEMPLATE
    raise HfPxFailure("the model card template is missing from the hf-px install; reinstall hf-px")


def write_card(
    output_dir: str | Path,
    *,
    model: nn.Module,
    result: PruningResult,
    source: dict[str, Any] | None = None,
    calibration: CalibrationRecord | dict[str, Any] | None = None,
    evaluation: Evaluation | dict[str, Any] | None = None,
    format: str = "dense",  # noqa: A002 (mirrors the CLI's --format)
    repo_id: str | None = None,
) -> Path:
    """Write ``README.md`` and ``layer_density.png`` (embedded in it) into `output_dir`.

    `source`: ``{"model_id": Hub id or None, "local_path": path or None,
    "license": optional}``. `calibration`: a :class:`CalibrationRecord` or the dict it
    reads (``{"dataset": Hub id or name, "num_samples": int, "split": ...}``); defaults
    to ``result.config.calibration``.
    `evaluation`: an :class:`Evaluation` (or a dict :meth:`Evaluation.from_mapping`
    reads: ``{"dataset", "split", "num_samples"}`` and ``accuracy_dense``/``_pruned``/
    ``_finetuned``, same for ``loss_*``); it adds a ``model-index`` with the latest
    stage. `repo_id`, when the caller knows where the folder will be pushed, goes into
    the loading snippet.
    Returns the card's path.
    """
    from huggingface_hub import ModelCard

    if format not in FORMATS:
        raise HfPxError(f"unknown checkpoint format {format!r}; choose 'dense' or 'bitmask'")
    if not isinstance(result, PruningResult):
        raise HfPxError("`result` must be the PruningResult returned by hf_px.prune")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor_file = out / "preprocessor_config.json"
    context = card_context(
        model,
        result,
        source=source or {},
        calibration=calibration if calibration is not None else result.config.calibration,
        evaluation=evaluation,
        storage_format=format,
        repo_id=repo_id,
        processor=read_json_dict(processor_file) if processor_file.is_file() else None,
    )
    context["has_image_processor"] = processor_file.is_file()
    _write_atomic(out / CHART_NAME, lambda tmp: _plot_density(context["rows"], context, tmp))
    card = ModelCard.from_template(
        card_metadata(context), template_path=str(template_path()), **context
    )
    text = str(card)
    _write_atomic(out / README_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info("wrote the model card %s", README_NAME)
    return out / README_NAME


# -- values ------------------------------------------------------------------------------
def card_context(
    model: nn.Module,
    result: PruningResult,
    *,
    source: dict[str, Any],
    calibration: CalibrationRecord | dict[str, Any] | None,
    evaluation: Evaluation | dict[str, Any] | None,
    storage_format: str,
    repo_id: str | None = None,
    processor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain JSON-able values. `processor`: the
    saved ``preprocessor_config.json`` (sets the input size MACs are counted at)."""
    config = result.config
    model_config = getattr(model, "config", None)
    family = getattr(model_config, "model_type", None) or config.model_type or "custom"
    base_model = resolve_base_model(source, model)
    masks = result.masks
    example_shape = _example_shape(model, processor)
    macs = count_macs(model, masks, example_shape)
    rows = []
    for name, mask in masks.items():
        kept = int(mask.sum())
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        rows.append(
            {
                "name": name,
                "shape": list(mask.shape),
                "numel": mask.numel(),
                "kept": kept,
                "density": kept / mask.numel() if mask.numel() else 0.0,
                "macs": macs["per_layer"].get(module, 0) if macs else 0,
            }
        )
    total_params = sum(p.numel() for p in model.parameters())
    method_name = config.method
    family_label = _family_label(model, family)
    title_base = base_model.split("/")[-1] if base_model else family_label
    method = METHODS.get(method_name)
    label = method.label if method else method_name
    short = (method.short_label or method.name) if method else method_name
    title = f"{title_base} pruned to {100 * result.sparsity:.0f}% sparsity ({short})"
    return {
        "title": title,
        "model_name": f"{base_model.split('/')[-1] if base_model else family}"
        f"-{method_name}-sparse{round(100 * result.sparsity)}",
        "base_model": base_model,
        "family": family,
        "family_label": family_label,
        "method": {
            "name": method_name,
            "label": label,
            "needs_data": method.needs_data if method else True,
        },
        "method_reference": method.citation if method else None,
        "config": config.to_dict(),
        "achieved": {
            "sparsity": result.sparsity,
            "num_pruned": result.num_pruned,
            "num_prunable": result.num_prunable,
        },
        "totals": {
            "parameters": total_params,
            "nonzero_parameters": total_params - result.num_pruned,
        },
        "rows": rows,
        "macs": {"dense": macs["dense"], "remaining": macs["remaining"]} if macs else None,
        "example_shape": list(example_shape),
        "finetune": _finetune_view(FinetuneRecipe.from_mapping(config.calibration.get("finetune"))),
        "calibration": _calibration_view(CalibrationRecord.from_mapping(calibration)),
        "evaluation": _evaluation_view(evaluation) if evaluation else None,
        "chart": CHART_NAME,
        # the snippet must run as written: the Hub id when known, else the folder itself
        "load_id": repo_id or ".",
        "load_line": load_line(repo_id or "."),
        "storage_format": storage_format,
        "has_image_processor": False,
        "hf_px_version": config.hf_px_version,
        "license_id": _license(source, base_model),
    }


def card_metadata(context: dict[str, Any]):
    """The YAML header: what the Hub indexes (base model, task, tags, data, results)."""
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["pruned", "sparse", "px", context["method"]["name"], context["family"], "hf-px"]
    calibration_id = context["calibration"].get("hub_id")
    eval_results = None
    evaluation = context["evaluation"]
    if evaluation:
        dataset_type = evaluation["hub_id"] or evaluation["dataset"]
        metrics = [("accuracy", "Top-1 accuracy", evaluation["accuracy_latest"])]
        metrics.append(("loss", "Cross-entropy loss", evaluation["loss_latest"]))
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_type,
                dataset_name=evaluation["dataset"],
                dataset_split=evaluation["split"],
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
            )
            for metric_type, metric_name, value in metrics
            if value is not None
        ] or None
    return ModelCardData(
        base_model=context["base_model"],
        library_name="transformers",
        pipeline_tag="image-classification",
        license=context["license_id"],
        tags=tags,
        datasets=[calibration_id] if calibration_id else None,
        eval_results=eval_results,
        model_name=context["model_name"] if eval_results else None,
    )


def resolve_base_model(source: dict[str, Any], model: nn.Module) -> str | None:
    """The Hub id the pruned model derives from, or None; never a local path.

    Order: ``source["model_id"]``; the ``_name_or_path`` recorded in the local
    source's ``config.json`` (transformers 4 wrote it); the in-memory
    ``config._name_or_path`` (set by ``from_pretrained`` to what it was given).
    """
    candidates = [source.get("model_id")]
    local = source.get("local_path")
    if local:
        candidates.append(read_json_dict(Path(local) / "config.json").get("_name_or_path"))
    candidates.append(getattr(getattr(model, "config", None), "_name_or_path", None))
    for candidate in candidates:
        if looks_like_hub_id(candidate):
            return candidate
    return None


def _license(source: dict[str, Any], base_model: str | None) -> str | None:
    """The source's license: given, else from its card (local folder or HF cache)."""
    if source.get("license"):
        return str(source["license"])
    cards = []
    if source.get("local_path"):
        cards.append(Path(source["local_path"]) / README_NAME)
    if base_model:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, README_NAME)
        if isinstance(cached, str):
            cards.append(Path(cached))
    for path in cards:
        if path.is_file():
            from huggingface_hub import ModelCard

            try:
                value = ModelCard.load(path, ignore_metadata_errors=True).data.license
            except (OSError, ValueError) as exc:
                logger.warning("could not read the source model card (%s)", type(exc).__name__)
                continue
            if value:
                return str(value)
    return None


def _family_label(model: nn.Module, family: str) -> str:
    """ "ViT" from ViTForImageClassification; the model_type for other classes."""
    name = type(model).__name__
    for suffix in ("ForImageClassification", "ForImageClassificationWithTeacher"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return family


def _display_name(value: Any) -> str | None:
    """A dataset reference safe to print: Hub ids as-is, local paths by last component."""
    if value is None or value == "":
        return None
    text = str(value)
    if looks_like_hub_id(text):
        return text
    if "/" in text or is_local(text):
        name = last_component(text) or "local data"
        return f"local folder `{name}`"
    return text


def _finetune_view(recipe: FinetuneRecipe | None) -> dict[str, Any] | None:
    if recipe is None:
        return None
    view = recipe.to_dict()
    view["dataset"] = _display_name(recipe.dataset) or "user-supplied data"
    return view


def _calibration_view(calibration: CalibrationRecord) -> dict[str, Any]:
    dataset = calibration.dataset
    hub_id = calibration.hub_id or (dataset if looks_like_hub_id(dataset) else None)
    if hub_id and not looks_like_hub_id(hub_id):
        hub_id = None
    return {
        "dataset": _display_name(hub_id or dataset),
        "hub_id": hub_id,
        "config": calibration.config,
        "split": calibration.split,
        "num_samples": calibration.num_samples,
    }


def _evaluation_view(evaluation: Evaluation | dict[str, Any]) -> dict[str, Any]:
    """Accuracy/loss at three stages: dense (before pruning), pruned, fine-tuned
    (`hf-px prune --eval` measures the first two, `hf-px finetune` the last two)."""
    if not isinstance(evaluation, Evaluation):
        evaluation = Evaluation.from_mapping(evaluation)
    dataset = evaluation.dataset
    hub_id = dataset if looks_like_hub_id(dataset) else None

    def number(value: float | None) -> float | None:
        return None if value is None else float(value)

    stages = {
        "dense": (number(evaluation.accuracy_dense), number(evaluation.loss_dense)),
        "pruned": (number(evaluation.accuracy_pruned), number(evaluation.loss_pruned)),
        "finetuned": (number(evaluation.accuracy_finetuned), number(evaluation.loss_finetuned)),
    }
    shown = [k for k, (acc, _) in stages.items() if acc is not None]
    latest = shown[-1] if shown else "pruned"
    return {
        "dataset": _display_name(dataset) or "evaluation set",
        "hub_id": hub_id,
        "split": evaluation.split,
        "num_samples": evaluation.num_samples,
        "stages": [
            {"label": _STAGE_LABELS[k], "accuracy": stages[k][0], "loss": stages[k][1]}
            for k in ("dense", "pruned", "finetuned")
            if k != "finetuned" or stages[k][0] is not None
        ],
        "accuracy_latest": stages[latest][0],
        "loss_latest": stages[latest][1],
    }


_STAGE_LABELS = {
    "dense": "Before pruning",
    "pruned": "After pruning",
    "finetuned": "After fine-tuning",
}


# -- compute -----------------------------------------------------------------------------
def _example_shape(
    model: nn.Module, processor: dict[str, Any] | None = None
) -> tuple[int, int, int, int]:
    """1 × C × H × W: H, W what the image processor produces (its crop when it center-crops,
    else its resize target), else the config's ``image_size``, else 224."""
    config = getattr(model, "config", None)
    size = processor_image_size(processor) if processor else None
    if size is None:
        size = getattr(config, "image_size", None)
    height, width = image_size_of(size)
    return 1, int(getattr(config, "num_channels", 3) or 3), height, width


def processor_image_size(processor: dict[str, Any]) -> tuple[int, int] | None:
    """(H, W) of the images a saved image processor (``preprocessor_config.json``) makes."""

    def hw(value: Any) -> tuple[int, int] | None:
        if isinstance(value, int | float):
            return int(value), int(value)
        if isinstance(value, dict):
            if "height" in value and "width" in value:
                return int(value["height"]), int(value["width"])
            if "shortest_edge" in value:  # a square crop of the short side (ConvNeXt, CLIP)
                return int(value["shortest_edge"]), int(value["shortest_edge"])
        return None

    if processor.get("do_center_crop") and hw(processor.get("crop_size")):
        return hw(processor.get("crop_size"))
    return hw(processor.get("size"))


def count_macs(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    shape: tuple[int, int, int, int] | None = None,
) -> dict[str, Any] | None:
    """Dense and remaining MACs of Conv2d/Linear layers for one image of `shape`
    (default: :func:`_example_shape`, the model's own input size; see module doc)."""
    per_layer: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                return
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = output.numel() * (module.in_channels // module.groups) * kh * kw
            else:
                macs = output.numel() * module.in_features
            per_layer[name] = per_layer.get(name, 0) + int(macs)

        return count

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            handles.append(module.register_forward_hook(hook(name)))
    if not handles:
        return None
    first = next(model.parameters())
    x = torch.zeros(shape or _example_shape(model), dtype=first.dtype, device=first.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=x)
    except (RuntimeError, TypeError, ValueError) as exc:
        logger.warning("MACs not counted: the model's forward failed (%s)", type(exc).__name__)
        return None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    density = {}
    for name, mask in masks.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        density[module] = float(mask.sum()) / mask.numel() if mask.numel() else 0.0
    dense = sum(per_layer.values())
    remaining = sum(m * density.get(n, 1.0) for n, m in per_layer.items())
    return {"dense": dense, "remaining": int(round(remaining)), "per_layer": per_layer}


# -- files -------------------------------------------------------------------------------
def _plot_density(rows: list[dict[str, Any]], context: dict[str, Any], path: Path) -> None:
    """Horizontal bar chart of per-layer density (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [_short_name(r["name"]) for r in rows]
    values = [r["density"] for r in rows]
    height = max(2.5, 0.22 * len(rows) + 1.2)
    fig = Figure(figsize=(7.5, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = list(range(len(rows)))
    ax.barh(positions, values, color="#3b75af", height=0.75)
    overall = 1.0 - context["achieved"]["sparsity"]
    ax.axvline(
        overall, color="#d0473a", linestyle="--", linewidth=1.0, label=f"overall {overall:.1%}"
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=6 if len(rows) > 30 else 7)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_title(f"Per-layer density: {context['title']}", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _short_name(name: str) -> str:
    name = name[: -len(".weight")] if name.endswith(".weight") else name
    return name if len(name) <= 48 else "…" + name[-47:]


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HfPxFailure(
            f"could not write {path.name} ({exc.strerror or type(exc).__name__}); "
            "check free disk space and permissions of the output directory"
        ) from None
