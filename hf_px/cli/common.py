"""Steps shared by the commands: the pieces of hf-px they need, data and evaluation."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import calibration, distributed
from ..card import Evaluation
from ..checkpoint import check_output_dir, save_pruned
from ..hub import check_push_target, push_to_hub
from ..refs import local_dir, public_name
from . import output
from .resolve import resolve, size_on_disk

logger = logging.getLogger(__name__)


def report(
    args: Any,
    compute: Callable[[Any], dict[str, Any] | None],
    print_summary: Callable[[dict[str, Any]], None],
) -> int:
    """Run a command's `compute` (whatever it prints goes to stderr); the main process
    prints its summary on stdout, as one JSON object with ``--json``, else as text."""
    with output.stdout_to_stderr():
        summary = compute(args)
    if summary is None:  # not the main process
        return 0
    if args.json:
        output.emit_json(summary, sys.stdout)
    else:
        print_summary(summary)
    return 0


def check_destination(args: Any, out_dir: Path, inputs: list[str | None]) -> None:
    """What saving and pushing need, checked before any work: the output directory free,
    writable and outside every local input (model, data); the push target valid and
    reachable in principle (``--push-to-hub``: id, not offline, a token)."""
    dirs = []
    for ref in inputs:
        path = local_dir(resolve(ref)) if ref else None
        if path is not None:
            dirs.append(path.resolve())
    check_output_dir(out_dir, args.overwrite, dirs)
    if getattr(args, "push_to_hub", None):
        check_push_target(args.push_to_hub)


def save_and_push(
    args: Any,
    model: Any,
    out_dir: Path,
    result: Any,
    processor: Any,
    timings: dict[str, float],
    **card: Any,
) -> tuple[Path, str | None]:
    """Write the checkpoint (``--format``, ``--overwrite``; `card`: what the model card
    shows) and upload it with ``--push-to-hub``; (the folder written, the Hub URL)."""
    with output.phase(f"saving to {out_dir}", timings, "save_s"):
        out_dir = save_pruned(
            model,
            out_dir,
            result,
            image_processor=processor,
            format=args.format,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,  # known before saving: the card is written once
            **card,
        )
    # a failed push still reports (and keeps) the checkpoint written
    output.completed(
        output_dir=str(out_dir),
        format=args.format,
        size_on_disk_bytes=size_on_disk(out_dir),
        pushed_to=None,
    )
    url = None
    if args.push_to_hub:
        with output.phase(f"uploading to {args.push_to_hub}", timings, "push_s"):
            url = push_to_hub(out_dir, args.push_to_hub, private=args.private)
    return out_dir, url


def accelerator():
    """The checked Accelerator (cpu=True for multi-process CPU launches); sets the main process."""
    acc = distributed.make_accelerator()
    output.set_main_process(acc.is_main_process)
    return acc


def data_processor(model: Any, processor: Any) -> Any:
    """The model's image processor, else the documented default at the model's size."""
    if processor is not None:
        return processor
    logger.warning(
        "the model has no image processor; preparing images with hf-px's default "
        "(bilinear resize to the config's image_size, ImageNet mean/std)"
    )
    return calibration.default_image_processor(getattr(model, "config", None))


@dataclass
class EvalData:
    batches: list[dict]  # labels are the model's class ids
    split: str


def evaluation_record(
    eval_ref: str | None, data: EvalData, dense: dict, pruned: dict
) -> Evaluation:
    """What the card and the checkpoint record of the two measurements (dense, pruned)."""
    return Evaluation(
        dataset=public_name(eval_ref) or calibration.DEFAULT_DATASET,
        split=data.split,
        num_samples=pruned["num_samples"],
        accuracy_dense=dense["accuracy"],
        loss_dense=dense["loss"],
        accuracy_pruned=pruned["accuracy"],
        loss_pruned=pruned["loss"],
    )


def eval_data(
    dataset: str | None,
    model: Any,
    *,
    processor: Any,
    dataset_config: str | None,
    split: str | None,
    image_column: str | None,
    label_column: str | None,
    batch_size: int,
    num_samples: int | None,
    seed: int,
) -> EvalData:
    """Labelled batches, their labels mapped to `model`'s class ids by name."""
    common: dict[str, Any] = {"dataset_config": dataset_config, "label_column": label_column}
    if split:
        common["split"] = split
    else:
        logger.warning(
            "evaluating on the train split, which may hold the model's own training "
            "images; name a held-out split (--split/--eval-split test) for a fair number"
        )
    batches = calibration.load_labelled_batches(
        dataset,
        image_processor=processor,
        image_column=image_column,
        batch_size=batch_size,
        num_samples=num_samples,
        seed=seed,
        model_config=getattr(model, "config", None),
        **common,
    )
    return EvalData(batches, split or "train")


def evaluate(model: Any, data: EvalData, acc: Any) -> dict[str, Any]:
    from ..evaluation import evaluate as _evaluate

    return _evaluate(model, data.batches, accelerator=acc)


def resolve_splits(args: Any, *, with_eval: bool) -> None:
    """Check ``--split`` (and ``--eval-split`` when `with_eval`) against the data before the
    model loads; a saved single Dataset's own split name replaces an unnamed default."""
    args.split = calibration.resolve_split(args.dataset, args.dataset_config, args.split)
    if with_eval:
        same = args.eval_dataset in (None, args.dataset)
        args.eval_split = calibration.resolve_split(
            args.eval_dataset or args.dataset,
            args.dataset_config if same else None,
            args.eval_split,
        )


def error_if(condition: bool, message: str) -> None:
    if condition:
        from ..errors import HfPxError

        raise HfPxError(message)


__all__ = [
    "EvalData",
    "accelerator",
    "check_destination",
    "data_processor",
    "error_if",
    "eval_data",
    "evaluate",
    "report",
    "resolve_splits",
    "save_and_push",
]
