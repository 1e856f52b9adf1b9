"""``hf-px eval``: top-1 accuracy and loss with the model's own label mapping."""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import common, output, parsing
from .resolve import load, model_name


def run_eval(args: argparse.Namespace) -> int:
    return common.report(args, _eval, _print_summary)


def _print_summary(s: dict[str, Any]) -> None:
    output.say(
        f"{s['model']} on {s['dataset']} [{s['split']}]: top-1 {output.pct(s['accuracy'])} "
        f"({s['correct']}/{s['num_samples']}), loss {s['loss']:.4f}"
    )


def _eval(args: argparse.Namespace) -> dict[str, Any] | None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    common.resolve_splits(args, with_eval=False)  # a missing split: before loading
    acc = common.accelerator()
    with output.phase(f"loading {model_name(args.model)}", timings, "load_s"):
        model, processor = load(args.model, args)
        model.eval()
        model.to(acc.device)
    with output.phase("preparing evaluation data", timings, "data_s"):
        data = common.eval_data(
            args.dataset,
            model,
            processor=common.data_processor(model, processor),
            dataset_config=args.dataset_config,
            split=args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            batch_size=args.batch_size,
            num_samples=args.num_samples,
            seed=args.seed,
        )
    with output.phase("evaluating", timings, "eval_s"):
        result = common.evaluate(model, data, acc)
    if not acc.is_main_process:
        return None
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    return {
        "model": args.model,
        "dataset": args.dataset,
        "split": data.split,
        **result,
        "timings": timings,
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px eval`` and its arguments."""
    p = subparsers.add_parser(
        "eval",
        help="top-1 accuracy and loss on a labelled image dataset",
        description="Top-1 accuracy and mean cross-entropy with the model's own "
        "label mapping (data-set classes are matched to id2label by name).",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    parsing.data_args(p, required=True)
    p.add_argument("--num-samples", type=parsing.positive_int, metavar="N", help="cap the images")
    parsing.loading(p)
    parsing.common(p)
    p.set_defaults(func=run_eval)
