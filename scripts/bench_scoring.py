"""Time per batch and peak RSS of `compute_scores` (px, snip, synflow) on full-size
configs, CPU. Each (model, method) runs in its own process so peak RSS is its own.

    python scripts/bench_scoring.py [--models resnet50 vit-base] [--batch-size 8]
        [--image-size 64] [--batches 2] [--repeats 2]

Prints one JSON object. `extra_rss_mb` = peak RSS minus RSS after building the
model and data; the px/snip ratios compare the same run.

``--prune-rounds R`` measures a whole `prune` to 90% instead of scoring calls:
every method with its own rounds (snip: 1, synflow/px: R), px with its default
options; ``s_per_batch`` is then the prune's seconds per batch, ``rounds`` and
``timings`` (the prune's phases) are added.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model_name, method, image_size, batch_size, n_batches, repeats, options, rounds=0):
    import torch

    sys.path.insert(0, HERE)
    from _bench_models import batches, build

    from hf_px import compute_scores, prune

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = build(model_name, image_size)
    data = batches(n_batches, batch_size, image_size)
    base = _rss_mb()
    if rounds:
        r = rounds if method in ("px", "synflow") else 1
        t0 = time.perf_counter()
        result = prune(model, data, 0.9, method, rounds=r, **options)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "s_per_batch": (time.perf_counter() - t0) / n_batches,
            "rounds": r,
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "peak_rss_mb": peak,
            "extra_rss_mb": peak - base,
        }
    compute_scores(model, data[:1], method=method, **options)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_scores(model, data, method=method, **options)
        times.append((time.perf_counter() - t0) / n_batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_batch": min(times), "peak_rss_mb": peak, "extra_rss_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit-base"])
    ap.add_argument("--methods", nargs="+", default=["px", "snip", "synflow"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prune-rounds", type=int, default=0, metavar="R")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, method, opts = args.child
        res = child(
            name,
            method,
            args.image_size,
            args.batch_size,
            args.batches,
            args.repeats,
            json.loads(opts),
            args.prune_rounds,
        )
        print(json.dumps(res))
        return
    runs = []
    for name in args.models:
        variants = [(m, {}) for m in args.methods]
        if name.startswith("resnet") and "px" in args.methods:
            variants += [("px", {"bn": "reference"}), ("px", {"bn": "rms"})]
        if args.prune_rounds and "px" in args.methods:
            variants.append(("px", {"refresh": "every"}))  # the full recompute
        out = {}
        for method, opts in variants:
            cmd = [sys.executable, __file__, "--child", name, method, json.dumps(opts)]
            cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
            cmd += ["--batches", str(args.batches), "--repeats", str(args.repeats)]
            cmd += ["--prune-rounds", str(args.prune_rounds)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            key = method + (
                "" if not opts else "[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]"
            )
            out[key] = res
        ratios = {
            f"{k}/snip_time": out[k]["s_per_batch"] / out["snip"]["s_per_batch"]
            for k in out
            if k.startswith("px") and "snip" in out
        }
        ratios.update(
            {
                f"{k}/snip_extra_rss": out[k]["extra_rss_mb"]
                / max(out["snip"]["extra_rss_mb"], 1e-9)
                for k in out
                if k.startswith("px") and "snip" in out
            }
        )
        runs.append({"model": name, "methods": out, "ratios": ratios})
    print(
        json.dumps(
            {
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "batches": args.batches,
                "threads": int(os.environ.get("BENCH_THREADS", "2")),
                "prune_rounds": args.prune_rounds,
                "cpu_count": os.cpu_count(),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
