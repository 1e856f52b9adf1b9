"""PX's constraints on full-size configs (random init, small images). Slow:
run with `pytest -m slow tests/test_px_fullsize.py`."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

from hf_px import compute_scores, prune

FAMILIES = ["vit-base", "deit-small", "convnext-tiny", "resnet50"]


def _setup(family):
    models = load_script("_bench_models")
    size = 64 if family in ("resnet50", "convnext-tiny") else 32
    return models.build(family, size), models.batches(1, 4, size)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fullsize_scores_finite_nonnegative_nonzero(family):
    model, data = _setup(family)
    scores = compute_scores(model, data, method="px")
    for name, s in scores.items():
        assert torch.isfinite(s).all(), name
        assert (s >= 0).all(), name
        assert s.sum() > 0, name


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fullsize_no_layer_collapse_at_90(family):
    model, data = _setup(family)
    result = prune(model, data, 0.9, method="px", rounds=100, scope="global")
    assert all(int(m.sum()) >= 1 for m in result.masks.values())
