"""Quickstart: prune the ResNet that hf-px ships to 90% with PX, fine-tune it, share-ready.

What it runs, offline, each step a fresh process as a user would::

    hf-px prune px-digits-resnet --sparsity 0.9 --method px --rounds 20 \\
        --eval --eval-dataset outputs/quickstart/digits --eval-split test \\
        --format bitmask --output-dir outputs/quickstart/px-digits-resnet-px90
    hf-px finetune outputs/quickstart/px-digits-resnet-px90 \\
        --dataset outputs/quickstart/digits --eval-split test --epochs 2 --learning-rate 1e-3 \\
        --format bitmask --output-dir outputs/quickstart/px-digits-resnet-px90-ft

``digits`` holds scikit-learn's digits split as the shipped model was trained
(``scripts/train_digits_model.py``: 1,347 ``train``, 450 held-out ``test``),
written with ``DatasetDict.save_to_disk``. Pruning calibrates on the built-in
digits (10 per class) and measures top-1 on ``test`` before and after; the
shipped weights are loaded from a checkpoint, so PX runs its form for trained
weights (``fisher``); 20 rounds instead of PX's default 100 (the per-sample
curvature is recomputed at 7 of them either way).
Fine-tuning runs `transformers.Trainer` on ``train`` with the saved masks held
fixed. Then a fresh interpreter reloads the fine-tuned ``bitmask`` checkpoint
(``import hf_px`` + ``AutoModelForImageClassification.from_pretrained``),
checks that exactly the pruned weights are zero (``hf_px.load_pruning``) and
measures top-1 on ``test`` again. Prints a short summary, then one JSON object.
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
EPOCHS = 2
LEARNING_RATE = "1e-3"

# A fresh interpreter: the saved checkpoint, its masks and the held-out accuracy.
RELOAD = r"""
import json, sys
import torch
import hf_px  # registers the bitmask format with transformers
from transformers import AutoImageProcessor, AutoModelForImageClassification
from hf_px.calibration import load_labelled_batches
from hf_px.evaluation import evaluate

model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
masks = hf_px.load_pruning(sys.argv[1]).masks
params = dict(model.named_parameters())
zeros = sum(int((params[n].detach() == 0)[~m].sum()) for n, m in masks.items())
pruned = sum(int((~m).sum()) for m in masks.values())
test = load_labelled_batches(sys.argv[2], split="test", image_processor=processor, batch_size=128)
print(json.dumps({
    "class": type(model).__name__,
    "pruned_weights": pruned,
    "pruned_weights_zero": zeros,
    "sparsity": pruned / sum(m.numel() for m in masks.values()),
    "accuracy": evaluate(model, test)["accuracy"],
}))
"""


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart: `{' '.join(cmd[2:])}` failed with exit code {proc.returncode}")
    return proc.stdout


def write_digits(path: Path) -> Path:
    """The shipped model's train/test split of the digits, as a saved DatasetDict."""
    from datasets import DatasetDict
    from train_digits_model import split_indices

    from hf_px.calibration import digits_dataset

    if not (path / "dataset_dict.json").is_file():
        ds = digits_dataset()
        train, test = split_indices(ds["label"])
        splits = {"train": ds.select(train.tolist()), "test": ds.select(test.tolist())}
        DatasetDict(splits).save_to_disk(str(path))
    return path


def _shown(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    quiet = ["--quiet"] if args.quiet else []
    t0 = time.perf_counter()
    digits = write_digits(args.output_dir.parent / "digits")
    tuned_dir = args.output_dir.with_name(args.output_dir.name + "-ft")
    hf_px = [sys.executable, "-m", "hf_px"]
    held_out = ["--eval-split", "test", "--format", "bitmask", "--overwrite", "--json", *quiet]
    pruned = json.loads(
        _run(
            [*hf_px, "prune", "px-digits-resnet", "--sparsity", "0.9", "--method", "px",
             "--rounds", str(args.rounds), "--eval", "--eval-dataset", str(digits),
             "--output-dir", str(args.output_dir), *held_out],
            env,
        )
    )  # fmt: skip
    t_prune = time.perf_counter() - t0
    tuned = json.loads(
        _run(
            [*hf_px, "finetune", str(args.output_dir), "--dataset", str(digits),
             "--epochs", str(EPOCHS), "--learning-rate", LEARNING_RATE,
             "--output-dir", str(tuned_dir), *held_out],
            env,
        )
    )  # fmt: skip
    t_tune = time.perf_counter() - t0 - t_prune
    reloaded = json.loads(_run([sys.executable, "-c", RELOAD, str(tuned_dir), str(digits)], env))
    if reloaded["pruned_weights_zero"] != reloaded["pruned_weights"]:
        sys.exit(
            f"quickstart: the reloaded checkpoint has {reloaded['pruned_weights_zero']} of "
            f"{reloaded['pruned_weights']} pruned weights at zero"
        )
    ev, ft = pruned["evaluation"], tuned["evaluation"]
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
        "accuracy_finetuned": ft["accuracy_finetuned"],
        "accuracy_reloaded": reloaded["accuracy"],
        "finetune_epochs": EPOCHS,
        "finetune_steps": tuned["steps"],
        "finetune_images": tuned["recipe"]["num_samples"],
        "size_on_disk_bytes": tuned["size_on_disk_bytes"],
        "output_dir": str(_shown(tuned_dir)),
        "prune_seconds": round(t_prune, 1),
        "finetune_seconds": round(t_tune, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"\nPX pruned {result['achieved_sparsity']:.2%} of {pruned['num_prunable']:,} weights "
        f"({result['rounds']} rounds, {result['calibration_images']} calibration images), then "
        f"fine-tuned {EPOCHS} epochs on {result['finetune_images']:,} digits with the masks fixed.\n"
        f"Top-1 on {ev['num_samples']} held-out digits: dense {result['accuracy_dense']:.2%} -> "
        f"pruned {result['accuracy_pruned']:.2%} -> fine-tuned "
        f"{result['accuracy_finetuned']:.2%}.\n"
        f"Checkpoint: {result['output_dir']} (bitmask, "
        f"{result['size_on_disk_bytes'] / 1e6:.2f} MB); reloaded in a fresh process: "
        f"{reloaded['sparsity']:.2%} of the weights pruned and zero, top-1 "
        f"{reloaded['accuracy']:.2%}.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
