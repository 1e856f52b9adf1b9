"""``hf-px push``: upload a checkpoint folder to the Hub (token never printed)."""

from __future__ import annotations

import argparse
import time

from ..hub import push_to_hub
from . import output


def run_push(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr(args.json) as stdout:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
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
                stdout,
            )
        else:
            output.say(url)
    return 0
