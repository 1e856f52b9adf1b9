"""Train small ResNet / ConvNeXt / ViT classifiers on all of Fashion-MNIST, once, and cache them.

The pretrained-model benchmark (``scripts/bench_pretrained.py``) and the
structured-pruning benchmark load these checkpoints by path: each is a
``save_pretrained`` directory with its image processor (hf-px's default:
28 px, grey → RGB, ImageNet mean/std) and ``dense.json`` (the recipe and the
dense top-1 on the 10,000 test images). Layout under the output root::

    <root>/resnet/  <root>/convnext/  <root>/vit/      10 classes, 60,000 train images
    <root>/vit-transfer/  <root>/resnet-transfer/      classes 0-4 only (30,000 images)

``<root>`` is ``--out``, else ``$HF_PX_FMNIST_MODELS``, else
``~/.cache/hf-px/fmnist-models`` (outside git: the weights are rebuilt, not
committed). A family whose ``dense.json`` already exists is skipped
(``--force`` retrains). Recipe: AdamW (lr 2e-3, weight decay 0.01), cosine
decay, batch 128, gradient clipping 1.0, seed 0, ``torch`` threads 2.

    python scripts/train_fmnist_models.py                       # all five, ~10-20 min on 2 cores
    python scripts/train_fmnist_models.py --families vit --epochs 3
    python scripts/train_fmnist_models.py --quick --out /tmp/m  # 512 images, seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fashion_mnist import CLASS_NAMES, FashionMnistMissing, read_split  # noqa: E402

SIZE = 28
CONFIGS = {
    "resnet": {
        "embedding_size": 32,
        "hidden_sizes": [32, 64, 128],
        "depths": [1, 1, 1],
        "layer_type": "basic",
        "downsample_in_first_stage": False,
    },
    "convnext": {
        "num_stages": 3,
        "hidden_sizes": [32, 64, 128],
        "depths": [1, 1, 1],
        "patch_size": 2,
    },
    "vit": {
        "image_size": SIZE,
        "patch_size": 4,
        "hidden_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 192,
    },
}
# "<family>-transfer": the family's config trained on these classes only
TRANSFER_CLASSES = (0, 1, 2, 3, 4)
FAMILIES = ("resnet", "convnext", "vit", "vit-transfer", "resnet-transfer")
RECIPE = {
    "epochs": 2,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.01,
    "optimizer": "adamw",
    "schedule": "cosine",
    "max_grad_norm": 1.0,
    "seed": 0,
}
MEAN = (0.485, 0.456, 0.406)  # IMAGENET_DEFAULT_MEAN/STD: hf-px's default image processor
STD = (0.229, 0.224, 0.225)


def default_root() -> Path:
    env = os.environ.get("HF_PX_FMNIST_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "hf-px" / "fmnist-models"


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 N×28×28 → float N×3×28×28, exactly what the saved image processor gives."""
    x = torch.from_numpy(np.array(images)).float().div_(255.0)
    x = x[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def image_processor():
    from hf_px.calibration import default_image_processor

    return default_image_processor(image_size=SIZE)


def build(family: str, classes: tuple[int, ...], seed: int):
    import transformers as t

    base = family.removesuffix("-transfer")
    kw = dict(CONFIGS[base])
    kw["num_labels"] = len(classes)
    kw["id2label"] = {i: CLASS_NAMES[c] for i, c in enumerate(classes)}
    kw["label2id"] = {CLASS_NAMES[c]: i for i, c in enumerate(classes)}
    torch.manual_seed(seed)
    if base == "resnet":
        return t.ResNetForImageClassification(t.ResNetConfig(**kw))
    if base == "convnext":
        return t.ConvNextForImageClassification(t.ConvNextConfig(image_size=SIZE, **kw))
    if base == "vit":
        return t.ViTForImageClassification(t.ViTConfig(**kw))
    raise ValueError(family)


def select(images, labels, classes):
    """The images of `classes`, labels renumbered 0..len(classes)-1."""
    keep = np.isin(labels, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return images[keep], np.array([remap[int(c)] for c in labels[keep]], dtype=np.int64)


@torch.no_grad()
def top1(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(pixel_values=to_pixels(images[i : i + batch_size])).logits
        correct += int((logits.argmax(-1) == torch.from_numpy(labels[i : i + batch_size])).sum())
    return correct / len(labels)


def train(model, images, labels, recipe, log=print) -> float:
    """Plain AdamW + cosine training; returns the last epoch's mean loss."""
    g = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    bs, n = recipe["batch_size"], len(labels)
    steps_per_epoch = math.ceil(n / bs)
    total = recipe["epochs"] * steps_per_epoch
    y_all = torch.from_numpy(labels)
    step, loss_mean = 0, float("nan")
    model.train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(n, generator=g).numpy()
        running, t0 = 0.0, time.perf_counter()
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            for group in opt.param_groups:
                group["lr"] = 0.5 * recipe["lr"] * (1 + math.cos(math.pi * step / total))
            logits = model(pixel_values=to_pixels(images[idx])).logits
            loss = torch.nn.functional.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
            opt.step()
            running += float(loss)
            step += 1
        loss_mean = running / steps_per_epoch
        log(f"  epoch {epoch + 1}: loss {loss_mean:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return loss_mean


def train_family(family: str, out: Path, recipe: dict, limit: int | None, log=print) -> dict:
    classes = TRANSFER_CLASSES if family.endswith("-transfer") else tuple(range(10))
    xtr, ytr = select(*read_split("train"), classes)
    xte, yte = select(*read_split("test"), classes)
    if limit:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    model = build(family, classes, recipe["seed"])
    t0 = time.perf_counter()
    loss = train(model, xtr, ytr, recipe, log)
    train_s = time.perf_counter() - t0
    acc = top1(model, xte, yte)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_processor().save_pretrained(out)
    info = {
        "family": family,
        "model_type": model.config.model_type,
        "config": CONFIGS[family.removesuffix("-transfer")],
        "classes": list(classes),
        "recipe": recipe,
        "train_images": int(len(ytr)),
        "test_images": int(len(yte)),
        "dense_top1": acc,
        "final_train_loss": loss,
        "train_s": round(train_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    (out / "dense.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="root (default: see module doc)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="retrain families already there")
    p.add_argument("--quick", action="store_true", help="512 images, 1 epoch (smoke test)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = a.out or default_root()
    recipe = dict(RECIPE, epochs=1 if a.quick else a.epochs)
    limit = 512 if a.quick else a.limit
    results = {}
    try:
        for family in a.families:
            out = root / family
            if (out / "dense.json").exists() and not a.force:
                results[family] = json.loads((out / "dense.json").read_text())
                print(f"{family}: cached in {out}", file=sys.stderr)
                continue
            print(f"{family}: training -> {out}", file=sys.stderr)
            info = train_family(family, out, recipe, limit, log=lambda s: print(s, file=sys.stderr))
            results[family] = info
            print(f"{family}: dense top-1 {info['dense_top1']:.4f}", file=sys.stderr)
    except FashionMnistMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {f: {"dir": str(root / f), "dense_top1": r["dense_top1"]} for f, r in results.items()}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
