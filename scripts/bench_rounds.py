"""How a PX prune run scales with rounds and calibration batches, and what each
method costs per batch relative to SNIP, on the small models of bench_quality.

    python scripts/bench_rounds.py [--quick] [--families resnet vit convnext]
        [--rounds 1 10 100] [--batches 1 2 4] [--batch-size 25] [--profile]

Digits calibration batches (``--batch-size`` images each) at the families'
bench_quality input sizes; one thread. Times are process CPU seconds
(``time.process_time``: on a shared machine wall time measures the neighbours),
best of ``--repeats``. Prints one JSON object:

* ``scaling`` — PX prune at 90% for every rounds × batches pair: total seconds
  and seconds per round per batch;
* ``per_batch`` — one `compute_scores` pass per method on the largest batch
  count, seconds per batch and the ratio to SNIP's in the same run;
* ``profile`` (``--profile``) — the functions with the most cumulative time in a
  10-round PX run, to spot work repeated every round.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import FULL, build, load_digits_data  # noqa: E402

from hf_px import compute_scores, prune  # noqa: E402

SCORING = {
    "snip": ("snip", {}),
    "grasp": ("grasp", {}),
    "synflow": ("synflow", {}),
    "px": ("px", {}),
    "px-rms": ("px", {"bn": "rms"}),
}


def calibration(family: str, n_batches: int, batch_size: int):
    size = FULL["size"][family]
    train, _, _ = load_digits_data(size, 1, batch_size)
    return train[:n_batches]


def cpu_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def variants(family: str) -> list[str]:
    return ["px", "px-rms"] if family == "resnet" else ["px"]


def scaling(family, rounds_list, batches_list, batch_size, repeats):
    rows = []
    model = build(family, FULL["size"][family], 0)
    for variant in variants(family):
        opts = SCORING[variant][1]
        for nb in batches_list:
            data = calibration(family, nb, batch_size)
            for r in rounds_list:
                reps = repeats if r < 100 else 1
                t = cpu_time(
                    lambda r=r, data=data, opts=opts: prune(
                        copy.deepcopy(model), data, 0.9, "px", rounds=r, **opts
                    ),
                    reps,
                )
                rows.append(
                    {
                        "family": family,
                        "method": variant,
                        "rounds": r,
                        "batches": nb,
                        "batch_size": batch_size,
                        "cpu_s": round(t, 4),
                        "cpu_s_per_round_batch": round(t / (r * nb), 5),
                    }
                )
    return rows


def per_batch(family, n_batches, batch_size, repeats):
    model = build(family, FULL["size"][family], 0)
    data = calibration(family, n_batches, batch_size)
    names = [m for m in SCORING if m != "px-rms" or family == "resnet"]
    out = {}
    for name in names:
        method, opts = SCORING[name]
        compute_scores(model, data[:1], method=method, **opts)  # warm-up
        t = cpu_time(lambda m=method, o=opts: compute_scores(model, data, method=m, **o), repeats)
        out[name] = t / n_batches
    snip = out["snip"]
    return [
        {
            "family": family,
            "method": m,
            "cpu_s_per_batch": round(t, 5),
            "ratio_to_snip": round(t / snip, 2),
        }
        for m, t in out.items()
    ]


def profile(family, batch_size, rounds=10, n_batches=2, **opts):
    model = build(family, FULL["size"][family], 0)
    data = calibration(family, n_batches, batch_size)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    prune(model, data, 0.9, "px", rounds=rounds, **opts)
    prof.disable()
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "hf_px" in file or "torch/nn/modules/module.py" in file and fn == "_call_impl":
            rows.append(
                {
                    "function": f"{Path(file).name}:{line}:{fn}",
                    "calls": nc,
                    "cumulative_s": round(ct, 4),
                    "share": round(ct / total, 3) if total else 0.0,
                }
            )
    rows.sort(key=lambda r: -r["cumulative_s"])
    return {
        "family": family,
        "rounds": rounds,
        "batches": n_batches,
        "total_s": total,
        "top": rows[:25],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--families", nargs="+", default=["resnet", "vit", "convnext"])
    p.add_argument("--rounds", nargs="+", type=int, default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rounds = a.rounds or ([1, 2] if a.quick else [1, 10, 100])
    batches = a.batches or ([1, 2] if a.quick else [1, 2, 4])
    repeats = a.repeats or (1 if a.quick else 3)
    result = {"threads": 1, "sparsity": 0.9, "scaling": [], "per_batch": []}
    for f in a.families:
        result["scaling"] += scaling(f, rounds, batches, a.batch_size, repeats)
        result["per_batch"] += per_batch(f, max(batches), a.batch_size, repeats)
        if a.profile:
            result.setdefault("profile", []).append(profile(f, a.batch_size))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
