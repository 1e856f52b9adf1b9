"""``hf-px finetune DIR --dataset D``: train a pruned checkpoint with its masks fixed, save it.

`transformers.Trainer` does the training, with :class:`~hf_px.training.MaskedTrainingCallback`
holding every pruned weight at exactly 0.0; the data set is read through `datasets`
and prepared by the checkpoint's own image processor on the fly
(``Dataset.with_transform``). The masks are the checkpoint's saved ones
(``pruning_masks.safetensors``, :func:`hf_px.load_pruning`); a checkpoint from an
older hf-px without them falls back to its zeros, with a warning. Under
``torchrun``/``accelerate launch`` Trainer runs data parallel and only the main
process writes, pushes and prints. The card is written again with the recipe and
the accuracy before pruning (when the pruned checkpoint recorded it on the same
evaluation data), after pruning and after fine-tuning.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from .. import calibration
from ..card import CalibrationRecord, Evaluation, FinetuneRecipe
from ..refs import public_name
from ..training import OPTIMIZERS
from ..utils import read_json_dict
from . import common, output, parsing
from .resolve import load, model_name, size_on_disk, source_info


def run_finetune(args: argparse.Namespace) -> int:
    return common.report(args, _finetune, _print_summary)


def _print_summary(s: dict[str, Any]) -> None:
    pct = output.pct
    losses = s["epoch_losses"]
    kept = (
        f"sparsity {pct(s['sparsity'])}, every pruned weight still 0"
        if s.get("removed") is None
        else f"structured, {pct(s['removed']['macs'])} of the MACs removed"
    )
    output.say(
        f"fine-tuned {s['model']} for {s['epochs']} epoch(s) ({s['steps']} steps, "
        f"{s['num_processes']} process(es), {s['train_s']:.1f} s): training loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}; {kept}"
    )
    ev = s.get("evaluation")
    if ev:
        dense = ev.get("accuracy_dense")
        output.say(
            f"  top-1 on {ev['dataset']} [{ev['split']}], {ev['num_samples']} images: "
            + (f"dense {pct(dense)} -> " if dense is not None else "")
            + f"pruned {pct(ev['accuracy_pruned'])} -> fine-tuned {pct(ev['accuracy_finetuned'])}"
        )
    output.say(
        f"  wrote {s['output_dir']} ({s['format']}, {output.human_size(s['size_on_disk_bytes'])})"
    )
    if s.get("pushed_to"):
        output.say(f"  pushed: {s['pushed_to']}")


def _dataset(ref: str | None, split: str, args: argparse.Namespace, model: Any,
             processor: Any, num_samples: int | None):  # fmt: skip
    """(a `datasets.Dataset` giving pixel_values/labels, its class names)."""
    from ..calibration.labels import label_table, to_model_ids
    from ..errors import HfPxError
    from ..training import image_transform

    ds = calibration.open_dataset(
        ref, dataset_config=args.dataset_config, split=split, streaming=False
    )
    image_col = calibration.columns.image_column_of(ds, args.image_column)
    label_col = calibration.columns.label_column_of(ds, args.label_column)
    if label_col is None:
        name = public_name(ref) or calibration.DEFAULT_DATASET
        raise HfPxError(
            f"fine-tuning needs labels but dataset {name} has no "
            "label column; name it with --label-column"
        )
    if num_samples is not None:
        if len(ds) < num_samples:
            raise HfPxError(
                f"the dataset has only {len(ds)} images, fewer than --num-samples {num_samples}"
            )
        ds = ds.shuffle(seed=args.seed).select(range(num_samples))
    config = model.config
    table = label_table(config.id2label, calibration.columns.class_names(ds, label_col))
    labels = ds[label_col]
    if any(not isinstance(y, int) or y < 0 for y in labels):
        raise HfPxError(
            f"label column {label_col!r} has missing or negative labels; use a labelled split"
        )
    # every label the model's class, before any training step (the one mapping eval uses)
    to_model_ids(
        labels,
        table,
        config.num_labels,
        f"dataset {public_name(ref) or calibration.DEFAULT_DATASET}",
    )
    ds = calibration.columns.cast_undecoded(ds, image_col).select_columns([image_col, label_col])
    return ds.with_transform(image_transform(processor, image_col, label_col, table))


def _finetune(args: argparse.Namespace) -> dict[str, Any] | None:
    from ..checkpoint import load_pruning

    t0 = time.perf_counter()
    src, structured = _source_kind(args)
    out_dir = _check_args(args, src)
    with output.phase(f"loading {model_name(args.model)}", {}, "load_s"):
        model, processor = load(args.model, args)
    saved = None if structured else load_pruning(src, model=model)
    data_proc = common.data_processor(model, processor)
    split = args.split or "train"
    train = _dataset(args.dataset, split, args, model, data_proc, args.num_samples)
    eval_ref = args.eval_dataset or (args.dataset if args.eval_split else None)
    evaluation_set = None
    if eval_ref is not None:
        eval_split = args.eval_split or "train"
        evaluation_set = _dataset(eval_ref, eval_split, args, model, data_proc, None)
    stats = _train(args, model, saved, train, evaluation_set)
    trainer = stats.pop("trainer")
    recipe = _recipe(args, split, len(train), stats)
    evaluation = None
    if evaluation_set is not None:
        evaluation = _evaluation(eval_ref, args.eval_split or "train", stats, src)
    if not trainer.is_world_process_zero():
        return None
    if structured:
        return _save_structured(args, src, out_dir, model, processor, stats, evaluation, recipe, t0)
    # the recipe goes beside the prune's calibration record, where earlier versions put it
    record = CalibrationRecord.from_mapping(saved.config.calibration)
    out_dir, url = common.save_and_push(
        args,
        model,
        out_dir,
        saved,
        processor,
        {},
        source=_source(src, args.model),
        calibration=dataclasses.replace(record, finetune=recipe),
        evaluation=evaluation,
    )
    return _summary(args, out_dir, saved, stats, evaluation, recipe, url, t0)


def _source_kind(args: argparse.Namespace) -> tuple[Path, bool]:
    """(the checkpoint directory, whether `hf-px prune-structured` wrote it), or the
    one-line refusal of a directory neither command wrote."""
    from ..checkpoint.structured import UNITS_NAME
    from ..config import CONFIG_NAME
    from ..errors import HfPxError

    src = Path(args.model).expanduser()
    structured = (src / UNITS_NAME).is_file()
    common.error_if(
        structured and args.format != "dense",
        f"{args.model} is a structured checkpoint: its removed units are gone, so it is "
        "written in its own (smaller, dense) layout; drop --format",
    )
    if not structured and not (src / CONFIG_NAME).is_file():
        raise HfPxError(
            f"{args.model} has no {CONFIG_NAME}; finetune a directory written by `hf-px prune` "
            "or `hf-px prune-structured`"
        )
    return src, structured


def _train(args, model, saved, train, evaluation_set) -> dict[str, Any]:
    """Trainer with the saved masks held (none for a structured checkpoint); refuses to
    go on if a pruned weight moved."""
    import torch

    from ..errors import HfPxFailure
    from ..training import trainer_finetune

    with torch.enable_grad():
        stats = trainer_finetune(
            model,
            saved if saved is not None else {},
            train,
            eval_dataset=evaluation_set,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            weight_decay=args.weight_decay,
            optimizer=args.optimizer,
            bf16=args.bf16,
            seed=args.seed,
            quiet=args.quiet,
        )
    if stats["pruned_weights_nonzero"]:
        raise HfPxFailure(
            f"{stats['pruned_weights_nonzero']} pruned weights became non-zero during training; "
            "nothing was written — report this with the command line"
        )
    return stats


def _save_structured(args, src, out_dir, model, processor, stats, evaluation, recipe, t0):
    """A structured checkpoint written again in its own layout, the recipe in its
    ``structured_units.json`` config and card; pushed with ``--push-to-hub``."""
    from ..checkpoint.structured import load_result, load_units, save_structured
    from ..hub import push_to_hub

    result = load_result(src, model)
    result.config["finetune"] = recipe.to_dict()
    source = load_units(src)
    with output.phase(f"saving to {out_dir}", {}, "save_s"):
        out_dir = save_structured(
            model, out_dir, result, image_processor=processor, overwrite=args.overwrite,
            latency=source.get("latency"), calibration=source.get("calibration"),
            evaluation=evaluation or _prior_evaluation(src),
        )  # fmt: skip
    output.completed(output_dir=str(out_dir), size_on_disk_bytes=size_on_disk(out_dir))
    url = None
    if args.push_to_hub:
        with output.phase(f"uploading to {args.push_to_hub}", {}, "push_s"):
            url = push_to_hub(out_dir, args.push_to_hub, private=args.private)
    summary = _summary(args, out_dir, None, stats, evaluation, recipe, url, t0)
    summary["removed"] = result.removed
    summary["format"] = f"structured, {load_units(out_dir)['layout']}"
    return summary


def _check_args(args: argparse.Namespace, src: Path) -> Path:
    """Refuse contradictory flags and a taken output directory before loading anything."""
    common.error_if(
        bool(args.eval_split) and not args.eval_dataset and not args.dataset,
        "--eval-split needs the data set to take it from; add --eval-dataset or --dataset",
    )
    common.error_if(
        args.private and not args.push_to_hub,
        "--private only applies with --push-to-hub REPO_ID; add it or drop --private",
    )
    out_dir = Path(args.output_dir) if args.output_dir else src.with_name(src.name + "-ft")
    common.check_destination(args, out_dir, [args.model, args.dataset, args.eval_dataset])
    common.resolve_splits(args, with_eval=bool(args.eval_dataset or args.eval_split))
    return out_dir


def _summary(args, out_dir, result, stats, evaluation, recipe, url, t0) -> dict[str, Any]:
    """What `--json` prints and the human summary reads."""
    return {
        "model": args.model,
        "output_dir": str(out_dir),
        "format": args.format,
        "epochs": args.epochs,
        "steps": stats["steps"],
        "epoch_losses": stats["epoch_losses"],
        "first_loss": stats["first_loss"],
        "final_loss": stats["final_loss"],
        "num_processes": stats["num_processes"],
        "train_s": round(stats["train_s"], 3),
        "sparsity": result.sparsity if result is not None else None,
        "pruned_weights_nonzero": stats["pruned_weights_nonzero"],
        "evaluation": _evaluation_json(evaluation) if evaluation is not None else None,
        "recipe": recipe.to_dict(),
        "size_on_disk_bytes": size_on_disk(out_dir),
        "pushed_to": url,
        "total_s": round(time.perf_counter() - t0, 3),
    }


def _recipe(args: argparse.Namespace, split: str, num_samples: int, stats: dict) -> FinetuneRecipe:
    """The fine-tuning recipe as the card and pruning_config.json record it."""
    return FinetuneRecipe(
        dataset=public_name(args.dataset) or calibration.DEFAULT_DATASET,
        split=split,
        num_samples=num_samples,
        epochs=args.epochs,
        steps=stats["steps"],
        learning_rate=args.learning_rate,
        schedule="cosine",
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_processes=stats["num_processes"],
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        bf16=bool(args.bf16),
        seed=args.seed,
        trainer="transformers.Trainer",
    )


def _evaluation(eval_ref: str, split: str, stats: dict, src: Path) -> Evaluation:
    """Accuracy before/after fine-tuning, with the dense figure when pruning measured it on
    the same data."""
    before, after = stats["eval_before"], stats["eval_after"]
    evaluation = Evaluation(
        dataset=public_name(eval_ref),
        split=split,
        num_samples=after["num_samples"],
        accuracy_pruned=before["accuracy"],
        loss_pruned=before["loss"],
        accuracy_finetuned=after["accuracy"],
        loss_finetuned=after["loss"],
    )
    prior = _prior_evaluation(src)
    if prior and (prior.dataset, prior.split) == (evaluation.dataset, evaluation.split):
        # the same data: the dense figure that pruning measured carries over
        evaluation = dataclasses.replace(
            evaluation, accuracy_dense=prior.accuracy_dense, loss_dense=prior.loss_dense
        )
    return evaluation


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    """The ``evaluation`` of ``--json`` (the dense figures only when carried over)."""
    out = ev.to_dict()
    for key in ("dataset", "split", "num_samples", "accuracy_pruned", "loss_pruned"):
        out.setdefault(key, None)
    return out


def _prior_evaluation(src: Path) -> Evaluation | None:
    """What the pruning run measured, as its sparsity report (either spelling) or, for a
    structured checkpoint, its unit record recorded it."""
    from ..checkpoint.structured import UNITS_NAME
    from ..config import REPORT_NAME

    report = src / (UNITS_NAME if (src / UNITS_NAME).is_file() else REPORT_NAME)
    ev = read_json_dict(report).get("evaluation")
    return Evaluation.from_mapping(ev) if isinstance(ev, dict) else None


def _source(src: Path, reference: str) -> dict[str, Any]:
    """The base model the pruned checkpoint came from (its card's), else the folder."""
    info = source_info(reference)
    try:
        from huggingface_hub import ModelCard

        base = ModelCard.load(src / "README.md", ignore_metadata_errors=True).data.base_model
    except (OSError, ValueError, ImportError):
        base = None
    if isinstance(base, str) and base:
        info = {**info, "model_id": base}
    return info


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px finetune`` and its arguments."""
    p = subparsers.add_parser(
        "finetune",
        help="train a pruned checkpoint with its masks fixed and save it",
        description="Train a directory written by `hf-px prune` on a labelled image "
        "dataset with transformers.Trainer; every pruned weight stays exactly 0 "
        "(hf_px.training). Runs data parallel under torchrun / accelerate launch.",
    )
    p.add_argument("model", metavar="DIR", help="a checkpoint directory written by `hf-px prune`")
    p.add_argument("--epochs", type=parsing.positive_int, default=1, metavar="N")
    p.add_argument(
        "--learning-rate",
        "--lr",
        dest="learning_rate",
        type=float,
        default=1e-4,
        metavar="LR",
        help="peak learning rate (cosine decay to 0)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="W")
    p.add_argument(
        "--gradient-accumulation-steps", type=parsing.positive_int, default=1, metavar="K"
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (where supported)")
    parsing.data_args(p, required=False)
    p.add_argument(
        "--num-samples", type=parsing.positive_int, metavar="N", help="cap the training images"
    )
    p.add_argument(
        "--eval-dataset",
        metavar="NAME_OR_PATH",
        help="labelled held-out data: top-1 accuracy before and after fine-tuning",
    )
    p.add_argument(
        "--eval-split",
        metavar="S",
        help="split of --eval-dataset (or of --dataset when no --eval-dataset); default: train",
    )
    parsing.output_args(p, "DIR-ft beside the input")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the checkpoint afterwards")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    parsing.loading(p)
    parsing.common(p)
    p.set_defaults(func=run_finetune)
