"""Argument parsing and dispatch; the CLI never computes (it calls the library)."""

from __future__ import annotations

import argparse

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-px", description="PX pruning for HF vision models")
    parser.add_argument("--version", action="version", version=f"hf-px {__version__}")
    return parser


def run(argv: list[str]) -> int:
    build_parser().parse_args(argv)
    return 0
