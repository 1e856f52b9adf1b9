"""Argument parsing, dispatch and the error contract; the CLI never computes.

Exit codes: 0 success; 2 usage or input errors (argparse errors and
:class:`~hf_px.errors.HfPxError`); 1 failures (:class:`~hf_px.errors.HfPxFailure`
and anything unexpected); 130 interrupted. Every error is one line on stderr
(``hf-px: error: ...``), with a traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from .. import __version__
from ..config import FORMATS
from ..errors import HfPxError
from ..methods import METHODS

PROG = "hf-px"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (raised, so `run` owns the exit code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise HfPxError(f"{message}; see `{self.prog} --help`")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 < value < 1.0):
        hint = f" (did you mean {value / 100:g}?)" if 1.0 <= value < 100.0 else ""
        raise argparse.ArgumentTypeError(
            f"must be a fraction in (0, 1), e.g. 0.9 for 90%; got {text}{hint}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _refresh(text: str) -> str | float:
    if text == "every":
        return text
    try:
        return _fraction(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'every' or a fraction in (0, 1) such as 0.3, got {text!r}"
        ) from None


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object on stdout and nothing else (logs go to stderr)",
        )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info logs")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _loading(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loading")
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also read pickle (.bin) weights; they can run code, so only for trusted models",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own Python code (trusted models only)",
    )


def _data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        required=required,
        metavar="NAME_OR_PATH",
        help="Hub dataset id, image folder (class_name/*.png) or save_to_disk directory"
        + ("" if required else "; default: the built-in offline digits images"),
    )
    g.add_argument("--dataset-config", metavar="C", help="dataset configuration name")
    g.add_argument(
        "--split",
        metavar="S",
        help="dataset split (default: train; for eval name the held-out one, e.g. test)",
    )
    g.add_argument("--image-column", metavar="C", help="image column (default: detected)")
    g.add_argument("--label-column", metavar="C", help="label column (default: detected)")
    g.add_argument("--batch-size", type=_positive_int, default=32, metavar="B")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="sampling/pruning seed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="PX (Path eXclusion) pruning for Hugging Face vision classifiers.",
        epilog="Run `hf-px COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # -- prune -----------------------------------------------------------------------------
    p = sub.add_parser(
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
        type=_fraction,
        required=True,
        metavar="S",
        help="fraction of prunable weights to remove, in (0, 1), e.g. 0.9",
    )
    p.add_argument("--method", choices=list(METHODS), default="px")
    p.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="pruning rounds (default: the method's own: px/synflow 100, others 1)",
    )
    p.add_argument("--scope", choices=("global", "layerwise"), default="global")
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="REGEX",
        help="never prune parameters whose name matches (repeatable)",
    )
    p.add_argument(
        "--px-bn",
        choices=("reference", "rms"),
        help="PX BatchNorm treatment in the auxiliary nets (default: reference)",
    )
    p.add_argument(
        "--px-refresh",
        type=_refresh,
        metavar="F|every",
        help="PX: recompute the data side once the kept density has fallen by F since the "
        "last recompute, reusing it in between (default: 0.3); 'every' = the paper's full "
        "recompute every round",
    )
    p.add_argument(
        "--min-density-ratio",
        type=_unit_interval,
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
    _data_args(p, required=False)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-samples", type=_positive_int, metavar="N")
    size.add_argument(
        "--examples-per-class",
        type=_positive_int,
        metavar="K",
        help="class-balanced calibration subset (the paper: 10)",
    )
    p.add_argument("--output-dir", metavar="DIR", help="default: ./<model-name>-px<sparsity%%>")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--format", choices=FORMATS, default="dense")
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
    p.add_argument("--eval-samples", type=_positive_int, metavar="N", help="cap --eval images")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the checkpoint afterwards")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    _loading(p)
    _common(p)
    p.set_defaults(handler="prune")

    # -- inspect ---------------------------------------------------------------------------
    p = sub.add_parser(
        "inspect",
        help="sparsity, pruning config, format and size of a checkpoint",
        description="Overall and per-tensor sparsity, the pruning config if "
        "present, the storage format and the size on disk.",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    _common(p)
    p.set_defaults(handler="inspect")

    # -- eval ------------------------------------------------------------------------------
    p = sub.add_parser(
        "eval",
        help="top-1 accuracy and loss on a labelled image dataset",
        description="Top-1 accuracy and mean cross-entropy with the model's own "
        "label mapping (data-set classes are matched to id2label by name).",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    _data_args(p, required=True)
    p.add_argument("--num-samples", type=_positive_int, metavar="N", help="cap the images")
    _loading(p)
    _common(p)
    p.set_defaults(handler="eval")

    # -- finetune --------------------------------------------------------------------------
    p = sub.add_parser(
        "finetune",
        help="train a pruned checkpoint with its masks fixed and save it",
        description="Train a directory written by `hf-px prune` on a labelled image "
        "dataset with transformers.Trainer; every pruned weight stays exactly 0 "
        "(hf_px.training). Runs data parallel under torchrun / accelerate launch.",
    )
    p.add_argument("model", metavar="DIR", help="a checkpoint directory written by `hf-px prune`")
    p.add_argument("--epochs", type=_positive_int, default=1, metavar="N")
    p.add_argument(
        "--learning-rate",
        "--lr",
        dest="learning_rate",
        type=float,
        default=1e-4,
        metavar="LR",
        help="peak learning rate (cosine decay to 0)",
    )
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="W")
    p.add_argument("--gradient-accumulation-steps", type=_positive_int, default=1, metavar="K")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (where supported)")
    _data_args(p, required=False)
    p.add_argument("--num-samples", type=_positive_int, metavar="N", help="cap the training images")
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
    p.add_argument("--output-dir", metavar="DIR", help="default: DIR-ft beside the input")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--format", choices=FORMATS, default="dense")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the checkpoint afterwards")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    _loading(p)
    _common(p)
    p.set_defaults(handler="finetune")

    # -- push ------------------------------------------------------------------------------
    p = sub.add_parser(
        "push",
        help="upload a checkpoint folder to the Hugging Face Hub",
        description="Create the repo if needed and upload DIR in one commit. The "
        "token comes from HF_TOKEN or `hf auth login`, and is never printed.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", metavar="R", help="branch to commit to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    _common(p)
    p.set_defaults(handler="push")
    return parser


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    if name == "prune":
        from .prune import run_prune

        return run_prune
    if name == "inspect":
        from .inspect_cmd import run_inspect

        return run_inspect
    if name == "eval":
        from .evaluate import run_eval

        return run_eval
    if name == "finetune":
        from .finetune import run_finetune

        return run_finetune
    from .push import run_push

    return run_push


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HF_PX_DEBUG", "") not in ("", "0")


def run(argv: list[str]) -> int:
    """Parse `argv`, run the command, map exceptions to (one line, exit code)."""
    debug = _wants_debug(argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        from .output import setup

        setup(quiet=args.quiet, debug=args.debug)
        return _handler(args.handler)(args)
    except HfPxError as exc:
        if debug:
            raise
        _error(str(exc))
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # the CLI's last line of defence: one line, exit 1
        if debug:
            raise
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        _error(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
