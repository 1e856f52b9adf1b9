"""The q/k budget rule's sorting helpers equal torch.sort exactly (values and the
stable order), whatever the dtype, ties and zeros."""

from __future__ import annotations

import pytest
import torch

from hf_px.methods import px


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_sorting_helpers_equal_torch_sort(dtype, n):
    g = torch.Generator().manual_seed(n)
    v = torch.rand(n, generator=g).to(dtype)
    v[::3] = 0.0  # ties at zero
    v[1::5] = v[0]  # ties elsewhere
    if n > 4:
        v[4] = -0.0  # sorts as +0.0, in index order
    assert torch.equal(px._ascending(v), torch.sort(v).values)
    assert torch.equal(px._stable_order(v), torch.sort(v, stable=True).indices)


def test_stable_order_falls_back_for_negative_and_nan():
    v = torch.tensor([0.5, -1.0, float("nan"), 0.5, 0.0])
    assert torch.equal(px._stable_order(v), torch.sort(v, stable=True).indices)
