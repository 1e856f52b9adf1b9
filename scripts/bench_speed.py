"""Speed of structured-pruned models: dense vs physically smaller, same process.

    python scripts/bench_speed.py [--models vit-base resnet50 convnext-tiny]
        [--remove 0.25 0.5 0.75] [--method random] [--round-to 1 8] [--runs 5] [--threads 2]
        [--quick]

Random-init full-size configs at 224 px (``--quick``: tiny configs at 32 px, two
runs, 25 and 50% removed, for the tests). Each model is pruned with `hf_px.structured.prune_structured`
(every unit kind of its family, ``--target`` macs by default) to each ``--remove``
fraction and shrunk (`hf_px.structured.shrink`); the logits of the shrunk model are
checked against the masked one. Then, per run, every variant (dense first) is timed
in turn — batch-1 latency (``--b1-calls`` forwards, their mean) and batch-32
throughput (one forward) — so dense and pruned see the same machine load; the
figures are medians over ``--runs`` runs after one warm-up run. Wall time and
process CPU time are both reported: on a shared, oversubscribed machine the CPU time
(at one thread: the work the forward did) is the steadier of the two, and wall time
at two threads can be dominated by OpenMP threads waiting for a preempted sibling
(docs/structured.md). ``--method random``
(the default) removes the same fraction of every group, the shapes an `l1` or
``uniform`` prune gives; ``--method px`` (with ``--rounds``) scores on random
calibration images. ``--memory``: every variant is saved (``save_pretrained`` for dense,
`hf_px.checkpoint.save_structured` for the pruned ones) and loaded again in a fresh
interpreter per checkpoint (``import hf_px`` + ``from_pretrained``, then one batch-1
forward); its peak resident memory over what the imports alone held is the loaded
model's memory. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench_models import build  # noqa: E402

from hf_px.structured import FAMILY_KINDS, prune_structured, shrink  # noqa: E402
from hf_px.structured.units import model_type as name_type  # noqa: E402


def tiny(name: str):
    import transformers as t

    torch.manual_seed(0)
    if name == "vit-base":
        cfg = t.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=10,
        )
        return t.ViTForImageClassification(cfg).eval()
    if name == "resnet50":
        cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[64, 128], depths=[1, 1], num_labels=10)
        return t.ResNetForImageClassification(cfg).eval()
    if name == "convnext-tiny":
        cfg = t.ConvNextConfig(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10)
        return t.ConvNextForImageClassification(cfg).eval()
    raise ValueError(name)


# A fresh interpreter: resident memory over what the imports held, after from_pretrained
# and after one batch-1 forward. Peaks are VmHWM, the high-water mark of this process's
# own memory map: ru_maxrss would also carry the parent's peak across fork + exec.
LOAD = r"""
import json, sys
import torch
import hf_px  # a structured checkpoint whose widths the config cannot say needs the hook
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

torch.set_num_threads(int(sys.argv[3]))
# the model's class (and the modeling code it imports) before the baseline: what is left
# is the weights and what loading and running them costs
cls = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(AutoConfig.from_pretrained(sys.argv[1]))]
base = status_mb("VmRSS")
model = cls.from_pretrained(sys.argv[1]).eval()
loaded, load_peak = status_mb("VmRSS") - base, status_mb("VmHWM") - base
with torch.no_grad():
    model(pixel_values=torch.randn(1, 3, int(sys.argv[2]), int(sys.argv[2])))
