"""One prepared check of hf-px's device paths: run it on a machine with a GPU.

    python scripts/gpu_check.py              # on CUDA; ≤ 8 minutes on one modern GPU
    python scripts/gpu_check.py --dry-run    # the same code on CPU, tiny sizes (the suite)

Steps (each timed; any failure → exit 1, the JSON says which step):

1. ``full_size``: ViT-base- and ResNet-50-sized configs (random init) pruned with
   default PX at 224 px, 256 calibration images × 100 rounds, on the device: wall
   time and peak device memory.
2. ``cpu_vs_device``: the same small case pruned on CPU and on the device: mask
   entries that differ and the overlap of the kept weights (the thresholds run in
   numpy on CPU and with ``kthvalue`` on other devices).
3. ``finetune_bf16``: 20 masked fine-tuning steps under bf16 autocast; pruned
   weights must stay exactly 0.
4. ``bitmask_device_map``: a bitmask checkpoint loaded with ``device_map`` set to the
   device; weights bit-exact against the pruned model and the pruned ones zero.
5. ``torchrun``: with more than one GPU, a 2-process data-parallel prune whose masks
   must equal the one-process prune.

Prints one JSON object (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (name, full-size config kwargs, tiny config kwargs) for the two flagship shapes
FAMILIES = {
    "vit": (
        "ViT",
        dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
             num_attention_heads=12, intermediate_size=3072),
        dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=64),
    ),
    "resnet": (
        "ResNet",
        dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
             layer_type="bottleneck"),
        dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    ),
}  # fmt: skip


def build(family: str, tiny: bool, num_labels: int = 10):
    import transformers

    prefix, full, small = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, f"{prefix}Config")(
        num_labels=num_labels, **(small if tiny else full)
    )
    return getattr(transformers, f"{prefix}ForImageClassification")(config).eval()


def batches(n: int, size: int, batch_size: int, device: str, num_labels: int = 10) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        out.append(
            {
                "pixel_values": torch.randn(k, 3, size, size, generator=g).to(device),
                "labels": torch.randint(0, num_labels, (k,), generator=g).to(device),
            }
        )
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_full_size(device: str, tiny: bool) -> dict:
    from hf_px import prune

    out = {}
    images, rounds, size = (8, 2, 32) if tiny else (256, 100, 224)
    for family in FAMILIES:
        model = build(family, tiny).to(device)
        data = batches(images, size, 32, device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        result = prune(model, data, 0.9, "px", rounds=rounds)
        _sync(device)
        row = {
            "wall_s": round(time.perf_counter() - t0, 2),
            "rounds": rounds,
            "images": images,
            "sparsity": round(result.sparsity, 6),
        }
        if device.startswith("cuda"):
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if abs(result.sparsity - 0.9) > 1e-3:
            raise AssertionError(f"{family}: sparsity {result.sparsity}, expected 0.9")
        out[family] = row
        del model, data
    return out


def step_cpu_vs_device(device: str, tiny: bool) -> dict:
    from hf_px import prune

    out = {}
    for family in FAMILIES:
        masks = {}
        for where in ("cpu", device):
            model = build(family, tiny=True).to(where)
            masks[where] = prune(model, batches(8, 32, 8, where), 0.9, "px", rounds=3).masks
        a, b = masks["cpu"], masks[device]
        differ = sum(int((a[n] != b[n].cpu()).sum()) for n in a)
        both = sum(int((a[n] & b[n].cpu()).sum()) for n in a)
        kept = sum(int(a[n].sum()) for n in a)
        total = sum(a[n].numel() for n in a)
        out[family] = {"entries": total, "differ": differ, "kept_overlap": both / max(1, kept)}
    return out


def step_finetune_bf16(device: str, tiny: bool) -> dict:
    from hf_px import prune
    from hf_px.training import bind_masks, masked_step

    model = build("vit", tiny=True).to(device)
    data = batches(16, 32, 8, device)
    result = prune(model, data, 0.9, "px", rounds=3)
    masks = {n: m.to(device) for n, m in result.masks.items()}
    bound = bind_masks(model, masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # bf16 autocast where the device has it (CPU autocast also takes bf16)
    model.train()
    losses = []
    for step in range(20):
        batch = data[step % len(data)]
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            logits = model(pixel_values=batch["pixel_values"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        masked_step(optimizer, model, bound)
        losses.append(loss.item())
    model.eval()
    params = dict(model.named_parameters())
    nonzero = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items())
    if nonzero:
        raise AssertionError(f"{nonzero} pruned weights are non-zero after bf16 fine-tuning")
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"bf16 losses not finite: {losses}")
    return {"steps": 20, "first_loss": losses[0], "last_loss": losses[-1], "pruned_nonzero": 0}


def step_bitmask_device_map(device: str, tiny: bool) -> dict:
    from transformers import AutoModelForImageClassification

    from hf_px import prune, save_pruned

    model = build("resnet", tiny=True)
    result = prune(model, batches(16, 32, 8, "cpu"), 0.9, "px", rounds=3)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "bitmask"
        save_pruned(model, target, result, format="bitmask")
        loaded = AutoModelForImageClassification.from_pretrained(target, device_map=device)
        want = model.state_dict()
        got = loaded.state_dict()
        where = {str(t.device) for t in got.values()}
        bad = [k for k in want if not torch.equal(want[k], got[k].cpu())]
        if bad:
            raise AssertionError(f"not bit-exact after a device_map load: {bad[:3]}")
        if device.startswith("cuda") and not all(w.startswith("cuda") for w in where):
            raise AssertionError(f"device_map={device!r} left tensors on {sorted(where)}")
    return {"tensors": len(want), "devices": sorted(where)}


def step_torchrun(device: str, tiny: bool) -> dict:
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s); a data-parallel run needs 2"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "masks.pt"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            __file__, "--worker", str(out),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"torchrun failed: {proc.stderr[-400:]}")
        distributed = torch.load(out)
    from hf_px import prune

    model = build("vit", tiny=True).to(device)
    single = prune(model, batches(16, 32, 4, device), 0.9, "px", rounds=3).masks
    differ = sum(int((single[n] != distributed[n]).sum()) for n in single)
    if differ:
        raise AssertionError(f"2-process masks differ from 1-process in {differ} entries")
    return {"processes": 2, "differ": 0}


def _worker(out: str) -> None:
    """One torchrun process: the tiny ViT pruned data-parallel through accelerate."""
    from accelerate import Accelerator

    from hf_px import prune

    acc = Accelerator()
    model = build("vit", tiny=True).to(acc.device)
    result = prune(model, batches(16, 32, 4, str(acc.device)), 0.9, "px", rounds=3, accelerator=acc)
    if acc.is_main_process:
        torch.save({n: m.cpu() for n, m in result.masks.items()}, out)


STEPS = {
    "full_size": step_full_size,
    "cpu_vs_device": step_cpu_vs_device,
    "finetune_bf16": step_finetune_bf16,
    "bitmask_device_map": step_bitmask_device_map,
    "torchrun": step_torchrun,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (no GPU needed)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    device = args.device or ("cpu" if args.dry_run else "cuda")
    report: dict = {"device": device, "dry_run": args.dry_run, "steps": {}, "failed": []}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(json.dumps({**report, "failed": ["no CUDA device; use --dry-run on CPU"]}))
            return 1
        report["gpu"] = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    for name in args.steps:
        t = time.perf_counter()
        try:
            row = STEPS[name](device, args.dry_run)
            row["step_s"] = round(time.perf_counter() - t, 2)
            report["steps"][name] = row
        except Exception as exc:  # every step runs; the report says which failed and why
            report["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report["failed"].append(name)
            traceback.print_exc(file=sys.stderr)
    report["total_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
