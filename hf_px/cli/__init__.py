"""The `hf-px` command line (see `hf-px --help`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .main import run

    return run(sys.argv[1:] if argv is None else argv)
