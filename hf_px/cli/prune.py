"""``hf-px prune``: load → calibrate → (evaluate) → prune → (evaluate) → save → (push).

Every process computes; under ``accelerate launch``/``torchrun`` only the main
process writes the checkpoint, pushes, prints and shows progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from .. import calibration, distributed
from ..card import CalibrationRecord, Evaluation
from ..config import SCOPES
from ..methods import METHODS, px
from ..methods.options import declared, parse_text
from ..pruning import check_request
from ..refs import public_name
from . import common, output, parsing
from .resolve import (
    default_output_dir,
    is_shipped,
    load,
    model_name,
    resolve,
    size_on_disk,
    source_info,
)


def run_prune(args: argparse.Namespace) -> int:
    return common.report(args, _prune, _print_summary)


def _check_args(args: argparse.Namespace) -> Path:
    """Everything that can be refused before loading anything."""
    from ..methods import get_method

    get_method(args.method)
    common.error_if(
        args.private and not args.push_to_hub,
        "--private only applies with --push-to-hub REPO_ID; add it or drop --private",
    )
    for o in _option_flags():
        common.error_if(
            getattr(args, o.dest) is not None and args.method != o.method,
            f"{o.flag} only applies to --method {o.method} (got --method {args.method}); "
            f"drop {o.flag}",
        )
    common.error_if(
        bool(args.eval_dataset or args.eval_split or args.eval_samples) and not args.eval,
        "--eval-dataset/--eval-split/--eval-samples only apply with --eval; add --eval",
    )
    out_dir = (
        Path(args.output_dir) if args.output_dir else default_output_dir(args.model, args.sparsity)
    )
    common.check_destination(args, out_dir, [args.model, args.dataset, args.eval_dataset])
    common.resolve_splits(args, with_eval=args.eval)  # a missing split: before loading
    _refuse_unsupported(args.model)
    return out_dir


def _refuse_unsupported(reference: str) -> None:
    """A model type hf-px refuses is refused from its config alone, before any weight loads."""
    from transformers import AutoConfig

    from ..adapters import check_supported

    try:
        config = AutoConfig.from_pretrained(resolve(reference))
    except (OSError, ValueError):  # unreadable here: loading reports it, with its own fix
        return
    check_supported(config)


def _prune(args: argparse.Namespace) -> dict[str, Any] | None:
    """The command's steps in the order the user sees them (check, load, calibrate,
    evaluate, prune, evaluate, save, push), each a phase with its timing.

    Longer than most on purpose: the steps hand each other the model, the data and the
    timings, and read top to bottom like the command's progress lines.
    """
    from ..methods import get_method

    t_start = time.perf_counter()
    out_dir = _check_args(args)
    timings: dict[str, float] = {}
    acc = common.accelerator()

    with output.phase(f"loading {model_name(args.model)}", timings, "load_s"):
        model, processor = load(args.model, args)
        model.eval()
        model.to(acc.device)
        distributed.check_same_weights(model, acc)  # every rank scores the same model
    check_request(model, args.sparsity, args.exclude)  # before any data is read
    # after loading, so that a wrong model id or a non-image model is what gets reported
    common.error_if(
        get_method(args.method).needs_data and args.dataset is None and not is_shipped(args.model),
        f"--method {args.method} scores the weights on data; pass --dataset with images like "
        "the model's own (a Hub dataset id, an image folder or a save_to_disk directory) — "
        "only the shipped px-digits-resnet defaults to the built-in digits",
    )
    data_proc = common.data_processor(model, processor)

    batches, calib_info = _calibration(args, data_proc, model.config, acc, timings)

    evaluation: dict[str, Any] | None = None
    record: Evaluation | None = None
    if args.eval:
        eval_ref = args.eval_dataset or args.dataset
        with output.phase("evaluating the dense model", timings, "eval_dense_s"):
            data = common.eval_data(
                eval_ref,
                model,
                processor=data_proc,
                dataset_config=args.dataset_config if eval_ref == args.dataset else None,
                split=args.eval_split,
                image_column=args.image_column,
                label_column=args.label_column,
                batch_size=args.batch_size,
                num_samples=args.eval_samples,
                seed=args.seed,
            )
            dense = common.evaluate(model, data, acc)

    result = _run_pruning(model, batches, args, acc)
    timings.update({k: round(v, 3) for k, v in result.timings.items()})
    output.completed(
        model=args.model,
        method=result.config.method,
        requested_sparsity=args.sparsity,
        sparsity=result.sparsity,
        num_prunable=result.num_prunable,
        num_pruned=result.num_pruned,
        timings=timings,
    )
    if args.recalibrate_bn:
        from .. import recalibrate_batchnorm

        # every rank holds the full batch list, so every rank gets the same statistics
        with output.phase("re-estimating BatchNorm statistics", timings, "recalibrate_bn_s"):
            if recalibrate_batchnorm(model, batches):
                calib_info = dataclasses.replace(calib_info, batchnorm_recalibrated=True)

    if args.eval:
        with output.phase("evaluating the pruned model", timings, "eval_pruned_s"):
            pruned = common.evaluate(model, data, acc)
        record = common.evaluation_record(eval_ref, data, dense, pruned)
        evaluation = _evaluation_json(record, dense, pruned)
        output.completed(evaluation=evaluation)

    url = None
    if acc.is_main_process:
        out_dir, url = common.save_and_push(
            args,
            model,
            out_dir,
            result,
            processor,
            timings,
            source=source_info(args.model),
            calibration=calib_info,
            evaluation=record,
        )
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    return _summary(args, result, out_dir, acc, timings, calib_info, evaluation, url)


def _calibration(
    args: argparse.Namespace, data_proc: Any, model_config: Any, acc: Any, timings: dict
) -> tuple[list[dict], CalibrationRecord]:
    """The calibration batches on this process's device, and what the checkpoint records
    of them."""
    from ..methods import get_method

    needs_labels = get_method(args.method).needs_labels
    with output.phase("preparing calibration data", timings, "calibration_data_s"):
        batches = calibration.load_calibration_batches(
            args.dataset,
            image_processor=data_proc,
            dataset_config=args.dataset_config,
            split=args.split or "train",
            image_column=args.image_column,
            label_column=args.label_column,
            num_samples=args.num_samples,
            examples_per_class=args.examples_per_class,
            batch_size=args.batch_size,
            seed=args.seed,
            need_labels=needs_labels,
            model_config=model_config if needs_labels else None,  # the model's class ids
        )
        batches = distributed.move_batches(batches, acc.device)
    calib_info = CalibrationRecord(
        dataset=public_name(args.dataset) or calibration.DEFAULT_DATASET,
        config=args.dataset_config,
        split=args.split or "train",
        num_samples=sum(int(b["pixel_values"].shape[0]) for b in batches),
        examples_per_class=args.examples_per_class,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return batches, calib_info


def _evaluation_json(record: Evaluation, dense: dict, pruned: dict) -> dict[str, Any]:
    """The ``evaluation`` of ``--json``: its flat ``*_before``/``*_after`` keys as ever."""
    return {
        "dataset": record.dataset,
        "split": record.split,
        "num_samples": record.num_samples,
        "accuracy_before": record.accuracy_dense,
        "accuracy_after": record.accuracy_pruned,
        "loss_before": record.loss_dense,
        "loss_after": record.loss_pruned,
        "dense": dense,
        "pruned": pruned,
    }


def _calibration_json(record: CalibrationRecord) -> dict[str, Any]:
    """The ``calibration`` of ``--json``: every field the command sets, None when unset."""
    keys = ("dataset", "config", "split", "num_samples", "examples_per_class", "batch_size", "seed")
    out = {k: getattr(record, k) for k in keys}
    if record.batchnorm_recalibrated:
        out["batchnorm_recalibrated"] = True
    return out


def _summary(args, result, out_dir, acc, timings, calib_info, evaluation, url) -> dict[str, Any]:
    """What `--json` prints and the human summary reads."""
    per_tensor = result.per_tensor_sparsity
    return {
        "model": args.model,
        "output_dir": str(out_dir),
        "method": result.config.method,
        "px_form": dict(zip(("form", "why"), getattr(args, "px_form_used", ()), strict=False)),
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
        "calibration": _calibration_json(calib_info),
        "evaluation": evaluation,
        "pushed_to": url,
        "num_processes": acc.num_processes,
        "timings": timings,
        "config": result.config.to_dict(),
    }


def _run_pruning(model: Any, batches: list[dict], args: argparse.Namespace, acc: Any):
    from ..pruning import prune

    options = _method_options(args)
    if args.method == "px":  # the summary says which PX: the default follows the weights
        args.px_form_used = px.form_choice(model, options)
    if args.min_density_ratio is not None:
        options["min_density_ratio"] = args.min_density_ratio
    refreshes = [0]
    with output.bar(
        total=args.rounds,
        desc=f"pruning ({args.method})",
        unit="round",
        bar_format=output.OWN_ETA_FORMAT,
    ) as bar:

        def on_round(info: dict[str, Any]) -> None:
            if bar.total is None:
                bar.total = int(info["rounds"])
            # prune's ETA knows which rounds to come recompute PX's data side
            post = {"eta": output.duration(info["eta_s"]), "density": f"{info['density']:.4f}"}
            if "data_refreshed" in info:  # px: rounds that recomputed the data side
                refreshes[0] += bool(info["data_refreshed"])
                post["data_passes"] = refreshes[0]
            bar.set_postfix(post, refresh=False)
            bar.update(1)

        return prune(
            model,
            batches,
            args.sparsity,
            method=args.method,
            rounds=args.rounds,
            scope=args.scope,
            exclude=args.exclude,
            seed=args.seed,
            accelerator=acc,
            callback=on_round,
            **options,
        )


def _print_summary(s: dict[str, Any]) -> None:
    say, pct = output.say, output.pct
    rounds = f"{s['rounds']} round{'s' if s['rounds'] != 1 else ''}"
    form = f", form {s['px_form']['form']}: {s['px_form']['why']}" if s.get("px_form") else ""
    say(f"pruned {s['model']} with {s['method']} ({rounds}, {s['scope']}{form})")
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
        f"  wrote {s['output_dir']} ({s['format']}, {output.human_size(s['size_on_disk_bytes'])})"
        f" in {s['timings'].get('total_s', 0):.1f} s"
    )
    if s.get("pushed_to"):
        say(f"  pushed: {s['pushed_to']}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px prune`` and its arguments."""
    p = subparsers.add_parser(
        "prune",
        help="prune a model and write a sparse checkpoint",
        description="Score every Conv/Linear weight on calibration data, prune to "
        "the requested sparsity and write a checkpoint that from_pretrained loads.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="Hub id, local model directory, or a model hf-px ships (px-digits-resnet)",
    )
    p.add_argument(
        "--sparsity",
        type=parsing.fraction,
        required=True,
        metavar="S",
        help="fraction of prunable weights to remove, in (0, 1), e.g. 0.9",
    )
    _method_args(p)
    parsing.data_args(p, required=False)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-samples", type=parsing.positive_int, metavar="N")
    size.add_argument(
        "--examples-per-class",
        type=parsing.positive_int,
        metavar="K",
        help="class-balanced calibration subset (the paper: 10)",
    )
    parsing.output_args(p, "./<model-name>-px<sparsity%%>")
    _eval_and_push_args(p)
    parsing.loading(p)
    parsing.common(p)
    p.set_defaults(func=run_prune)


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=list(METHODS), default="px")
    p.add_argument(
        "--rounds",
        type=parsing.positive_int,
        metavar="N",
        help="pruning rounds (default: the method's own: px/synflow 100, others 1)",
    )
    p.add_argument("--scope", choices=SCOPES, default="global")
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="REGEX",
        help="never prune parameters whose name matches (repeatable)",
    )
    _add_option_flags(p)
    p.add_argument(
        "--min-density-ratio",
        type=parsing.unit_interval,
        metavar="R",
        help="collapse guard: no tensor drops below R x the target density "
        "(default: the library's 0.1; 0 = reference behaviour)",
    )
    p.add_argument(
        "--no-recalibrate-bn",
        dest="recalibrate_bn",
        action="store_false",
        help="keep the dense model's BatchNorm running statistics (default: re-estimate "
        "them on the calibration data after pruning)",
    )


