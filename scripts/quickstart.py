"""Quickstart: prune the ResNet that hf-px ships, offline, at 90% sparsity with PX.

What it runs (each step a fresh process, as a user would)::

    hf-px prune px-digits-resnet --sparsity 0.9 --method px --rounds 20 \\
        --eval --eval-dataset outputs/quickstart/digits-test \\
        --output-dir outputs/quickstart/px-digits-resnet-px90 --overwrite --json

on the built-in calibration data (scikit-learn's digits as RGB images, 10 per
class, drawn by hf-px). ``digits-test`` holds the 450 digits the shipped model
never saw in training (the stratified split of ``scripts/train_digits_model.py``),
written here with ``Dataset.save_to_disk``; top-1 accuracy is measured on them
before and after pruning. 20 rounds instead of PX's default 100 keep the run
near a minute on 2 CPU cores (``--rounds 100`` for the published schedule).
Then it reloads the written checkpoint with plain ``transformers``
(``AutoModelForImageClassification.from_pretrained``, ``hf_px`` never
imported) and checks that the pruned weights are exactly zero there too.
Prints a short summary and, last, one JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "outputs" / "quickstart"
DEFAULT_OUTPUT = WORK / "px-digits-resnet-px90"
DEFAULT_ROUNDS = 20

# Runs in a fresh interpreter that never imports hf_px: the checkpoint must stand
# on its own. Counts exact zeros over the Conv2d/Linear weights (the prunable set).
RELOAD = r"""
import json, sys
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
total = zeros = 0
for module in model.modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        total += module.weight.numel()
        zeros += int((module.weight == 0).sum())
with torch.no_grad():
    x = torch.zeros(1, 3, processor.size["height"], processor.size["width"])
    logits = model(pixel_values=x).logits
print(json.dumps({
    "class": type(model).__name__,
    "processor": type(processor).__name__,
    "prunable_weights": total,
    "zero_weights": zeros,
    "sparsity": zeros / total,
    "logits_shape": list(logits.shape),
    "hf_px_imported": "hf_px" in sys.modules,
}))
"""


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart: `{' '.join(cmd[2:])}` failed with exit code {proc.returncode}")
    return proc.stdout


def write_test_split(path: Path) -> Path:
    """The shipped model's held-out digits as a saved dataset (image + label)."""
    from train_digits_model import split_indices

    from hf_px.calibration import digits_dataset

    ds = digits_dataset()
    _, test = split_indices(ds["label"])
    if not (path / "dataset_info.json").is_file():
        ds.select(test.tolist()).save_to_disk(str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    test_split = write_test_split(args.output_dir.parent / "digits-test")
    prune_cmd = [
        sys.executable,
        "-m",
        "hf_px",
        "prune",
        "px-digits-resnet",
        "--sparsity",
        "0.9",
        "--method",
        "px",
        "--rounds",
        str(args.rounds),
        "--eval",
        "--eval-dataset",
        str(test_split),
        "--output-dir",
        str(args.output_dir),
        "--overwrite",
        "--json",
    ]
    if args.quiet:
        prune_cmd.append("--quiet")
    pruned = json.loads(_run(prune_cmd, env))
    t_prune = time.perf_counter() - t0
    reloaded = json.loads(_run([sys.executable, "-c", RELOAD, str(args.output_dir)], env))
    if reloaded["zero_weights"] != pruned["num_pruned"] or reloaded["hf_px_imported"]:
        sys.exit(
            f"quickstart: reloaded checkpoint has {reloaded['zero_weights']} zero weights, "
            f"expected {pruned['num_pruned']}"
        )
    ev = pruned["evaluation"]
    try:
        shown_dir = args.output_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        shown_dir = args.output_dir
    result = {
        "model": "px-digits-resnet (hf_px/assets/digits-resnet)",
        "method": pruned["method"],
        "rounds": pruned["rounds"],
        "calibration_images": pruned["calibration"]["num_samples"],
        "requested_sparsity": pruned["requested_sparsity"],
        "achieved_sparsity": pruned["sparsity"],
        "reloaded_sparsity": reloaded["sparsity"],
        "min_tensor_density": pruned["min_tensor_density"],
        "eval_images": ev["num_samples"],
        "accuracy_dense": ev["accuracy_before"],
        "accuracy_pruned": ev["accuracy_after"],
        "size_on_disk_bytes": pruned["size_on_disk_bytes"],
        "output_dir": str(shown_dir),
        "prune_seconds": round(t_prune, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"\nPX pruned {result['achieved_sparsity']:.2%} of {pruned['num_prunable']:,} weights "
        f"({result['rounds']} rounds, {result['calibration_images']} calibration images).\n"
        f"Top-1 on {ev['num_samples']} held-out digits: dense {ev['accuracy_before']:.2%} -> "
        f"pruned {ev['accuracy_after']:.2%} (no fine-tuning; PX prunes for re-training).\n"
        f"Checkpoint: {shown_dir} ({result['size_on_disk_bytes'] / 1e6:.2f} MB), reloaded with "
        f"plain from_pretrained: {reloaded['sparsity']:.2%} zeros.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
