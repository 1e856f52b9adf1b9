"""Quickstart: prune a tiny ResNet (built from a config) with PX on real offline data.

The data are scikit-learn's handwritten digits (shipped with the package),
upsampled to 32 px RGB. Prints one JSON object.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from transformers import ResNetConfig, ResNetForImageClassification

from hf_px import prune


def digits_batches(per_class: int = 10, batch_size: int = 50, size: int = 32):
    digits = load_digits()
    idx = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    x = torch.tensor(digits.images[idx], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target[idx])
    return [
        {"pixel_values": x[i : i + batch_size], "labels": y[i : i + batch_size]}
        for i in range(0, len(x), batch_size)
    ]


def main() -> None:
    torch.manual_seed(0)
    model = ResNetForImageClassification(
        ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_labels=10)
    ).eval()
    batches = digits_batches()
    t0 = time.perf_counter()
    result = prune(model, batches, sparsity=0.9, method="px", rounds=100)
    out = {
        "model": "ResNet (config-built, random init)",
        "data": "scikit-learn digits, 10 per class",
        "requested_sparsity": 0.9,
        "achieved_sparsity": result.sparsity,
        "min_tensor_density": min(1 - s for s in result.per_tensor_sparsity.values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
