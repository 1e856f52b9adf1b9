"""PX on full-size configs per family: zero/finite scores, minimum density per
tensor type after global pruning, and one PX pass vs one SNIP pass.

    python scripts/bench_px_families.py [--families vit-base deit-small convnext-tiny resnet50]
        [--sparsities 0.9 0.98] [--rounds 100] [--image-size 32] [--images 8]

Prints one JSON object (random init, CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_models import batches, build  # noqa: E402

from hf_px import compute_scores, prune  # noqa: E402


def tensor_type(model: nn.Module, name: str) -> str:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if "classifier" in name:
        return "classifier"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return "depthwise_conv"
        if "patch" in name:
            return "patch_embedding"
        if "embed" in name:
            return "stem_conv"
        if "downsampl" in name or "shortcut" in name:
            return "downsample_conv"
        return "pointwise_conv" if module.kernel_size == (1, 1) else "spatial_conv"
    for pat, kind in [
        (r"q_proj", "q"),
        (r"k_proj", "k"),
        (r"v_proj", "v"),
        (r"o_proj|attention\.output", "attention_out"),
        (r"pwconv1", "pointwise_conv_in"),
        (r"pwconv2", "pointwise_conv_out"),
        (r"fc1|intermediate", "mlp_in"),
        (r"fc2|output", "mlp_out"),
    ]:
        if re.search(pat, name):
            return kind
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--families", nargs="+", default=["vit-base", "deit-small", "convnext-tiny", "resnet50"]
    )
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = []
    for fam in args.families:
        size = max(args.image_size, 64) if fam in ("resnet50", "convnext-tiny") else args.image_size
        model = build(fam, size)
        data = batches(1, args.images, size)
        t0 = time.perf_counter()
        scores = compute_scores(model, data, method="px")
        t_px = time.perf_counter() - t0
        t0 = time.perf_counter()
        compute_scores(model, data, method="snip")
        t_snip = time.perf_counter() - t0
        row = {
            "family": fam,
            "image_size": size,
            "tensors": len(scores),
            "zero_score_tensors": [n for n, s in scores.items() if float(s.sum()) == 0],
            "nonfinite_tensors": [n for n, s in scores.items() if not torch.isfinite(s).all()],
            "negative_tensors": [n for n, s in scores.items() if (s < 0).any()],
            "px_pass_s": t_px,
            "snip_pass_s": t_snip,
            "px_over_snip": t_px / t_snip,
            "min_density": {},
        }
        for s in args.sparsities:
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            result = prune(m, data, s, method="px", rounds=args.rounds, scope="global")
            per_type: dict[str, float] = {}
            for n, mask in result.masks.items():
                k = tensor_type(m, n)
                d = float(mask.float().mean())
                per_type[k] = min(per_type.get(k, 1.0), d)
            row["min_density"][str(s)] = {
                "achieved_sparsity": result.sparsity,
                "empty_tensors": sum(int(mask.sum() == 0) for mask in result.masks.values()),
                "per_type": per_type,
                "prune_s": time.perf_counter() - t0,
            }
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"rounds": args.rounds, "images": args.images, "results": out}, indent=2))


if __name__ == "__main__":
    main()
