"""The global threshold of one pruning round on a model's score tensors: the CPU
selection hf-px uses (`keep_top`: sampled bracket, numpy) against one `kthvalue`
over every score (`keep_top_torch`, the device path), same masks asserted.

    python scripts/bench_threshold.py [--model vit-base] [--density 0.5 0.1] [--repeats 3]

Random scores on the model's prunable shapes (random init, no forward pass), a
random kept set at `--density` (a prune's mid- and end-point at 90%), keep 97.7%
of the kept (one round of a 100-round schedule to 90%). One thread; process CPU
seconds, best of ``--repeats``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench_models import build  # noqa: E402

from hf_px.adapters import get_adapter  # noqa: E402
from hf_px.masks.threshold import keep_top, keep_top_torch  # noqa: E402


def best_cpu(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit-base")
    p.add_argument("--density", nargs="+", type=float, default=[0.5, 0.1])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = build(a.model, 224, 1000)
    params = get_adapter(model).prunable_parameters(model, ())
    g = torch.Generator().manual_seed(0)
    rows = []
    for d in a.density:
        values = [torch.rand(p.numel(), generator=g) for p in params.values()]
        alive = [torch.rand(p.numel(), generator=g) < d for p in params.values()]
        k = int(0.977 * sum(int(x.sum()) for x in alive))
        t_new, new = best_cpu(lambda v=values, al=alive, k=k: keep_top(v, al, k), a.repeats)
        t_old, old = best_cpu(lambda v=values, al=alive, k=k: keep_top_torch(v, al, k), a.repeats)
        same = all(torch.equal(x, y) for x, y in zip(new, old, strict=True))
        rows.append(
            {
                "density": d,
                "scores": sum(v.numel() for v in values),
                "kept_before": sum(int(x.sum()) for x in alive),
                "k": k,
                "bracketed_cpu_s": round(t_new, 3),
                "kthvalue_cpu_s": round(t_old, 3),
                "speedup": round(t_old / t_new, 1),
                "same_masks": same,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"model": a.model, "threads": 1, "rows": rows}, indent=1))
    return 0 if all(r["same_masks"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
