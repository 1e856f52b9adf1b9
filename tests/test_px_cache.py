"""PX's data-side cache across the rounds of a prune: ``refresh="every"`` is the
paper's full recompute, the default reuses Σ z_data / q/k gradients between refreshes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_batches, tiny_convnext, tiny_resnet, tiny_vit

from hf_px import HfPxError, compute_scores, prune
from hf_px.config import DEFAULT_MIN_DENSITY_RATIO
from hf_px.masks import keep_counts, select_global
from hf_px.methods import RoundCache, ScoringContext, get_method
from hf_px.methods.px import DEFAULT_REFRESH, refresh_policy
from hf_px.pruning import _score


def _manual_loop(model, batches, sparsity, rounds, **opts):
    """The full recompute, spelled out: one cache-less `compute_scores` per round."""
    from hf_px.adapters import get_adapter

    params = get_adapter(model).prunable_parameters(model, ())
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}
    total = sum(p.numel() for p in params.values())
    for k in keep_counts(total, sparsity, rounds):
        scores = compute_scores(model, batches, "px", masks=masks, **opts)
        masks = select_global(scores, masks, k, k / total, DEFAULT_MIN_DENSITY_RATIO)
    return masks


@pytest.mark.parametrize(
    "factory,opts",
    [(tiny_vit, {}), (tiny_resnet, {"bn": "reference"}), (tiny_resnet, {}), (tiny_convnext, {})],
    ids=["vit", "resnet-reference", "resnet-default", "convnext"],
)
def test_refresh_every_is_the_full_recompute(factory, opts):
    model = factory()
    batches = make_batches(2, 3)
    result = prune(copy.deepcopy(model), batches, 0.8, "px", rounds=3, refresh="every", **opts)
    expected = _manual_loop(model, batches, 0.8, 3, **opts)
    assert set(result.masks) == set(expected)
    for n in expected:
        assert torch.equal(result.masks[n], expected[n]), n
    assert all(h["data_refreshed"] for h in result.history)


def _ctx(model, masks, cache, **opts):
    from hf_px.adapters import get_adapter

    adapter = get_adapter(model)
    params = adapter.prunable_parameters(model, ())
    if masks is None:
        masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}
    return ScoringContext(model, adapter, params, masks, cache=cache, options=dict(opts))


@pytest.mark.parametrize(
    "factory,n_batches,opts",
    [
        (tiny_vit, 2, {}),
        (tiny_resnet, 1, {"bn": "reference"}),
        (tiny_resnet, 2, {}),
        (tiny_convnext, 2, {}),
    ],
    ids=["vit-qk", "resnet-reference-grouped", "resnet-default", "convnext"],
)
def test_reused_data_side_with_unchanged_masks_gives_the_same_scores(factory, n_batches, opts):
    """Same masks twice with one cache: the second call reuses the data side and
    must assemble exactly the scores a fresh computation gives."""
    model = factory()
    batches = make_batches(n_batches, 3)
    method = get_method("px")
    cache = RoundCache()
    fresh = _score(method, _ctx(model, None, cache, **opts), batches)
    assert cache.notes["data_refreshed"] is True and "px" in cache.store
    cache.notes = {}
    again = _score(method, _ctx(model, None, cache, **opts), batches)
    assert cache.notes["data_refreshed"] is False
    for n in fresh:
        assert torch.equal(fresh[n], again[n]), n


def test_reused_data_side_is_stale_only_on_the_data_side():
    """After pruning, a reused round keeps the old Σ z_data but a fresh kernel net:
    its scores differ from both the old round and a full recompute."""
    model = tiny_vit()
    batches = make_batches(2, 3)
    method = get_method("px")
    cache = RoundCache()
    s0 = _score(method, _ctx(model, None, cache), batches)
    total = sum(s.numel() for s in s0.values())
    ones = {n: torch.ones_like(s, dtype=torch.bool) for n, s in s0.items()}
    k = int(total * 0.9)  # 10% fall < the default 30%: reuse
    masks = select_global(s0, ones, k, k / total, 0.1)
    cache.notes = {}
    reused = _score(method, _ctx(model, masks, cache), batches)
    assert cache.notes["data_refreshed"] is False
    full = _score(method, _ctx(model, masks, None), batches)
    name = "vit.layers.0.mlp.fc1.weight"
    assert not torch.equal(reused[name], full[name])
    assert not torch.equal(reused[name], s0[name])
    # the same support, and close: only the per-class weighting is stale
    assert torch.equal(reused[name] > 0, full[name] > 0)


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_default_policy_refreshes_when_density_fell_by_the_fraction(sparsity):
    rounds = 25
    result = prune(tiny_convnext(), make_batches(1, 3), sparsity, "px", rounds=rounds)
    refreshed = [h["round"] for h in result.history if h["data_refreshed"]]
    # expected from the schedule alone: masks scored in round r have density d_{r-1}
    f, last, want = DEFAULT_REFRESH, None, []
    densities = [1.0] + [h["density"] for h in result.history][:-1]
    for r, d in enumerate(densities, start=1):
        if last is None or d <= (1 - f) * last:
            want.append(r)
            last = d
    assert refreshed == want
    assert refreshed[0] == 1 and 3 <= len(refreshed) <= 11
    drift = [h["data_drift"] for h in result.history if "data_drift" in h]
    assert len(drift) == len(refreshed) - 1 and all(0.0 <= x <= 2.0 for x in drift)


def test_refresh_option_validation_and_spelling():
    assert refresh_policy("every") is None
    assert refresh_policy("0.25") == 0.25 and refresh_policy(0.5) == 0.5
    for bad in ("often", 1.5, -0.1, 1):
        with pytest.raises(HfPxError, match="refresh"):
            refresh_policy(bad)
    with pytest.raises(HfPxError, match="refresh"):
        prune(tiny_vit(), make_batches(1, 2), 0.5, "px", rounds=2, refresh="sometimes")


def test_timings_and_progress_report_phases_and_eta():
    seen = []
    result = prune(tiny_vit(), make_batches(1, 3), 0.9, "px", rounds=5, callback=seen.append)
    t = result.timings
    for key in ("prune_s", "scoring_s", "scoring_data_s", "scoring_kernel_s", "threshold_s"):
        assert t[key] >= 0.0, key
    assert t["scoring_data_s"] + t["scoring_kernel_s"] <= t["scoring_s"] + 1e-6
    assert t["scoring_s"] + t["threshold_s"] <= t["prune_s"] + 1e-6
    assert [s["round"] for s in seen] == [1, 2, 3, 4, 5]
    assert all(s["rounds"] == 5 and s["eta_s"] >= 0 and s["elapsed_s"] > 0 for s in seen)
    assert seen[-1]["eta_s"] == 0.0
    assert seen[0]["data_refreshed"] is True
    # methods without a cache use report only the common phases
    snip = prune(tiny_vit(), make_batches(1, 3), 0.5, "snip").timings
    assert "scoring_data_s" not in snip and snip["threshold_s"] >= 0.0


def test_eta_counts_the_refreshes_the_schedule_still_holds():
    from hf_px.pruning import _eta

    total = 1_000_000
    counts = keep_counts(total, 0.9, 100)
    # after round 2 of a 100-round prune to 90%: one refreshed round (10 s), one reused (1 s);
    # refresh 0.3 recomputes 7 times in all (docs), so 6 more refreshes in the 98 rounds left
    eta = _eta([10.0], [1.0], (0.3, 1.0), counts[1:], total)
    assert eta == pytest.approx(6 * 10.0 + 92 * 1.0)
    # without a plan (a method that recomputes everything) every round costs the mean
    assert _eta([10.0, 1.0], [], None, counts[1:], total) == pytest.approx(5.5 * 98)
    assert _eta([10.0], [1.0], (0.3, 1.0), counts[-1:], total) == 0.0


def test_prune_reports_its_refresh_plan_to_the_eta():
    seen = []
    prune(tiny_vit(), make_batches(1, 3), 0.9, "px", rounds=12, callback=seen.append)
    refreshed = [s["round"] for s in seen if s["data_refreshed"]]
    assert refreshed[0] == 1 and len(refreshed) < 12  # some rounds reused the data side
    assert all(s["eta_s"] >= 0 for s in seen) and seen[-1]["eta_s"] == 0.0
