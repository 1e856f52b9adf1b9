"""prune / compute_scores contract: exact counts, monotone masks, determinism,
the model left untouched, and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import PixelNet, make_batches, tiny_resnet, tiny_vit
from torch import nn

from hf_px import HfPxError, HfPxFailure, PruningConfig, compute_scores, prune
from hf_px.masks import keep_counts, select_global, top_k_stable

METHODS = ["px", "snip", "grasp", "synflow", "magnitude", "random", "wanda"]


def _n_prunable(result):
    return sum(m.numel() for m in result.masks.values())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_exact_sparsity_every_method_and_scope(method, scope):
    model = tiny_resnet()
    result = prune(model, make_batches(1, 4), 0.73, method=method, rounds=3, scope=scope)
    n = _n_prunable(result)
    zeros = sum(int((~m).sum()) for m in result.masks.values())
    assert zeros == round(0.73 * n)
    params = dict(model.named_parameters())
    for name, m in result.masks.items():
        assert (params[name][~m] == 0).all()
        # +0.0, not -0.0
        assert not torch.signbit(params[name][~m]).any()
    if scope == "layerwise":
        for name, m in result.masks.items():
            assert abs(float((~m).float().mean()) - 0.73) <= 1.0 / m.numel() + 1e-9


def test_ties_and_single_round_are_exact():
    model = tiny_resnet()
    with torch.no_grad():  # every weight equal but each tensor's first: most scores tie
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.fill_(0.5)
                p.view(-1)[0] = 0.75
    r1 = prune(copy.deepcopy(model), [], 0.5, method="magnitude", rounds=1, min_density_ratio=0)
    n = _n_prunable(r1)
    assert sum(int((~m).sum()) for m in r1.masks.values()) == round(0.5 * n)
    # stable rule: the 0.75s, then the first tied weights (parameter order, flat index)
    params = dict(model.named_parameters())
    values = torch.cat([params[x].detach().reshape(-1) for x in r1.masks])
    flat = torch.cat([m.reshape(-1) for m in r1.masks.values()])
    k = n - round(0.5 * n)
    tied = torch.nonzero(values == 0.5).squeeze(1)
    expected = values == 0.75
    expected[tied[: k - int(expected.sum())]] = True
    assert torch.equal(flat, expected)
    r2 = prune(copy.deepcopy(model), [], 0.5, method="magnitude", rounds=1, min_density_ratio=0)
    assert all(torch.equal(r1.masks[x], r2.masks[x]) for x in r1.masks)


def test_a_fully_tied_tensor_is_an_error_not_a_tie_order_mask():
    model = tiny_resnet()
    with torch.no_grad():  # every magnitude score of the stem ties
        model.resnet.embedder.embedder.convolution.weight.fill_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HfPxFailure, match=r"all equal .*embedder.*tie order"):
        prune(model, [], 0.5, method="magnitude", rounds=1)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_top_k_stable_tie_rule():
    flat = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, -1.0])
    assert top_k_stable(flat, 3).tolist() == [False, True, True, True, False, False]
    assert top_k_stable(flat, 2).tolist() == [False, True, True, False, False, False]


def _top_k_by_sort(flat, k):
    order = torch.sort(-flat, stable=True).indices  # descending, ties in index order
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("kind", ["continuous", "ties", "mostly_pruned", "few_nonzero"])
def test_top_k_stable_on_large_inputs_equals_a_full_sort(kind):
    # above the size where the threshold is searched in a sampled bracket
    g = torch.Generator().manual_seed(3)
    n = (1 << 20) + 12345
    flat = torch.rand(n, generator=g)
    if kind == "ties":
        flat = (flat * 40).floor()
    elif kind == "mostly_pruned":
        flat[torch.rand(n, generator=g) < 0.9] = float("-inf")
    elif kind == "few_nonzero":
        flat = torch.zeros(n)
        flat[-7:] = 1.0
    for k in (1, 5, n // 10, n // 2, int(0.977 * n), n - 3):
        got = top_k_stable(flat, k)
        assert int(got.sum()) == k
        assert torch.equal(got, _top_k_by_sort(flat, k)), (kind, k)


def test_pruned_weights_never_return():
    model = tiny_vit()
    snapshots = []
    prune(
        model,
        make_batches(1, 4),
        0.9,
        method="px",
        rounds=6,
        callback=lambda info: snapshots.append({k: v.clone() for k, v in info["masks"].items()}),
    )
    assert len(snapshots) == 6
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        for name in before:
            assert not (after[name] & ~before[name]).any(), name
    counts = [sum(int(m.sum()) for m in s.values()) for s in snapshots]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 6


def test_select_global_never_revives_even_with_high_scores():
    masks = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([True, True])}
    scores = {"a": torch.tensor([0.1, 99.0, 0.2, 99.0]), "b": torch.tensor([0.3, 0.05])}
    keep = select_global(scores, masks, 3, 0.5)
    assert keep["a"].tolist() == [True, False, True, False]
    assert keep["b"].tolist() == [True, False]


def test_schedule_is_exponential_and_exact():
    counts = keep_counts(1000, 0.9, 4)
    assert counts == [1000 - round((1 - 0.1 ** (r / 4)) * 1000) for r in range(1, 4)] + [100]


def test_collapse_guard_keeps_a_floor_per_tensor():
    masks = {"big": torch.ones(1000, dtype=torch.bool), "small": torch.ones(100, dtype=torch.bool)}
    scores = {"big": torch.rand(1000) + 1.0, "small": torch.rand(100)}
    keep = select_global(scores, masks, 110, 0.1, min_density_ratio=0.1)
    assert int(keep["small"].sum()) == 1  # ceil(0.1 * 0.1 * 100)
    assert int(keep["big"].sum()) == 109
    keep0 = select_global(scores, masks, 110, 0.1, min_density_ratio=0.0)
    assert int(keep0["small"].sum()) == 0  # reference behaviour: the layer collapses


@pytest.mark.parametrize("method", ["px", "random", "snip"])
def test_same_seed_same_masks(method):
    b = make_batches(1, 4)
    r1 = prune(tiny_resnet(), b, 0.8, method=method, rounds=2, seed=7)
    r2 = prune(tiny_resnet(), b, 0.8, method=method, rounds=2, seed=7)
    assert all(torch.equal(r1.masks[n], r2.masks[n]) for n in r1.masks)
    if method == "random":
        r3 = prune(tiny_resnet(), b, 0.8, method=method, rounds=2, seed=8)
        assert not all(torch.equal(r1.masks[n], r3.masks[n]) for n in r1.masks)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factory", [tiny_resnet, tiny_vit])
def test_compute_scores_leaves_model_bit_identical(method, factory):
    model = factory()
    model.train()  # a non-default mode must survive
    model.classifier.weight.requires_grad_(False) if hasattr(model.classifier, "weight") else None
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    g = torch.Generator().manual_seed(0)
    masks = {
        n: torch.rand(p.shape, generator=g) > 0.5
        for n, p in model.named_parameters()
        if p.dim() in (2, 4) and "embeddings" not in n or n.endswith("projection.weight")
    }
    scores = compute_scores(model, make_batches(1, 4), method=method, masks=masks)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert modes == [m.training for m in model.modules()]
    assert grads == [p.requires_grad for p in model.parameters()]
    assert hooks_before == sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )
    handle.remove()
    for n, m in masks.items():
        if n in scores:
            assert (scores[n][~m] == 0).all(), n
    assert all(p.grad is None for p in model.parameters())


def test_config_round_trips_json(tmp_path):
    result = prune(
        tiny_resnet(), make_batches(1, 4), 0.5, method="magnitude", exclude=["classifier"]
    )
    cfg = result.config
    assert cfg.rounds == 1 and cfg.exclude == ["classifier"]
    again = PruningConfig.from_json(cfg.to_json())
    assert again == cfg
    cfg.save_pretrained(tmp_path)
    assert PruningConfig.from_pretrained(tmp_path) == cfg
    assert json.loads((tmp_path / "pruning_config.json").read_text())["method"] == "magnitude"
    assert not any("classifier" in n for n in result.masks)


def test_default_prunable_set():
    model = tiny_vit()
    names = set(compute_scores(model, make_batches(1, 2), method="magnitude"))
    assert "vit.embeddings.patch_embeddings.projection.weight" in names
    assert "classifier.weight" in names
    assert not any(n.endswith("bias") for n in names)
    assert not any("layernorm" in n or "cls_token" in n or "position" in n for n in names)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sparsity": 90}, "did you mean 0.9"),
        ({"sparsity": 0.0}, "fraction in (0, 1)"),
        ({"sparsity": 1.0}, "fraction in (0, 1)"),
        ({"sparsity": 0.5, "method": "nope"}, "choose one of"),
        ({"sparsity": 0.5, "scope": "local"}, "'global' or 'layerwise'"),
        ({"sparsity": 0.5, "rounds": 0}, "positive integer"),
        ({"sparsity": 0.5, "exclude": ["("]}, "fix the pattern"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(HfPxError, match=None) as err:
        prune(tiny_resnet(), make_batches(1, 2), **kwargs)
    assert fragment in str(err.value)


def test_bad_inputs():
    model = tiny_resnet()
    with pytest.raises(HfPxError, match="batches` is empty"):
        prune(model, [], 0.5, method="px")
    with pytest.raises(HfPxError, match="needs labels"):
        compute_scores(model, [{"pixel_values": torch.randn(2, 3, 32, 32)}], method="snip")
    with pytest.raises(HfPxError, match="pixel_values"):
        compute_scores(model, [{"pixel_values": torch.randn(3, 32, 32)}], method="px")
    with pytest.raises(HfPxError, match="no prunable weight"):
        compute_scores(PixelNet(nn.Flatten()), make_batches(1, 2), method="magnitude")
    with pytest.raises(HfPxError, match="no prunable weight"):
        prune(model, make_batches(1, 2), 0.5, exclude=[".*"])


def test_scoring_restores_the_callers_denormal_setting():
    from hf_px.pruning import _denormals_flushed

    torch.set_flush_denormal(False)
    prune(tiny_resnet(), make_batches(1, 4), 0.5, method="px", rounds=1)
    assert not _denormals_flushed()
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0


def test_pruned_scores_are_plus_zero_even_from_negative_or_infinite_scores():
    from hf_px.utils import zero_where_pruned

    scores = torch.tensor([-2.0, 3.0, float("inf"), -float("inf"), 5.0, -1.0])
    mask = torch.tensor([False, True, False, False, True, True])
    out = zero_where_pruned(scores, mask)
    assert out.tolist() == [0.0, 3.0, 0.0, 0.0, 5.0, -1.0]
    assert not torch.signbit(out[~mask]).any() and not torch.isnan(out).any()
    assert torch.equal(scores, torch.tensor([-2.0, 3.0, float("inf"), -float("inf"), 5.0, -1.0]))
