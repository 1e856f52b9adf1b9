"""The top-level parser, dispatch and the error contract; the CLI never computes.

Each command module registers its own sub-parser (``register``) and the function
that runs it (``func``).

Exit codes: 0 success; 2 usage or input errors (argparse errors and
:class:`~hf_px.errors.HfPxError`); 1 failures (:class:`~hf_px.errors.HfPxFailure`
and anything unexpected); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, which
unwinds like Ctrl-C so that partial output is removed). Every error is one line on stderr
(``hf-px: error: ...``), with a traceback only under ``--debug``; under ``--json`` stdout
also carries one JSON object: ``{"error", "exit_code"}`` and what the command completed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ..errors import HfPxError
from ..utils import env_flag
from ..version import __version__
from . import env_cmd, evaluate, finetune, inspect_cmd, output, parsing, prune, push, structured
from .parsing import PROG

COMMANDS = (
    prune,
    structured,
    inspect_cmd,
    evaluate,
    finetune,
    push,
    env_cmd,
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


def _fail(message: str, code: int, as_json: bool, *, interrupted: bool = False) -> int:
    """The error contract: one line on stderr; with ``--json`` one object on stdout."""
    line = _one_line(message)
    # an interrupt can land mid-way through drawing a bar: start the error on a line of its own
    fresh = "\n" if interrupted and output.progress_enabled() else ""
    sys.stderr.write(f"{fresh}{PROG}: error: {line}\n")
    sys.stderr.flush()
    if as_json and output.is_main():
        obj = {"error": line, "exit_code": code, **output.completed_fields()}
        output.emit_json(obj, sys.stdout)
    return code


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or env_flag("HF_PX_DEBUG")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every cleanup runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise Terminated()


def run(argv: list[str]) -> int:
    """Parse `argv`, run the command, map exceptions to (one line, exit code).

    Called in-process (tests, notebooks), it leaves ``os.environ`` and the ``hf_px``
    logger as it found them: the verbosity and progress-bar switches it sets are for
    this command only.
    """
    environ = dict(os.environ)
    log = logging.getLogger("hf_px")
    logger_state = (list(log.handlers), log.level, log.propagate)
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return _run(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, sigterm)
        output.restore_library_bars()
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        log.handlers[:], log.level, log.propagate = logger_state


def _run(argv: list[str]) -> int:
    debug = _wants_debug(argv)
    as_json = "--json" in argv  # before parsing: a usage error answers in JSON too
    output.forget_completed()
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        as_json = bool(getattr(args, "json", False))
        output.setup(quiet=args.quiet, debug=args.debug)
        return args.func(args)
    except HfPxError as exc:
        if debug:
            raise
        return _fail(str(exc), int(getattr(exc, "exit_code", 2)), as_json)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            return _fail("terminated", 128 + signal.SIGTERM, as_json, interrupted=True)
        return _fail("interrupted", 130, as_json, interrupted=True)
    except Exception as exc:  # the CLI's last line of defence: one line, exit 1
        if debug:
            raise
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        message = f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        return _fail(message, 1, as_json)