class _Flag(NamedTuple):
    method: str
    options: type  # the method's MethodOptions dataclass
    field: dataclasses.Field
    flag: str  # --<method>-<option>, underscores as dashes
    dest: str


def _option_flags() -> list[_Flag]:
    """A flag for every option every method declares."""
    return [
        _Flag(m.name, m.options, f, f"--{m.name}-{f.name}".replace("_", "-"), f"{m.name}_{f.name}")
        for m in METHODS.values()
        for f in declared(m.options)
    ]


def _add_option_flags(p: argparse.ArgumentParser) -> None:
    """The method flags, generated from each method's options declaration: its help,
    choices and checks (the library's own, so a value is refused by the same rule)."""
    for o in _option_flags():
        meta = o.field.metadata
        kwargs: dict[str, Any] = {"dest": o.dest, "help": meta["help"], "default": None}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["type"] = parsing.library_checked(partial(parse_text, o.options, o.field.name))
            kwargs["metavar"] = meta["metavar"] or meta["kind"].__name__.upper()
        p.add_argument(o.flag, **kwargs)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``--method`` given as flags, by option name."""
    return {
        o.field.name: getattr(args, o.dest)
        for o in _option_flags()
        if o.method == args.method and getattr(args, o.dest) is not None
    }


def _eval_and_push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval",
        action="store_true",
        help="top-1 accuracy before and after pruning (on --eval-dataset/--eval-split)",
    )
    p.add_argument(
        "--eval-dataset",
        metavar="NAME_OR_PATH",
        help="labelled data for --eval (default: --dataset, or the built-in digits)",
    )
    p.add_argument(
        "--eval-split",
        metavar="S",
        help="split for --eval (default: train; name the held-out one, e.g. test)",
    )
    p.add_argument(
        "--eval-samples", type=parsing.positive_int, metavar="N", help="cap --eval images"
    )
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the checkpoint afterwards")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
