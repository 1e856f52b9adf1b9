"""BatchNorm statistics re-estimated after pruning (library + CLI)."""

from __future__ import annotations

import torch
from conftest import make_batches, tiny_resnet, tiny_vit
from torch import nn

from hf_px import prune, recalibrate_batchnorm


def test_recalibrate_sets_batch_statistics_and_restores_modes():
    model = tiny_resnet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(9.0)
    prune(model, make_batches(1, 4), 0.5, method="magnitude")
    batches = make_batches(1, 6, seed=4)
    stem = model.resnet.embedder.embedder
    with torch.no_grad():
        pre = stem.convolution(batches[0]["pixel_values"])
    weights_before = {n: p.clone() for n, p in model.named_parameters()}
    model.train()
    assert recalibrate_batchnorm(model, batches) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    )
    assert model.training and all(m.training for m in model.modules())
    assert torch.allclose(stem.normalization.running_mean, pre.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(stem.normalization.running_var, pre.var((0, 2, 3)), rtol=1e-4)
    assert all(torch.equal(p, weights_before[n]) for n, p in model.named_parameters())
    assert stem.normalization.momentum == 0.1


def test_recalibrate_without_batchnorm_is_a_no_op():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, make_batches(1, 2)) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
