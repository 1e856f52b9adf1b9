"""``hf-px push``: upload a checkpoint folder to the Hub (token never printed)."""

from __future__ import annotations

import argparse
import sys
import time

from ..hub import push_to_hub
from . import output, parsing


def run_push(args: argparse.Namespace) -> int:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with output.stdout_to_stderr():
        with output.phase(f"uploading {args.dir} to {args.repo_id}", timings, "push_s"):
            url = push_to_hub(
                args.dir,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                create_pr=args.create_pr,
            )
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    if args.json:
        output.emit_json(
            {"folder": args.dir, "repo_id": args.repo_id, "url": url, "timings": timings},
            sys.stdout,
        )
    else:
        output.say(url)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px push`` and its arguments."""
    p = subparsers.add_parser(
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
    parsing.common(p)
    p.set_defaults(func=run_push)
