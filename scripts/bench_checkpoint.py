"""Checkpoint size and load time: dense vs bitmask vs the information bound.

For ViT-base-, ConvNeXt-tiny- and ResNet-50-sized configs (random init,
1000 classes), magnitude-pruned in one round to each sparsity, saved in both
formats. Prints JSON: per model and sparsity the weight-file bytes of each
format, the information bound (pruned weights: non-zero values at their dtype
+ H(density) bits per element; every other tensor at its dense size), the ratios, the codes chosen, and ``from_pretrained`` wall and CPU
times (best and median of ``--repeats``, runs interleaved, same process) in
two states of the page cache, and the masks' own bytes (``bitmask_with_masks_*``: weight
files plus ``pruning_masks.safetensors`` where one is written):

* warm: the files are in memory (just written or read). transformers maps a
  dense safetensors file zero-copy, so a warm dense "load" copies no weight
  data at all, while a bitmask load must write every dense byte;
* cold: before each load the files' cached pages are dropped
  (``fsync`` + ``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed), so the
  load reads them from disk, as the first load after a reboot or after the
  files were evicted. The dense model is then read in full by the touch below.

plus the time to then read every weight once (``touch``; pages of an
mmap-backed tensor load lazily, so a dense model pays for them on first use).
The decoder used (native C or numpy) is reported.

    .venv/bin/python scripts/bench_checkpoint.py [--models vit convnext resnet]
        [--sparsities 0.5 0.9 0.95 0.98] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import hf_px  # noqa: E402
from hf_px.checkpoint import MASKS_NAME, bitmask, inspect_checkpoint  # noqa: E402


def build(name: str):
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    if name == "vit":  # ViT-B/16, 224 px
        return ViTForImageClassification(ViTConfig(num_labels=1000))
    if name == "convnext":  # ConvNeXt-T
        cfg = ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], num_labels=1000)
        return ConvNextForImageClassification(cfg)
    if name == "resnet":  # ResNet-50
        cfg = ResNetConfig(
            depths=[3, 4, 6, 3],
            hidden_sizes=[256, 512, 1024, 2048],
            layer_type="bottleneck",
            num_labels=1000,
        )
        return ResNetForImageClassification(cfg)
    raise SystemExit(f"unknown model {name!r}")


def bound_bytes(info: dict) -> tuple[float, float]:
    """Information bound in bytes: (whole weight file, the tensors stored encoded).

    Per encoded (Linear/Conv) weight with m of n elements non-zero at b bits:
    m·b + n·H(m/n) bits. Every other tensor (biases, norms, embeddings) counts at
    its dense size: neither format compresses it, and the zeros a random init
    puts there (zero biases, BatchNorm statistics) are not those of a trained model.
    """
    total = encoded = 0.0
    for t in info["tensors"].values():
        width = {"F32": 32, "F16": 16, "BF16": 16, "F64": 64}.get(t["dtype"], 32)
        if t["storage"] == "dense":
            total += t["numel"] * width / 8
            continue
        b = bitmask.information_bound_bits(t["numel"], t["numel"] - t["zeros"], width) / 8
        total += b
        encoded += b
    return total, encoded


def drop_cached_pages(path: Path) -> None:
    """Evict a directory's files from the page cache (the next read goes to disk)."""
    for f in path.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_times(
    dirs: dict[str, Path], repeats: int, cold: bool = False
) -> dict[str, dict[str, list[float]]]:
    """``from_pretrained`` wall time per format, runs interleaved (the CPU is shared), and
    the time to then read every weight once (pages of an mmap-backed tensor load lazily)."""
    from transformers import AutoModelForImageClassification

    out = {fmt: {"load": [], "touch": [], "cpu": []} for fmt in dirs}
    for _ in range(repeats):
        for fmt, path in dirs.items():
            if cold:
                drop_cached_pages(path)
            c0, t0 = time.process_time(), time.perf_counter()
            model = AutoModelForImageClassification.from_pretrained(path)
            c1, t1 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                for p in model.parameters():
                    p.sum()
            t2 = time.perf_counter()
            out[fmt]["load"].append(t1 - t0)
            out[fmt]["touch"].append(t2 - t1)
            out[fmt]["cpu"].append(c1 - c0)
            del model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit", "convnext", "resnet"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-cold", dest="cold", action="store_false", help="skip the cold-cache loads"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build(name).eval()
            initial = {k: v.clone() for k, v in model.state_dict().items()}
            for s in args.sparsities:
                model.load_state_dict(initial)
                result = hf_px.prune(model, [], s, method="magnitude", rounds=1)
                dirs = {}
                save_s = {}
                for fmt in hf_px.checkpoint.FORMATS:
                    t0 = time.perf_counter()
                    dirs[fmt] = hf_px.save_pruned(
                        model, Path(tmp) / f"{name}-{s}-{fmt}", result, format=fmt, card=False
                    )
                    save_s[fmt] = time.perf_counter() - t0
                size = {fmt: inspect_checkpoint(d)["size_bytes"] for fmt, d in dirs.items()}
                # what the masks cost on top (a dense checkpoint's masks file; none for bitmask)
                masks = {
                    fmt: (d / MASKS_NAME).stat().st_size if (d / MASKS_NAME).is_file() else 0
                    for fmt, d in dirs.items()
                }
                info = inspect_checkpoint(dirs["bitmask"])
                bound, bound_encoded = bound_bytes(info)
                encoded = [t for t in info["tensors"].values() if t["storage"] != "dense"]
                stored_encoded = sum(t["stored_bytes"] for t in encoded)
                codes: dict[str, int] = {}
                for t in encoded:
                    codes[t["storage"]] = codes.get(t["storage"], 0) + 1
                timed = load_times(dirs, args.repeats)
                times = {fmt: v["load"] for fmt, v in timed.items()}
                touch = {fmt: v["touch"] for fmt, v in timed.items()}
                cpu = {fmt: v["cpu"] for fmt, v in timed.items()}
                cold = load_times(dirs, args.repeats, cold=True) if args.cold else None
                row = {
                    "model": name,
                    "sparsity": s,
                    "achieved_sparsity": round(result.sparsity, 5),
                    "params": sum(p.numel() for p in model.parameters()),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "dense_bytes": size["dense"],
                    "bitmask_bytes": size["bitmask"],
                    "bound_bytes": round(bound),
                    "bitmask_over_bound": round(size["bitmask"] / bound, 4),
                    "masks_file_bytes": masks,
                    "bitmask_with_masks_over_bound": round(
                        (size["bitmask"] + masks["bitmask"]) / bound, 4
                    ),
                    "bitmask_with_masks_over_dense": round(
                        (size["bitmask"] + masks["bitmask"]) / size["dense"], 4
                    ),
                    "bitmask_over_dense": round(size["bitmask"] / size["dense"], 4),
                    "bound_over_dense": round(bound / size["dense"], 4),
                    "encoded_tensors_bitmask_over_bound": round(stored_encoded / bound_encoded, 4),
                    "codes": codes,
                    "save_s": {k: round(v, 3) for k, v in save_s.items()},
                    "load_s_best": {k: round(min(v), 3) for k, v in times.items()},
                    "load_s_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
                }
                row["touch_s_best"] = {k: round(min(v), 3) for k, v in touch.items()}
                row["load_cpu_s_best"] = {k: round(min(v), 3) for k, v in cpu.items()}
                # dense tensors are zero-copy views of the mmap'd file: count reading them once
                row["load_plus_touch_ratio_best"] = round(
                    min(a + b for a, b in zip(times["bitmask"], touch["bitmask"], strict=True))
                    / min(a + b for a, b in zip(times["dense"], touch["dense"], strict=True)),
                    3,
                )
                row["load_ratio_best"] = round(
                    row["load_s_best"]["bitmask"] / row["load_s_best"]["dense"], 3
                )
                if cold is not None:
                    both = {
                        fmt: [a + b for a, b in zip(v["load"], v["touch"], strict=True)]
                        for fmt, v in cold.items()
                    }
                    row["cold_load_s_best"] = {k: round(min(v["load"]), 3) for k, v in cold.items()}
                    row["cold_load_plus_touch_s_best"] = {
                        k: round(min(v), 3) for k, v in both.items()
                    }
                    row["cold_load_plus_touch_ratio_best"] = round(
                        min(both["bitmask"]) / min(both["dense"]), 3
                    )
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                for d in dirs.values():
                    for f in d.iterdir():
                        f.unlink()
                    d.rmdir()
            del model, initial
    print(
        json.dumps(
            {
                "torch_threads": args.threads,
                "decoder": "native" if bitmask.native_decoder() is not None else "numpy",
                "cpu_count": os.cpu_count(),
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
