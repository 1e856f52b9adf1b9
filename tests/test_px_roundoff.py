"""No PX score is round-off, on any supported family.

For every supported model type, the float32 PX scores a prune ranks with are
compared with the same scores in float64 (same options, same overflow fallback).
A tensor whose float64 scores are all zero, or whose float32 scores disagree with
float64 beyond what float32 explains, would be ranked by round-off: such a tensor
must be kept dense by the rule of docs/method.md §4.4 (it is then not prunable and
not scored), so the test fails on any such tensor it still finds.
"""

from __future__ import annotations

import pytest
import tiny_families as tf
import torch
from test_families import SUPPORTED

from hf_px.adapters import get_adapter
from hf_px.methods import RoundCache, ScoringContext, get_method
from hf_px.pruning import _score

#: float32 keeps ~7 digits per operation; a few thousand accumulations stay far inside this
AGREE = 1e-3


def _px_scores(model, batches, options):
    adapter = get_adapter(model)
    params = adapter.prunable_parameters(model)
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}
    cache = RoundCache()
    ctx = ScoringContext(model, adapter, params, masks, options=dict(options), cache=cache)
    scores = _score(get_method("px"), ctx, batches)
    return scores, cache.store.get("px_fallback") or {}


def roundoff_ranked(model_type: str) -> list[str]:
    """Tensors of `model_type` whose float32 PX scores are not float64's (see module doc)."""
    torch.set_num_threads(1)
    narrow, fallback = _px_scores(tf.build(model_type), tf.batches(model_type), {})
    wide_batches = [
        {**b, "pixel_values": b["pixel_values"].double()} for b in tf.batches(model_type)
    ]
    wide, _ = _px_scores(tf.build(model_type).double(), wide_batches, fallback)
    total32 = sum(float(s.double().sum()) for s in narrow.values())
    total64 = sum(float(s.sum()) for s in wide.values())
    assert total32 > 0 and total64 > 0, model_type
    bad = []
    for name, s32 in narrow.items():
        a = s32.double() / total32
        b = wide[name].double() / total64
        b_max = float(b.abs().max())
        if b_max == 0.0:
            bad.append(f"{name}: all zero in float64")
        elif float((a - b).abs().max()) > AGREE * b_max:
            bad.append(f"{name}: float32 off by {float((a - b).abs().max()) / b_max:.1e}")
    return bad


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_no_px_score_is_roundoff(model_type):
    bad = roundoff_ranked(model_type)
    assert not bad, f"{model_type}: {bad[:4]}{' ...' if len(bad) > 4 else ''}"


def test_probability_only_rule_is_structural_and_shared_by_generic_path_and_adapters():
    from hf_px.adapters import Adapter

    donut = tf.build("donut-swin")
    adapter = get_adapter(donut)
    assert adapter.name == "vit"  # Donut-Swin is Swin: the ViT/Swin adapter
    found = Adapter().probability_only_weights(donut)
    assert len(found) == 6 and all(n.endswith(("query.weight", "key.weight")) for n in found)
    # the same tensors kept dense whether the generic path or the adapter prunes it
    assert set(adapter.prunable_parameters(donut)) == set(Adapter().prunable_parameters(donut))
    assert not set(found) & set(adapter.prunable_parameters(donut))
    v2 = tf.build("swinv2")
    found = get_adapter(v2).probability_only_weights(v2)
    assert any("continuous_position_bias_mlp" in n for n in found)
    # attention read as a gate (Swin through AttentionInterface) keeps q/k prunable
    swin = tf.build("swin")
    assert get_adapter(swin).probability_only_weights(swin) == {}
    assert any(n.endswith("q_proj.weight") for n in get_adapter(swin).prunable_parameters(swin))
