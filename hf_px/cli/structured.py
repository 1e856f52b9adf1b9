"""``hf-px prune-structured``: remove whole channels / neurons / heads; write a smaller model.

load → calibrate → (evaluate) → time → prune units → re-estimate BatchNorm → shrink →
(evaluate) → time → save. One process (no data-parallel scoring).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .. import calibration
from ..card import CalibrationRecord, Evaluation
from ..checkpoint import check_output_dir
from ..refs import public_name
from . import common, output, parsing
from .resolve import is_shipped, load, model_name

STRUCTURES = ("auto", "channels", "stream", "neurons", "heads", "blocks")


def run(args: argparse.Namespace) -> int:
    return common.report(args, _prune, _print_summary)


@torch.no_grad()
def latency_ms(model: Any, image_size: int, runs: int = 5) -> float:
    """Median wall time of one batch-1 forward (after one warm-up call), in ms."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, dtype=p.dtype, device=p.device)
    model(pixel_values=x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(pixel_values=x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _prune(args: argparse.Namespace) -> dict[str, Any]:
    """``hf-px prune-structured``'s steps: load, calibrate, (evaluate), remove units,
    shrink, (evaluate), save.

    Longer than most on purpose: the steps hand each other the model, the data and the
    timings, and read top to bottom like the command's progress lines.
    """
    from ..checkpoint.structured import save_structured
    from ..pruning import recalibrate_batchnorm
    from ..structured import METHODS, prune_structured, shrink

    t_start = time.perf_counter()
    method = METHODS[args.method]
    common.error_if(
        bool(args.eval_dataset or args.eval_split) and not args.eval,
        "--eval-dataset/--eval-split only apply with --eval; add --eval",
    )
    tag = f"{round(100 * args.remove, 4):g}"
    out_dir = Path(args.output_dir or f"{model_name(args.model)}-struct{tag}")
    check_output_dir(out_dir, args.overwrite)
    timings: dict[str, float] = {}
    with output.phase(f"loading {model_name(args.model)}", timings, "load_s"):
        model, processor = load(args.model, args)
        model.eval()
    common.error_if(
        method.needs_data and args.dataset is None and not is_shipped(args.model),
        f"--method {args.method} scores units on data; pass --dataset with images like the "
        "model's own (only the shipped px-digits-resnet defaults to the built-in digits)",
    )
    data_proc = common.data_processor(model, processor)
    with output.phase("preparing calibration data", timings, "calibration_data_s"):
        batches = calibration.load_calibration_batches(
            args.dataset,
            image_processor=data_proc,
            dataset_config=args.dataset_config,
            split=args.split or "train",
            image_column=args.image_column,
            label_column=args.label_column,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            need_labels=method.needs_labels,
            # Taylor's loss reads labels: the same class-name → id2label mapping as prune
            model_config=model.config if method.needs_labels else None,
        )
    image_size = int(batches[0]["pixel_values"].shape[-1])
    evaluation: dict[str, Any] = {}
    record: Evaluation | None = None
    if args.eval:
        eval_ref = args.eval_dataset or args.dataset
        with output.phase("evaluating the dense model", timings, "eval_dense_s"):
            data = common.eval_data(
                eval_ref,
                model,  # the dataset's labels mapped to the model's class ids by name
                processor=data_proc,
                dataset_config=args.dataset_config if eval_ref == args.dataset else None,
                split=args.eval_split,
                image_column=args.image_column,
                label_column=args.label_column,
                batch_size=args.batch_size,
                num_samples=None,
                seed=args.seed,
            )
            dense = common.evaluate(model, data, None)
            evaluation["accuracy_before"] = dense["accuracy"]
    latency: dict[str, Any] = {}
    if args.latency:
        latency["latency_b1_ms"] = {"before": latency_ms(model, image_size)}
    with output.phase(f"pruning units ({args.method})", timings, "prune_s"):
        result = prune_structured(
            model,
            batches,
            args.remove,
            target=args.target,
            structure=args.structure,
            method=args.method,
            rounds=args.rounds,
            uniform=args.uniform,
            round_to=args.round_to,
            seed=args.seed,
            image_size=image_size,
            **({"form": args.px_form} if args.method == "px" else {}),
        )
    recalibrated = bool(args.recalibrate_bn) and recalibrate_batchnorm(model, batches)
    shrink(model, result.groups, result.kept)
    if args.eval:
        with output.phase("evaluating the pruned model", timings, "eval_pruned_s"):
            record = common.evaluation_record(
                eval_ref, data, dense, common.evaluate(model, data, None)
            )
            evaluation["accuracy_after"] = record.accuracy_pruned
            evaluation["dataset"], evaluation["split"] = record.dataset, record.split
    if args.latency:
        latency["latency_b1_ms"]["after"] = latency_ms(model, image_size)
        latency["note"] = (
            f"batch 1, {image_size} px, {torch.get_num_threads()} threads, median of 5 "
            "forwards on the machine that pruned it, one run"
        )
    with output.phase(f"saving to {out_dir}", timings, "save_s"):
        out_dir = save_structured(
            model, out_dir, result, image_processor=processor, overwrite=args.overwrite,
            latency=latency, evaluation=record,
            calibration=CalibrationRecord(
                dataset=public_name(args.dataset) or calibration.DEFAULT_DATASET,
                config=args.dataset_config, split=args.split or "train",
                num_samples=sum(int(b["pixel_values"].shape[0]) for b in batches),
                batch_size=args.batch_size, seed=args.seed,
                batchnorm_recalibrated=True if recalibrated else None,
            ),
        )  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    from ..checkpoint.structured import load_units

    return {
        "output_dir": str(out_dir),
        "layout": load_units(out_dir)["layout"],
        "method": args.method,
        "px_form": result.config.get("px_form"),
        "structure": result.config["structure"],
        "target": args.target,
        "remove": args.remove,
        "removed": result.removed,
        "macs": {"before": result.macs[0], "after": result.macs[1]},
        "params": {"before": result.params[0], "after": result.params[1]},
        "widths": result.counts(),
        "latency": latency,
        "evaluation": evaluation,
        "timings": timings,
    }


def _print_summary(s: dict[str, Any]) -> None:
    form = f", form {s['px_form']['form']}: {s['px_form']['why']}" if s.get("px_form") else ""
    output.say(
        f"Removed {s['removed']['macs']:.1%} of MACs and {s['removed']['params']:.1%} of "
        f"parameters ({s['method']}, {'+'.join(s['structure'])}{form})."
    )
    lat = s["latency"].get("latency_b1_ms")
    if lat:
        output.say(f"Batch-1 latency: {lat['before']:.1f} ms -> {lat['after']:.1f} ms.")
    ev = s["evaluation"]
    if ev:
        output.say(f"Top-1: {ev['accuracy_before']:.2%} -> {ev['accuracy_after']:.2%}.")
    how = "plain transformers" if s["layout"] == "plain" else "needs `import hf_px` to load"
    output.say(f"Checkpoint: {s['output_dir']} ({how}).")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px prune-structured`` and its arguments."""
    from ..structured import METHODS, TARGETS
    from ..structured.scores import UNIT_FORMS

    p = subparsers.add_parser(
        "prune-structured",
        help="remove whole channels/neurons/heads and write a smaller, faster model",
        description="Score units (residual-block internal channels, MLP neurons, attention "
        "heads) with structured PX or a baseline, remove them physically and write a "
        "checkpoint that from_pretrained loads.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="Hub id, local model directory or px-digits-resnet"
    )
    p.add_argument(
        "--remove",
        type=parsing.fraction,
        required=True,
        metavar="F",
        help="fraction of the model's --target to remove, e.g. 0.5",
    )
    p.add_argument("--target", choices=TARGETS, default="macs")
    p.add_argument(
        "--structure",
        choices=STRUCTURES,
        default="auto",
        help="unit kind; auto = every width kind the family has (ResNet: channels and the "
        "residual streams; ConvNeXt: channels; ViT-shaped and Swin: neurons and heads; BEiT, "
        "data2vec-vision, Swin V2: neurons); blocks = whole residual blocks (ViT-shaped "
        "layers, ResNet/ConvNeXt blocks), pruned on its own and always a plain checkpoint "
        "(the config's depth)",
    )
    p.add_argument("--method", choices=list(METHODS), default="px")
    p.add_argument(
        "--px-form", choices=("auto", *UNIT_FORMS), default="auto",
        help="px unit score: auto = fisher (per-sample output gradients at the unit's gate) "
        "for weights loaded from a checkpoint, else the paper's bound",
    )  # fmt: skip
    p.add_argument("--rounds", type=parsing.positive_int, metavar="N", help="px/taylor: 10")
    p.add_argument(
        "--uniform",
        action="store_true",
        help="the same width in every layer (ViT/DeiT then load without hf-px)",
    )
    p.add_argument(
        "--round-to", type=parsing.positive_int, default=1, metavar="N",
        help="keep a multiple of N channels per layer (8: faster kernels); default 1",
    )  # fmt: skip
    p.add_argument(
        "--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
        help="keep the dense BatchNorm statistics",
    )  # fmt: skip
    p.add_argument("--no-latency", dest="latency", action="store_false")
    parsing.data_args(p, required=False)
    p.add_argument("--num-samples", type=parsing.positive_int, metavar="N")
    p.add_argument("--output-dir", metavar="DIR", help="default: ./<model-name>-struct<F%%>")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--eval", action="store_true", help="top-1 before and after")
    p.add_argument("--eval-dataset", metavar="NAME_OR_PATH")
    p.add_argument("--eval-split", metavar="S")
    parsing.loading(p)
    parsing.common(p)
    p.set_defaults(func=run)
