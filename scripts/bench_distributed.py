"""Data-parallel PX scoring on CPU: 1 vs 2 processes (gloo), ViT-base-sized.

One PX scoring pass (``compute_scores(method="px")``, one round) on 64 images
(scikit-learn digits through the default image processor, 64 px) for a
ViT-base-sized config (``ViTConfig()`` defaults: 12 layers, width 768, MLP
3072, 12 heads; ``image_size=64, patch_size=16``, 1000 classes), run

* in one process with 1 thread (and 2 with ``--with-two-threads``), and
* in two processes of 1 thread each under ``torchrun --nproc_per_node 2``,

plus the time of the cross-process reductions inside that pass (as measured
in the pass, which includes waiting for the slower rank, and replayed alone
with both ranks starting together), and of one
reduction of a full-model-sized gradient dict (what SNIP, GraSP and PX with
BatchNorm reduce) by our in-place float64 flat buffers vs
``Accelerator.reduce(..., reduction="sum")`` tensor by tensor. Prints one JSON
object, including the max |score difference| between 1 and 2 processes.

    python scripts/bench_distributed.py [--images 64] [--batch-size 16] [--layers 12]

Timings depend on the machine's load; the CPU may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(layers: int):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=64, patch_size=16, num_hidden_layers=layers, num_labels=1000)
    return ViTForImageClassification(cfg).eval()


def worker(args: argparse.Namespace) -> None:
    import torch

    from hf_px import compute_scores
    from hf_px.calibration import default_image_processor, load_calibration_batches
    from hf_px.distributed import (
        AccelerateReducer,
        check_same_weights,
        make_accelerator,
        make_reducer,
    )

    torch.set_num_threads(args.threads)
    accelerator = make_accelerator()

    class TimedReducer(AccelerateReducer):
        seconds = 0.0
        numel = 0
        reduced: list = []

        def all_reduce_sum(self, tensor):
            t0 = time.perf_counter()
            out = super().all_reduce_sum(tensor)
            TimedReducer.seconds += time.perf_counter() - t0
            TimedReducer.numel += tensor.numel()
            TimedReducer.reduced.append((tuple(tensor.shape), tensor.dtype))
            return out

    reducer = TimedReducer(accelerator)
    model = build_model(args.layers)
    t0 = time.perf_counter()
    check_same_weights(model, reducer)
    check_s = time.perf_counter() - t0
    batches = load_calibration_batches(
        image_processor=default_image_processor(model.config),
        num_samples=args.images,
        batch_size=args.batch_size,
    )
    compute_scores(model, batches[:1], method="px")  # warm-up (allocator, kernels), local
    TimedReducer.seconds, TimedReducer.numel = 0.0, 0
    reducer.all_reduce_sum(torch.zeros(1))  # barrier: start together
    TimedReducer.seconds, TimedReducer.numel, TimedReducer.reduced = 0.0, 0, []
    t0 = time.perf_counter()
    scores = compute_scores(model, batches, method="px", accelerator=reducer)
    score_s = time.perf_counter() - t0
    in_pass = (TimedReducer.seconds, TimedReducer.numel)
    # the same collectives again, started together: the reduction alone, without
    # waiting for the slower rank to finish its batches
    replay = [torch.zeros(shape, dtype=dtype) for shape, dtype in TimedReducer.reduced]

    # one full-model-sized gradient dict: our flat in-place reduction vs Accelerator.reduce
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters() if p.dim() > 1}
    grads64 = {n: g.double() for n, g in grads.items()}  # the methods accumulate in float64
    plain = make_reducer(accelerator)

    def best_of(fn, reps: int = args.reps) -> float:
        times = []
        for _ in range(reps):
            plain.all_reduce_sum(torch.zeros(1))  # barrier
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    replay_s = best_of(lambda: [plain.all_reduce_sum(t) for t in replay])
    ours_s = best_of(lambda: plain.all_reduce_dict(grads64))
    ours32_s = best_of(lambda: plain.all_reduce_dict(grads))
    accel_s = best_of(
        lambda: accelerator.reduce(grads, reduction="sum") if accelerator.num_processes > 1 else 0
    )

    stats = torch.tensor(
        [score_s, in_pass[0], ours_s, accel_s, check_s, ours32_s, replay_s], dtype=torch.float64
    )
    table = plain.gather_rows(stats)  # every rank's numbers; report the slowest
    if accelerator.is_main_process:
        slowest = table.max(0).values.tolist()
        out = {
            "processes": accelerator.num_processes,
            "threads_per_process": args.threads,
            "images_per_rank": [
                sum(len(b["pixel_values"]) for b in batches[r :: accelerator.num_processes])
                for r in range(accelerator.num_processes)
            ],
            "px_pass_s": slowest[0],
            "reduction_in_pass_incl_waiting_s": slowest[1],
            "reduction_in_pass_alone_s": slowest[6],
            "reduced_numel_in_pass": in_pass[1],
            "full_dict_reduce_ours_float64_in_place_s": slowest[2],
            "full_dict_reduce_ours_from_float32_s": slowest[5],
            "full_dict_reduce_accelerate_float32_s": slowest[3],
            "full_dict_numel": sum(g.numel() for g in grads.values()),
            "check_same_weights_s": slowest[4],
        }
        Path(args.out, "stats.json").write_text(json.dumps(out))
        torch.save(scores, Path(args.out, "scores.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def launch(nproc: int, threads: int, out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    own = [
        str(Path(__file__).resolve()),
        "--worker",
        str(out),
        "--threads",
        str(threads),
        "--images",
        str(args.images),
        "--batch-size",
        str(args.batch_size),
        "--layers",
        str(args.layers),
        "--reps",
        str(args.reps),
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *own]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_distributed: {nproc}-process run failed:\n{proc.stderr[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    stats["launch_wall_s"] = time.perf_counter() - t0
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="repeats of each reduction (best kept)")
    ap.add_argument("--with-two-threads", action="store_true", help="also 1 process with 2 threads")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.out = args.worker
        worker(args)
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1proc_1thread": launch(1, 1, Path(tmp, "a"), args),
            "2proc_1thread": launch(2, 1, Path(tmp, "c"), args),
        }
        if args.with_two_threads:
            runs["1proc_2threads"] = launch(1, 2, Path(tmp, "b"), args)
        ref = torch.load(Path(tmp, "a", "scores.pt"))
        two = torch.load(Path(tmp, "c", "scores.pt"))
        diff = max(float((ref[n].double() - two[n].double()).abs().max()) for n in ref)
        scale = max(float(ref[n].abs().max()) for n in ref)
        identical = all(torch.equal(ref[n], two[n]) for n in ref)
    one, dual = runs["1proc_1thread"], runs["2proc_1thread"]
    print(
        json.dumps(
            {
                "model": f"ViTConfig() defaults, {args.layers} layers, 768 wide, 64 px, patch 16",
                "images": args.images,
                "batch_size": args.batch_size,
                "cpu_count": os.cpu_count(),
                "runs": runs,
                "speedup_2proc_vs_1proc_1thread": one["px_pass_s"] / dual["px_pass_s"],
                "max_abs_score_diff_1_vs_2_proc": diff,
                "max_abs_score": scale,
                "scores_bit_identical": identical,
                "reduce_time_ratio_ours_f64_over_accelerate_f32": dual[
                    "full_dict_reduce_ours_float64_in_place_s"
                ]
                / dual["full_dict_reduce_accelerate_float32_s"],
                "note": "CPU shared with other jobs: timings are indicative",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
