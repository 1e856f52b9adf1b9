"""Worker for the multi-process tests: run under `torchrun` or `accelerate launch`.

``python tests/_dist_worker.py OUT_DIR [--plain-accelerator]`` scores the cases of
:func:`run_cases` with an `Accelerator` and writes ``OUT_DIR/rank{r}.pt``. The
tests compute the same cases in one process and compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import tiny_resnet, tiny_vit  # noqa: E402

# 7 batches of uneven sizes (18 images): 2 processes get 4 and 3 batches.
BATCH_SIZES = (3, 2, 4, 3, 2, 2, 2)


def uneven_batches(size: int = 32, classes: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(n, 3, size, size, generator=g),
            "labels": torch.randint(0, classes, (n,), generator=g),
        }
        for n in BATCH_SIZES
    ]


# (case name, model builder, method, extra options, prune rounds)
CASES: list[tuple[str, Any, str, dict, int]] = [
    ("px_vit", tiny_vit, "px", {}, 3),
    ("px_resnet_default", tiny_resnet, "px", {}, 3),
    ("px_resnet_bn_reference", tiny_resnet, "px", {"bn": "reference"}, 3),
    ("px_resnet_bn_rms", tiny_resnet, "px", {"bn": "rms"}, 2),
    ("snip_vit", tiny_vit, "snip", {}, 1),
    ("grasp_resnet", tiny_resnet, "grasp", {}, 1),
    ("grasp_vit", tiny_vit, "grasp", {}, 1),
    ("wanda_resnet", tiny_resnet, "wanda", {}, 1),
]


def run_cases(accelerator: Any = None) -> dict[str, Any]:
    """Scores and masks of every case; with `accelerator`, sharded over its processes."""
    from hf_px import compute_scores, prune
    from hf_px.distributed import check_same_weights, make_reducer

    reducer = make_reducer(accelerator)
    batches = uneven_batches()
    out: dict[str, Any] = {
        "world_size": reducer.world_size,
        "rank": reducer.rank,
        "shard_images": sum(len(b["labels"]) for b in reducer.shard(batches)),
    }
    for name, build, method, options, rounds in CASES:
        model = build()
        check_same_weights(model, reducer)
        scores = compute_scores(model, batches, method=method, accelerator=accelerator, **options)
        result = prune(
            model,
            batches,
            sparsity=0.8,
            method=method,
            rounds=rounds,
            accelerator=accelerator,
            **options,
        )
        out[name] = {"scores": scores, "masks": result.masks}
    return out


def reducer_checks(accelerator: Any) -> dict[str, Any]:
    """Collectives with rank-dependent inputs, and a weight mismatch on rank 1."""
    from hf_px import distributed
    from hf_px.distributed import check_same_weights, make_reducer
    from hf_px.errors import HfPxError

    reducer = make_reducer(accelerator)
    r = reducer.rank
    tensors = {
        "a": torch.full((3, 4), float(r + 1)),
        "b": torch.arange(10, dtype=torch.float32) * (r + 1),
        "c": torch.full((25,), 0.1 * (r + 1), dtype=torch.float64),
        "d": torch.full((5,), 1.0 + r, dtype=torch.float64),
        "e": torch.full((2, 2), 2.0 * (r + 1), dtype=torch.bfloat16),
    }
    c = tensors["c"]
    saved = distributed.BUCKET_NUMEL
    distributed.BUCKET_NUMEL = 11  # a, c: one by one (c in place); b | d, e: two buffers
    try:
        reduced = reducer.all_reduce_dict(tensors)
    finally:
        distributed.BUCKET_NUMEL = saved
    reduced["c_in_place"] = reduced["c"] is c
    rows = reducer.gather_rows(torch.tensor([r, 10.0 * r + 1]))
    model = tiny_vit()
    if r == 1:
        with torch.no_grad():
            model.classifier.weight[0, 0] += 1e-6
    try:
        check_same_weights(model, reducer)
        mismatch = ""
    except HfPxError as err:
        mismatch = str(err)
    return {"reduced": reduced, "rows": rows, "mismatch": mismatch}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = Path(argv[0])
    from hf_px.distributed import make_accelerator
    from hf_px.errors import HfPxError

    if "--plain-accelerator" in argv:
        # what a user gets from `Accelerator()` on a machine without GPU
        from accelerate import Accelerator

        from hf_px.distributed import make_reducer

        try:
            make_reducer(Accelerator())
        except HfPxError as err:
            rank = os.environ.get("RANK", "0")
            (out_dir / f"error{rank}.txt").write_text(str(err))
            return 0
        return 3
    accelerator = make_accelerator()
    result = run_cases(accelerator)
    result["reducer"] = reducer_checks(accelerator)
    torch.save(result, out_dir / f"rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group: a clean exit
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
