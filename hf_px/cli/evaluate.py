"""``hf-px eval``: top-1 accuracy and loss with the model's own label mapping."""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import output
from .prune import _accelerator, _calibration_module, _evaluate, _split_of
from .resolve import load, model_name


def run_eval(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr(args.json) as stdout:
        summary = _eval(args)
        if summary is None:
            return 0
        if args.json:
            output.emit_json(summary, stdout)
        else:
            ev = summary["evaluation"]
            output.say(
                f"{summary['model']} on {summary['dataset']} [{summary['split'] or 'default split'}]: "
                f"top-1 {output.pct(ev['accuracy'])} ({ev['correct']}/{ev['num_samples']}), "
                f"loss {ev['loss']:.4f}"
            )
    return 0


def _eval(args: argparse.Namespace) -> dict[str, Any] | None:
    calibration = _calibration_module()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    accelerator = _accelerator()
    with output.phase(f"loading {model_name(args.model)}", timings, "load_s"):
        model, processor = load(args.model, args)
        model.eval()
        model.to(accelerator.device)
    split = {"split": args.split} if args.split else {}
    with output.phase("preparing evaluation data", timings, "data_s"):
        batches = calibration.load_labelled_batches(
            args.dataset,
            image_processor=processor,
            dataset_config=args.dataset_config,
            image_column=args.image_column,
            label_column=args.label_column,
            batch_size=args.batch_size,
            num_samples=args.num_samples,
            seed=args.seed,
            **split,
        )
    with output.phase("evaluating", timings, "eval_s"):
        result = _evaluate(model, batches, accelerator)
    if not accelerator.is_main_process:
        return None
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    return {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split or _split_of(batches),
        "evaluation": result,
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "num_samples": result["num_samples"],
        "timings": timings,
    }
