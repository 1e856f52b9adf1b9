"""Fixtures: tiny models built from configs, tiny hand-built nets, batches."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


class PixelNet(nn.Module):
    """A hand-built classifier called as ``model(pixel_values=...)``."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values)


def tiny_resnet(num_labels: int = 3, seed: int = 0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    cfg = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="bottleneck",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(cfg).eval()


def tiny_vit(num_labels: int = 3, seed: int = 0, layers: int = 2):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg).eval()


def tiny_convnext(num_labels: int = 3, seed: int = 0):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(seed)
    cfg = ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels, image_size=32
    )
    return ConvNextForImageClassification(cfg).eval()


def make_batches(n_batches: int = 2, batch_size: int = 4, size: int = 32, classes: int = 3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "labels": torch.randint(0, classes, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]


@pytest.fixture
def batches():
    return make_batches()
