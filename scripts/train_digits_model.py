"""Train the small ResNet that hf-px ships (``hf_px/assets/digits-resnet``).

Data: scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels), shown to
the model exactly as the offline calibration default presents them: an RGB
PIL image per digit, grey level g ∈ [0, 16] stored as round(g · 255 / 16),
prepared by the model's own image processor (bilinear resize to 32×32,
rescale to [0, 1], normalise with mean = std = 0.5).

Split: a fixed stratified train/test split (25% test, ``random_state=0``);
the test accuracy printed here is the one written into the model card.
Recipe: AdamW (lr 3e-3, weight decay 1e-4), cosine schedule, batch 64,
random ±2 px shifts on the 32 px input, deterministic (seed 0, 2 threads).

Usage::

    python scripts/train_digits_model.py [--output-dir hf_px/assets/digits-resnet]

Prints one JSON object (accuracies, parameter count, size on disk).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from transformers import ResNetConfig, ResNetForImageClassification
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "hf_px" / "assets" / "digits-resnet"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "digits_resnet_card.md"
TEST_SIZE = 0.25
SPLIT_SEED = 0


def digits_images() -> tuple[list[Image.Image], np.ndarray]:
    """The digits as 8×8 RGB PIL images (grey level g → round(g·255/16))."""
    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [Image.fromarray(g, mode="L").convert("RGB") for g in grey], digits.target


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(labels))
    train, test = train_test_split(
        idx, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


def make_processor() -> ViTImageProcessorPil:
    # saved as "ViTImageProcessor": AutoImageProcessor picks the torchvision or the
    # PIL backend, whichever is installed (checked: the PIL one without torchvision)
    return ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def make_model() -> ResNetForImageClassification:
    labels = {i: str(i) for i in range(10)}
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        num_labels=10,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    return ResNetForImageClassification(config)


def shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translation by up to `max_px` pixels, padding with the background."""
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (max_px,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_px + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_px + 1, (n,), generator=g)
    h, w = x.shape[-2:]
    return torch.stack(
        [pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]
    ).contiguous()


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat(
        [model(pixel_values=x[i : i + 256]).logits.argmax(-1) for i in range(0, len(x), 256)]
    )
    return float((pred == y).float().mean())


def train(model, x, y, epochs: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            out = model(pixel_values=shift(x[b], g), labels=y[b])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    images, labels = digits_images()
    train_idx, test_idx = split_indices(labels)
    processor = make_processor()
    x = processor(images, return_tensors="pt")["pixel_values"]
    y = torch.as_tensor(labels, dtype=torch.long)
    x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]

    model = train(make_model(), x_tr, y_tr, epochs=args.epochs)
    acc_train, acc_test = accuracy(model, x_tr, y_tr), accuracy(model, x_te, y_te)
    n_params = sum(p.numel() for p in model.parameters())

    out = args.output_dir
    tmp = Path(
        tempfile.mkdtemp(prefix=".digits-resnet-", dir=out.parent if out.parent.exists() else None)
    )
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="apache-2.0",
        tags=["image-classification", "resnet", "digits", "hf-px"],
        metrics=["accuracy"],
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        test_accuracy=f"{acc_test:.4f}",
        train_accuracy=f"{acc_train:.4f}",
        n_train=len(train_idx),
        n_test=len(test_idx),
        n_params=n_params,
        epochs=args.epochs,
        test_size=TEST_SIZE,
        split_seed=SPLIT_SEED,
    )
    card.save(tmp / "README.md")
    tmp.chmod(0o755)  # mkdtemp makes 0700 and save_pretrained 0600 files; ship readable ones
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    result = {
        "output_dir": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "train_accuracy": acc_train,
        "test_accuracy": acc_test,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "parameters": n_params,
        "size_on_disk_bytes": size_on_disk(out),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