print(json.dumps({"base_mb": base, "loaded_mb": loaded, "load_peak_mb": load_peak,
                  "forward_b1_peak_mb": status_mb("VmHWM") - base,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def memory(model, result, size: int, threads: int) -> dict:
    """Save `model` (dense when `result` is None) and load it in a fresh interpreter."""
    from hf_px.checkpoint.structured import save_structured

    with tempfile.TemporaryDirectory(prefix="hf-px-bench-speed-") as tmp:
        out = Path(tmp) / "model"
        if result is None:
            model.save_pretrained(out)
        else:
            save_structured(model, out, result, card=False)
        proc = subprocess.run(
            [sys.executable, "-c", LOAD, str(out), str(size), str(threads)],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"bench_speed: loading the saved variant failed: {proc.stderr[-800:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in got.items()}


@torch.no_grad()
def timed(model, x, calls: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per forward, mean of `calls`."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        model(pixel_values=x)
    return (time.perf_counter() - t0) / calls, (time.process_time() - c0) / calls


def _time(variants, rows, runs: int, b1_calls: int, batch: int, x1, xb) -> None:
    """Time every variant in turn, `runs` times after a warm-up; medians into `rows`."""
    # per variant: lists of batch-1 (wall, cpu) seconds and batch-B (wall, cpu) seconds
    b1 = {v[0]: [] for v in variants}
    bb = {v[0]: [] for v in variants}
    for run in range(runs + 1):  # run 0 is the warm-up
        for label, _, model, _ in variants:
            one = timed(model, x1, b1_calls)
            big = timed(model, xb, 1)
            if run:
                b1[label].append(one)
                bb[label].append(big)

    def med(values, i):
        return statistics.median(v[i] for v in values)

    base = {k: (med(b1["dense"], k), med(bb["dense"], k)) for k in (0, 1)}
    for row, (label, _, _, _) in zip(rows, variants, strict=True):
        w1, wb = med(b1[label], 0), med(bb[label], 0)
        c1, cb = med(b1[label], 1), med(bb[label], 1)
        row.update(
            {
                "latency_b1_ms": round(1000 * w1, 3),
                f"throughput_b{batch}_img_s": round(batch / wb, 3),
                "speedup_b1": round(base[0][0] / w1, 3),
                f"speedup_b{batch}": round(base[0][1] / wb, 3),
                "cpu_b1_ms": round(1000 * c1, 3),
                "cpu_speedup_b1": round(base[1][0] / c1, 3),
                f"cpu_speedup_b{batch}": round(base[1][1] / cb, 3),
            }
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit-base", "resnet50", "convnext-tiny"])
    p.add_argument("--remove", nargs="+", type=float, default=None, help="default 0.25 0.5 0.75")
    p.add_argument("--target", choices=("macs", "params"), default="macs")
    p.add_argument("--method", default="random")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--round-to", nargs="+", type=int, default=[1], help="widths a multiple of N (each)"
    )
    p.add_argument(
        "--structures", nargs="+", default=["auto"],
        help="unit kinds per variant: auto (every kind of the family) and/or one kind, "
        "e.g. `auto channels` times ResNet with and without its residual streams",
    )  # fmt: skip
    p.add_argument("--runs", type=int, default=5, help="0: no timing (with --memory)")
    p.add_argument("--b1-calls", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny configs at 32 px, two runs")
    p.add_argument(
        "--memory", action="store_true",
        help="also save every variant and measure its peak memory when loaded in a fresh process",
    )  # fmt: skip
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = 32 if a.quick else 224
    runs = 2 if a.quick else a.runs
    removes = a.remove or ([0.25, 0.5] if a.quick else [0.25, 0.5, 0.75])
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, size, size, generator=g)
    xb = torch.randn(a.batch, 3, size, size, generator=g)
    calib = [{"pixel_values": torch.randn(8, 3, size, size, generator=g)}]
    out = {
        "settings": {
            "image_size": size,
            "threads": a.threads,
            "round_to": a.round_to,
            "runs": runs,
            "b1_calls": a.b1_calls,
            "batch": a.batch,
            "method": a.method,
            "target": a.target,
            "quick": a.quick,
            "memory": a.memory,
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
        "results": [],
    }
    for name in a.models:
        dense = tiny(name) if a.quick else build(name, size, 1000)
        variants = [("dense", 0.0, dense, None)]
        outcomes = {"dense": None}
        for remove, round_to, structure in itertools.product(removes, a.round_to, a.structures):
            if structure != "auto" and structure not in FAMILY_KINDS.get(name_type(dense), ()):
                continue
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            res = prune_structured(
                model, calib, remove, target=a.target, method=a.method, rounds=a.rounds,
                round_to=round_to, structure=structure,
            )  # fmt: skip
            with torch.no_grad():
                masked = model(pixel_values=x1).logits
                shrink(model, res.groups, res.kept)
                err = float((model(pixel_values=x1).logits - masked).abs().max())
            info = {
                "round_to": round_to,
                "structure": res.config["structure"],
                "macs": res.macs[1],
                "params": res.params[1],
                "removed": res.removed,
                "max_logit_diff_vs_masked": err,
                "prune_s": round(time.perf_counter() - t0, 2),
            }
            label = f"remove {remove}" + (f" round_to {round_to}" if round_to > 1 else "")
            label += f" {structure}" if len(a.structures) > 1 else ""
            variants.append((label, remove, model, info))
            outcomes[label] = res
            dense_info = {"macs": res.macs[0], "params": res.params[0]}
        print(f"{name}: {len(variants)} variants built", file=sys.stderr, flush=True)
        for label, remove, _, info in variants:
            row = {"model": name, "variant": label, "remove": remove, **(info or dense_info)}
            out["results"].append(row)
        rows = [r for r in out["results"] if r["model"] == name]
        if runs:  # --runs 0: sizes and memory only
            _time(variants, rows, runs, a.b1_calls, a.batch, x1, xb)
        if a.memory:
            for row, (label, _, model, _) in zip(rows, variants, strict=True):
                row["memory"] = memory(model, outcomes[label], size, a.threads)
            dense_mb = rows[0]["memory"]["forward_b1_peak_mb"]
            for row in rows:
                row["memory"]["ratio_to_dense"] = round(
                    row["memory"]["forward_b1_peak_mb"] / dense_mb, 3
                )
        print(f"{name}: timed {json.dumps(rows)}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
