"""The top-level parser, dispatch and the error contract; the CLI never computes.

Each command module registers its own sub-parser (``register``) and the function
that runs it (``func``).

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

from .. import __version__
from ..errors import HfPxError
from . import evaluate, finetune, inspect_cmd, parsing, prune, push, structured
from .parsing import PROG

COMMANDS = (
    prune,
    structured,
    inspect_cmd,
    evaluate,
    finetune,
    push,
)  # the order `--help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = parsing.Parser(
        prog=PROG,
        description="PX (Path eXclusion) pruning for Hugging Face vision classifiers.",
        epilog="Run `hf-px COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parsing.Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HF_PX_DEBUG", "") not in ("", "0")


def run(argv: list[str]) -> int:
    """Parse `argv`, run the command, map exceptions to (one line, exit code).

    Called in-process (tests, notebooks), it leaves ``os.environ`` and the ``hf_px``
    logger as it found them: the verbosity and progress-bar switches it sets are for
    this command only.
    """
    environ = dict(os.environ)
    log = logging.getLogger("hf_px")
    logger_state = (list(log.handlers), log.level, log.propagate)
    try:
        return _run(argv)
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        log.handlers[:], log.level, log.propagate = logger_state


def _run(argv: list[str]) -> int:
    debug = _wants_debug(argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        from .output import setup

        setup(quiet=args.quiet, debug=args.debug)
        return args.func(args)
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
