"""PX's per-sample forms (px option ``form``): against a sample-by-sample brute force."""

from __future__ import annotations

import pytest
import torch
from conftest import PixelNet, make_batches, tiny_vit
from torch import nn

from hf_px import HfPxError, compute_scores, prune
from hf_px.methods.px import per_sample as pxtrained


def _net():
    torch.manual_seed(0)
    return PixelNet(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    ).eval()


def _brute(model, x, form, names=None, forward=lambda model, x: model(x)):
    """θ² Σ_n Σ_c w_nc (∂objective_c(x_n)/∂θ)², one sample and class at a time."""
    keep = (lambda n: n.endswith("weight")) if names is None else names.__contains__
    params = {n: p for n, p in model.named_parameters() if keep(n)}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for xn in x:
        logits = forward(model, xn[None])[0]
        p = torch.softmax(logits, -1).detach()
        for c in range(logits.shape[-1]):
            if form == "paths":
                obj, w = logits[c], 1.0
            else:
                obj, w = nn.functional.cross_entropy(logits[None], torch.tensor([c])), p[c]
            grads = torch.autograd.grad(obj, list(params.values()), retain_graph=True)
            for n, g in zip(params, grads, strict=True):
                acc[n] += w * g.double().pow(2)
    return {n: acc[n] * params[n].detach().double().pow(2) for n in params}


@pytest.mark.parametrize("form,chunk", [("paths", None), ("fisher", None), ("fisher", 40)])
def test_per_sample_forms_equal_brute_force(form, chunk, monkeypatch):
    if chunk is not None:  # per-sample gradients formed one or two samples at a time
        monkeypatch.setattr(pxtrained, "CHUNK_ELEMENTS", chunk)
    model = _net()
    x = torch.randn(5, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    batches = [{"pixel_values": x[:3]}, {"pixel_values": x[3:]}]
    got = compute_scores(model, batches, method="px", form=form, fisher_classes=5)
    want = _brute(model, x, form)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("form", ["fisher", "paths"])
def test_per_sample_forms_on_windowed_attention_are_per_image(form):
    """Swin runs its attention on windows (16 per image here): the per-sample sums are per
    image, not per window, as a one-image-at-a-time brute force gives them."""
    import transformers as t

    torch.manual_seed(0)
    cfg = t.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
        window_size=2, num_labels=3,
    )  # fmt: skip
    model = t.SwinForImageClassification(cfg).eval().double()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = compute_scores(model, [{"pixel_values": x}], method="px", form=form)
    assert any("attention.o_proj" in n for n in got)
    want = _brute(model, x, form, set(got), lambda m, xn: m(pixel_values=xn).logits)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-15)


def test_fisher_top_classes_is_a_lower_sum_and_masks_zero_scores():
    model = _net()
    batches = [{"pixel_values": torch.randn(4, 3, 7, 7)}]
    full = compute_scores(model, batches, method="px", form="fisher", fisher_classes=5)
    top2 = compute_scores(model, batches, method="px", form="fisher", fisher_classes=2)
    for n in full:
        assert (top2[n] <= full[n] * (1 + 1e-5) + 1e-30).all()
    masks = {"body.5.weight": torch.rand(5, 36) > 0.5}
    masked = compute_scores(model, batches, method="px", form="fisher", masks=masks)
    assert (masked["body.5.weight"][~masks["body.5.weight"]] == 0).all()


def test_form_scores_every_vit_tensor_prunes_exactly_and_bad_form_is_refused():
    scores = compute_scores(tiny_vit(), make_batches(1, 4), method="px", form="fisher")
    for n, s in scores.items():
        assert torch.isfinite(s).all() and (s >= 0).all() and s.any(), n
    result = prune(
        _net(), [{"pixel_values": torch.randn(4, 3, 7, 7)}], 0.8, "px", rounds=2, form="paths"
    )
    total = sum(m.numel() for m in result.masks.values())
    assert sum(int(m.sum()) for m in result.masks.values()) == total - round(0.8 * total)
    with pytest.raises(HfPxError, match="form"):
        compute_scores(
            _net(), [{"pixel_values": torch.randn(2, 3, 7, 7)}], method="px", form="nope"
        )


def test_attn_mean_moves_budget_from_attention_to_the_mlp():
    """attn="mean" (method.md §10.2): the kernel averages over the keys instead of
    summing them, so the attention branch loses its T-fold weight against the MLP."""
    model, batches = tiny_vit(), make_batches(1, 4)

    def ratio(attn):
        s = compute_scores(model, batches, method="px", attn=attn, qk="off", keep_classifier=False)
        v = float(s["vit.layers.0.attention.v_proj.weight"].double().mean())
        return v / float(s["vit.layers.0.mlp.fc1.weight"].double().mean())

    assert ratio("mean") < ratio("sum") / 4
    with pytest.raises(HfPxError, match="attn"):
        compute_scores(model, batches, method="px", attn="max")
