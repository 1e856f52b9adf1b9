"""``hf-px prune``: load → calibrate → (evaluate) → prune → (evaluate) → save → (push).

Every process computes; under ``accelerate launch``/``torchrun`` only the main
process writes the checkpoint, pushes, prints and shows progress.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from . import output
from .resolve import (
    check_output_dir,
    default_output_dir,
    load,
    model_name,
    not_available,
    public_name,
    size_on_disk,
    source_info,
)

BUILTIN_DATA = "sklearn-digits"


def _calibration_module():
    try:
        from .. import calibration

        calibration.load_calibration_batches  # noqa: B018  (present in this build?)
    except (ImportError, AttributeError):
        raise not_available(
            "calibration data (hf_px.calibration.load_calibration_batches)"
        ) from None
    return calibration


def _save_pruned():
    try:
        from ..checkpoint import save_pruned
    except ImportError:
        raise not_available("writing checkpoints (hf_px.save_pruned)") from None
    return save_pruned


def _push_to_hub():
    try:
        from ..hub import push_to_hub
    except ImportError:
        raise not_available("--push-to-hub (hf_px.hub.push_to_hub)") from None
    return push_to_hub


def _accelerator():
    from ..calibration import make_accelerator

    accelerator = make_accelerator()
    output.set_main_process(accelerator.is_main_process)
    return accelerator


def _eval_batches(calibration, args: argparse.Namespace, processor: Any) -> list[dict]:
    dataset = args.eval_dataset or args.dataset
    split = {"split": args.eval_split} if args.eval_split else {}
    return calibration.load_labelled_batches(
        dataset,
        image_processor=processor,
        dataset_config=args.dataset_config if dataset == args.dataset else None,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        seed=args.seed,
        **split,
    )


def _label_names(batches: list[dict]) -> list[str] | None:
    """Class names a loader attached to its batches (``label_names``), if any."""
    for b in batches[:1]:
        names = b.get("label_names") if isinstance(b, dict) else None
        if names is not None:
            return [str(n) for n in names]
    return None


def _split_of(batches: list[dict]) -> str | None:
    """The split a loader reports in its batches (``split``), if it does."""
    return batches[0].get("split") if batches and isinstance(batches[0], dict) else None


def _evaluate(model: Any, batches: list[dict], accelerator: Any) -> dict[str, Any]:
    from ..evaluation import evaluate

    clean = [{k: b[k] for k in ("pixel_values", "labels")} for b in batches]
    return evaluate(model, clean, label_names=_label_names(batches), accelerator=accelerator)


def run_prune(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr(args.json) as stdout:
        summary = _prune(args)
        if summary is None:
            return 0
        if args.json:
            output.emit_json(summary, stdout)
        else:
            _print_summary(summary)
    return 0


def _prune(args: argparse.Namespace) -> dict[str, Any] | None:
    from ..methods import get_method

    t_start = time.perf_counter()
    method = get_method(args.method)
    out_dir = (
        Path(args.output_dir) if args.output_dir else default_output_dir(args.model, args.sparsity)
    )
    check_output_dir(out_dir, args.overwrite)
    if args.push_to_hub is None and args.private:
        from ..errors import HfPxError

        raise HfPxError(
            "--private only applies with --push-to-hub REPO_ID; add it or drop --private"
        )
    calibration = _calibration_module()
    _save_pruned()  # fail now, not after the pruning, when a piece is missing
    if args.push_to_hub:
        _push_to_hub()
    timings: dict[str, float] = {}
    accelerator = _accelerator()

    with output.phase(f"loading {model_name(args.model)}", timings, "load_s"):
        model, processor = load(args.model, args)
        model.eval()
        model.to(accelerator.device)

    with output.phase("preparing calibration data", timings, "calibration_data_s"):
        batches = calibration.load_calibration_batches(
            args.dataset,
            image_processor=processor,
            dataset_config=args.dataset_config,
            split=args.split or "train",
            image_column=args.image_column,
            label_column=args.label_column,
            num_samples=args.num_samples,
            examples_per_class=args.examples_per_class,
            batch_size=args.batch_size,
            seed=args.seed,
            need_labels=method.needs_labels,
        )
    n_images = sum(int(b["pixel_values"].shape[0]) for b in batches)

    evaluation: dict[str, Any] | None = None
    eval_batches: list[dict] = []
    if args.eval:
        with output.phase("evaluating the dense model", timings, "eval_dense_s"):
            eval_batches = _eval_batches(calibration, args, processor)
            dense = _evaluate(model, eval_batches, accelerator)
        evaluation = {
            "dataset": public_name(args.eval_dataset or args.dataset) or BUILTIN_DATA,
            "split": args.eval_split or _split_of(eval_batches),
            "dense": dense,
        }

    result = _run_pruning(model, batches, args, accelerator)
    timings.update({k: round(v, 3) for k, v in result.timings.items()})

    if args.eval:
        with output.phase("evaluating the pruned model", timings, "eval_pruned_s"):
            pruned = _evaluate(model, eval_batches, accelerator)
        # flat keys: what the model card reads (hf_px.card.write_card)
        evaluation.update(
            pruned=pruned,
            num_samples=pruned["num_samples"],
            accuracy_before=evaluation["dense"]["accuracy"],
            accuracy_after=pruned["accuracy"],
            loss_before=evaluation["dense"]["loss"],
            loss_after=pruned["loss"],
        )

    calib_info = {
        "dataset": public_name(args.dataset) or BUILTIN_DATA,
        "config": args.dataset_config,
        "split": args.split or "train",
        "num_samples": n_images,
        "examples_per_class": args.examples_per_class,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    url = None
    if accelerator.is_main_process:
        with output.phase(f"saving to {out_dir}", timings, "save_s"):
            saved = _save_pruned()(
                model,
                out_dir,
                result,
                image_processor=processor,
                format=args.format,
                overwrite=args.overwrite,
                source=source_info(args.model),
                calibration={k: v for k, v in calib_info.items() if v is not None},
                evaluation=evaluation,
            )
        out_dir = Path(saved)
        if args.push_to_hub:
            with output.phase(f"uploading to {args.push_to_hub}", timings, "push_s"):
                url = _push_to_hub()(out_dir, args.push_to_hub, private=args.private)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    per_tensor = result.per_tensor_sparsity
    return {
        "model": args.model,
        "output_dir": str(out_dir),
        "method": result.config.method,
        "rounds": result.config.rounds,
        "scope": result.config.scope,
        "requested_sparsity": args.sparsity,
        "sparsity": result.sparsity,
        "num_prunable": result.num_prunable,
        "num_pruned": result.num_pruned,
        "per_tensor_density": {n: 1.0 - s for n, s in per_tensor.items()},
        "min_tensor_density": min((1.0 - s for s in per_tensor.values()), default=None),
        "format": args.format,
        "size_on_disk_bytes": size_on_disk(out_dir),
        "calibration": calib_info,
        "evaluation": evaluation,
        "pushed_to": url,
        "num_processes": accelerator.num_processes,
        "timings": timings,
        "config": result.config.to_dict(),
    }


def _run_pruning(model: Any, batches: list[dict], args: argparse.Namespace, accelerator: Any):
    from .. import prune

    options: dict[str, Any] = {}
    if args.px_bn is not None:
        if args.method != "px":
            from ..errors import HfPxError

            raise HfPxError("--px-bn only applies to --method px; drop it")
        options["bn"] = args.px_bn
    if args.min_density_ratio is not None:
        options["min_density_ratio"] = args.min_density_ratio
    from ..calibration import move_batches

    batches = move_batches(batches, accelerator.device)
    rounds = args.rounds
    with output.bar(total=rounds, desc=f"pruning ({args.method})", unit="round") as bar:

        def on_round(info: dict[str, Any]) -> None:
            if bar.total is None:
                bar.total = int(info["rounds"])
            bar.set_postfix(density=f"{info['density']:.4f}", refresh=False)
            bar.update(1)

        return prune(
            model,
            batches,
            args.sparsity,
            method=args.method,
            rounds=rounds,
            scope=args.scope,
            exclude=args.exclude,
            seed=args.seed,
            accelerator=accelerator,
            callback=on_round,
            **options,
        )


def _print_summary(s: dict[str, Any]) -> None:
    say, pct = output.say, output.pct
    say(f"pruned {s['model']} with {s['method']} ({s['rounds']} rounds, {s['scope']})")
    say(
        f"  sparsity: {pct(s['sparsity'])} of {s['num_prunable']:,} prunable weights "
        f"(requested {pct(s['requested_sparsity'])}); "
        f"smallest tensor density {pct(s['min_tensor_density'])}"
    )
    ev = s.get("evaluation")
    if ev:
        d, p = ev["dense"], ev["pruned"]
        say(
            f"  top-1 on {ev['dataset']} [{ev['split']}], {d['num_samples']} images: "
            f"dense {pct(d['accuracy'])} -> pruned {pct(p['accuracy'])} "
            f"(loss {d['loss']:.3f} -> {p['loss']:.3f})"
        )
    say(
        f"  wrote {s['output_dir']} ({s['format']}, {output.human_size(s['size_on_disk_bytes'])}) "
        f"in {s['timings'].get('total_s', 0):.1f} s"
    )
    if s.get("pushed_to"):
        say(f"  pushed: {s['pushed_to']}")
