"""The q/k budget rule's sorting helpers equal torch.sort exactly (values and the
stable order), whatever the dtype, ties and zeros."""

from __future__ import annotations

import pytest
import torch

from hf_px.methods.px import tie


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_sorting_helpers_equal_torch_sort(dtype, n):
    g = torch.Generator().manual_seed(n)
    v = torch.rand(n, generator=g).to(dtype)
    v[::3] = 0.0  # ties at zero
    v[1::5] = v[0]  # ties elsewhere
    if n > 4:
        v[4] = -0.0  # sorts as +0.0, in index order
    assert torch.equal(tie.ascending(v), torch.sort(v).values)
    assert torch.equal(tie.stable_order(v), torch.sort(v, stable=True).indices)


def test_stable_order_falls_back_for_negative_and_nan():
    v = torch.tensor([0.5, -1.0, float("nan"), 0.5, 0.0])
    assert torch.equal(tie.stable_order(v), torch.sort(v, stable=True).indices)


@pytest.mark.parametrize("case", ["random", "ties", "same_alive_count", "signed_zero", "negative"])
def test_numpy_tie_rule_equals_the_torch_rule_bit_for_bit(case, monkeypatch):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(7)
    scores = {n: torch.rand(48, 32, generator=g) ** 3 for n in "qkv"}
    masks = {
        n: torch.rand(48, 32, generator=g) < p for n, p in zip("qkv", (0.3, 0.4, 0.5), strict=True)
    }
    if case == "ties":
        scores["q"] = (scores["q"] * 4).floor()
    elif case == "same_alive_count":
        masks["q"] = masks["v"].clone()
    elif case == "signed_zero":
        scores["k"][0, :9] = -0.0
    elif case == "negative":
        scores["q"][1, :3] = -1.0
    block = [SimpleNamespace(q="q", k="k", v="v")]
    fast = tie.tie_to_value({n: t.clone() for n, t in scores.items()}, masks, block)
    monkeypatch.setattr(tie, "_numpy_ok", lambda t: False)
    slow = tie.tie_to_value({n: t.clone() for n, t in scores.items()}, masks, block)
    for n in "qk":
        assert torch.equal(fast[n].view(torch.int32), slow[n].view(torch.int32)), n
    assert not torch.equal(fast["q"], scores["q"])  # the rule did map q
