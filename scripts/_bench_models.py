"""Full-size configs (random init) shared by the benchmark scripts."""

from __future__ import annotations

import torch


def build(name: str, image_size: int, num_labels: int = 10):
    import transformers as t

    torch.manual_seed(0)
    if name == "resnet50":
        return t.ResNetForImageClassification(t.ResNetConfig(num_labels=num_labels)).eval()
    if name == "vit-base":
        cfg = t.ViTConfig(image_size=image_size, patch_size=16, num_labels=num_labels)
        return t.ViTForImageClassification(cfg).eval()
    if name == "deit-small":
        cfg = t.DeiTConfig(
            image_size=image_size,
            patch_size=16,
            hidden_size=384,
            num_attention_heads=6,
            intermediate_size=1536,
            num_labels=num_labels,
        )
        return t.DeiTForImageClassification(cfg).eval()
    if name == "convnext-tiny":
        return t.ConvNextForImageClassification(t.ConvNextConfig(num_labels=num_labels)).eval()
    raise ValueError(name)


def batches(n_batches: int, batch_size: int, image_size: int, num_labels: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]
