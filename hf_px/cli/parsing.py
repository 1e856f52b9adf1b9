"""Argument types and groups the commands share; each command module owns the rest.

A command module (``cli/<command>.py``) has ``register(subparsers)``: it adds its
sub-parser and sets ``func`` to the function that runs it (as accelerate's
``commands/`` do). Choices come from the registries they name (methods, formats,
optimizers), never retyped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..config import FORMATS
from ..errors import HfPxError

PROG = "hf-px"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (raised, so `run` owns the exit code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise HfPxError(f"{message}; see `{self.prog} --help`")


def fraction(text: str) -> float:
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def library_checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a library parser: its one-line `HfPxError` becomes the
    flag's error, so a value is refused by the rule the library applies."""

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except HfPxError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return checked


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object on stdout and nothing else (logs go to stderr)",
        )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info logs")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def loading(p: argparse.ArgumentParser) -> None:
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


def data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
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
    g.add_argument("--batch-size", type=positive_int, default=32, metavar="B")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="sampling/pruning seed")


def output_args(p: argparse.ArgumentParser, default_dir: str) -> None:
    p.add_argument("--output-dir", metavar="DIR", help=f"default: {default_dir}")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--format", choices=FORMATS, default="dense")
