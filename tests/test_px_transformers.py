"""PX on GELU / LayerNorm / attention families (tiny configs).

Full-size configs run in `test_px_fullsize.py` (slow).
"""

from __future__ import annotations

import pytest
import tiny_families
import torch
from conftest import make_batches, tiny_convnext, tiny_resnet, tiny_vit

from hf_px import compute_scores, prune
from hf_px.adapters import get_adapter


def tiny_deit(seed=0):
    return tiny_families.build("deit", seed)


def tiny_swin(seed=0):
    return tiny_families.build("swin", seed)


FAMILIES = {
    "vit": tiny_vit,
    "deit": tiny_deit,
    "convnext": tiny_convnext,
    "resnet": tiny_resnet,
    "swin": tiny_swin,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_tensor_gets_finite_nonnegative_nonzero_scores(family):
    model = FAMILIES[family]()
    scores = compute_scores(model, make_batches(2, 4, 32), method="px")
    assert len(scores) >= 5
    for name, s in scores.items():
        assert torch.isfinite(s).all(), name
        assert (s >= 0).all(), name
        assert s.sum() > 0, f"{family}: all-zero scores for {name}"


def test_adapters_registered_by_model_type():
    assert get_adapter(tiny_vit()).name == "vit"
    assert get_adapter(tiny_deit()).name == "vit"
    assert get_adapter(tiny_convnext()).name == "convnext"
    assert get_adapter(tiny_resnet()).name == "resnet"
    vit = tiny_vit()
    attn = get_adapter(vit).attention(vit)
    assert len(attn) == 2 and attn[0].q.endswith("q_proj.weight")


def test_generic_fallback_warns_once(caplog, monkeypatch):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    import hf_px.adapters as adapters

    monkeypatch.setattr(adapters, "_warned", set())  # other tests may have warned already

    model = MobileNetV2ForImageClassification(
        MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=3)
    ).eval()
    with caplog.at_level("WARNING"):
        s1 = compute_scores(model, make_batches(1, 2, 32), method="magnitude")
        compute_scores(model, make_batches(1, 2, 32), method="magnitude")
    warnings = [r for r in caplog.records if "generic path" in r.getMessage()]
    assert len(warnings) == 1
    assert all(torch.isfinite(v).all() for v in s1.values())


def test_query_key_raw_gate_scores_are_tiny_and_tied_rule_fixes_budget():
    """Raw q/k gate scores sit far below v (a global cut would drop attention), and the fix;
    measured with LayerNorm on the aux nets' own statistics (norm="rms"), where it was found."""
    model = tiny_vit(layers=4)
    batches = make_batches(2, 8, 32)
    raw = compute_scores(model, batches, method="px", qk="gate", norm="rms")
    tied = compute_scores(model, batches, method="px", qk="tied", norm="rms")
    q, v = "vit.layers.1.attention.q_proj.weight", "vit.layers.1.attention.v_proj.weight"
    assert raw[q].sum() > 0
    assert raw[q].mean() < 1e-3 * raw[v].mean()  # gate-only weights score far below
    # tied: same distribution as v, same ranking as the raw gate sensitivity
    assert torch.allclose(tied[q].flatten().sort().values, tied[v].flatten().sort().values)
    assert torch.equal(
        raw[q].flatten().argsort(stable=True), tied[q].flatten().argsort(stable=True)
    )


@pytest.mark.parametrize("family", ["vit", "convnext", "resnet"])
def test_no_layer_collapse_at_90_percent_global(family):
    model = FAMILIES[family]()
    result = prune(model, make_batches(1, 8, 32), sparsity=0.9, rounds=100, scope="global")
    assert abs(result.sparsity - 0.9) < 1e-3
    for name, mask in result.masks.items():
        assert mask.sum() >= 1, f"{family}: {name} collapsed"
    if family == "vit":
        dens = {n: m.float().mean().item() for n, m in result.masks.items()}
        for i in range(2):
            base = f"vit.layers.{i}.attention."
            assert dens[base + "q_proj.weight"] > 0.02
            assert abs(dens[base + "q_proj.weight"] - dens[base + "v_proj.weight"]) < 0.05


def _train_few_steps(model, steps=30):
    from hf_px.methods.base import logits_of

    batches = make_batches(4, 16, 32, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        b = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(
            logits_of(model(pixel_values=b["pixel_values"])), b["labels"]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_trained_weights_deep_net_fp32_no_overflow(family):
    """Trained weights (not init), 12 blocks, fp32: scores finite and non-zero."""
    if family == "vit":
        model = tiny_vit(layers=12)
    else:
        from transformers import ConvNextConfig, ConvNextForImageClassification

        torch.manual_seed(0)
        model = ConvNextForImageClassification(
            ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[6, 6], num_labels=3)
        )
    model = _train_few_steps(model)
    with torch.no_grad():  # large weights stress the squared kernel net
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    scores = compute_scores(model, make_batches(2, 4, 32), method="px")
    for name, s in scores.items():
        assert torch.isfinite(s).all(), name
        assert s.sum() > 0, name
