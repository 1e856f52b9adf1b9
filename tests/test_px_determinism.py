"""The default PX gives the same masks whatever the thread count (the process count is
checked with real 2-process runs in test_distributed.py, cases px_vit and
px_resnet_default)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batches, tiny_resnet, tiny_vit

from hf_px import prune
from hf_px.methods import px

MODELS = {"resnet_batchnorm": tiny_resnet, "vit": tiny_vit}


def _masks(build, threads: int) -> dict[str, torch.Tensor]:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return prune(build(), make_batches(3, 6, 32), 0.9, "px", rounds=5).masks
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_default_masks_identical_with_1_and_2_threads(family):
    one, two = _masks(MODELS[family], 1), _masks(MODELS[family], 2)
    moved = sum(int((one[n] != two[n]).sum()) for n in one)
    assert moved == 0, f"{moved} mask entries differ between 1 and 2 threads"


def test_batchnorm_default_is_on_the_paths():
    """The reference BatchNorm treatment ranks round-off (its masks move with the thread
    count); the default must not be it."""
    assert px.DEFAULTS["bn"] != "reference"
