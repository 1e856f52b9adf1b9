"""``hf-px finetune DIR``: train a pruned checkpoint with its masks fixed, save it.

The masks are the checkpoint's own zeros: every prunable weight (the adapter's
Conv/Linear weights minus the ``exclude`` of its ``pruning_config.json``) that
is exactly 0.0 stays 0.0 (:mod:`hf_px.training`). Single process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from .. import calibration
from ..checkpoint import check_output_dir, save_pruned
from ..training import OPTIMIZERS
from . import common, output, parsing
from .resolve import load, model_name, public_name, size_on_disk, source_info


def run_finetune(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr(args.json) as stdout:
        summary = _finetune(args)
        if args.json:
            output.emit_json(summary, stdout)
        else:
            output.say(
                f"fine-tuned {summary['model']} for {summary['epochs']} epoch(s) "
                f"({summary['steps']} steps): loss {summary['first_loss']:.3f} -> "
                f"{summary['final_loss']:.3f}; sparsity {output.pct(summary['sparsity'])} kept"
            )
            output.say(f"  wrote {summary['output_dir']} ({summary['format']})")
    return 0


def _masks_of(model: Any, config: Any) -> dict:
    from ..adapters import get_adapter

    params = get_adapter(model).prunable_parameters(model, config.exclude)
    return {n: p.detach() != 0 for n, p in params.items()}


def _finetune(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..config import CONFIG_NAME, PruningConfig, PruningResult
    from ..errors import HfPxError
    from ..evaluation import label_mapping
    from ..training import finetune

    t0 = time.perf_counter()
    src = Path(args.model).expanduser()
    if not (src / CONFIG_NAME).is_file():
        raise HfPxError(
            f"{args.model} has no {CONFIG_NAME}; finetune a directory written by `hf-px prune`"
        )
    out_dir = Path(args.output_dir) if args.output_dir else src.with_name(src.name + "-ft")
    check_output_dir(out_dir, args.overwrite)
    with output.phase(f"loading {model_name(args.model)}", {}, "load_s"):
        model, processor = load(args.model, args)
    config = PruningConfig.load(src)
    masks = _masks_of(model, config)
    data_proc = common.data_processor(model, processor)
    kw: dict[str, Any] = {"dataset_config": args.dataset_config, "label_column": args.label_column}
    batches = calibration.load_labelled_batches(
        args.dataset,
        image_processor=data_proc,
        split=args.split or "train",
        image_column=args.image_column,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        seed=args.seed,
        **kw,
    )
    names = calibration.dataset_label_names(args.dataset, split=args.split or "train", **kw)
    table = label_mapping(model, names)
    if table is not None:  # data-set ids → the model's ids, by class name
        batches = [{**b, "labels": table[b["labels"].long()]} for b in batches]
    with torch.enable_grad():
        stats = finetune(
            model,
            masks,
            batches,
            epochs=args.epochs,
            lr=args.lr,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            seed=args.seed,
        )
    config = dataclasses.replace(
        config,
        calibration={
            **config.calibration,
            "finetune": {
                "dataset": public_name(args.dataset) or calibration.DEFAULT_DATASET,
                "split": args.split or "train",
                "epochs": args.epochs,
                "lr": args.lr,
                "optimizer": args.optimizer,
                "weight_decay": args.weight_decay,
                "seed": args.seed,
            },
        },
    )
    result = PruningResult(masks={n: m.cpu() for n, m in masks.items()}, config=config)
    with output.phase(f"saving to {out_dir}", {}, "save_s"):
        out_dir = save_pruned(
            model,
            out_dir,
            result,
            image_processor=processor,
            format=args.format,
            overwrite=args.overwrite,
            source=source_info(args.model),
        )
    return {
        "model": args.model,
        "output_dir": str(out_dir),
        "format": args.format,
        "epochs": stats["epochs"],
        "steps": stats["steps"],
        "first_loss": stats["first_loss"],
        "final_loss": stats["final_loss"],
        "sparsity": result.sparsity,
        "pruned_weights_nonzero": stats["pruned_weights_nonzero"],
        "size_on_disk_bytes": size_on_disk(out_dir),
        "total_s": round(time.perf_counter() - t0, 3),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px finetune`` and its arguments."""
    p = subparsers.add_parser(
        "finetune",
        help="train a pruned checkpoint with its masks fixed and save it",
        description="Train a directory written by `hf-px prune` on a labelled image "
        "dataset; every pruned weight stays exactly 0 (hf_px.training).",
    )
    p.add_argument("model", metavar="DIR", help="a checkpoint directory written by `hf-px prune`")
    p.add_argument("--epochs", type=parsing.positive_int, default=1, metavar="N")
    p.add_argument("--lr", type=float, default=1e-4, metavar="LR", help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="W")
    parsing.data_args(p, required=False)
    p.add_argument("--num-samples", type=parsing.positive_int, metavar="N", help="cap the images")
    parsing.output_args(p, "DIR-ft beside the input")
    parsing.loading(p)
    parsing.common(p)
    p.set_defaults(func=run_finetune)
