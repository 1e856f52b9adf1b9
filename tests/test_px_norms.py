"""PX with normalisation on the paths: ``bn="eval"``, ``norm="gate"``, and the exact
rescaling at graph cuts that keeps those unnormalised auxiliary nets finite."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import PixelNet, make_batches, tiny_convnext, tiny_resnet, tiny_vit
from torch import nn

from hf_px import HfPxError, compute_scores, prune
from hf_px.methods import px


def _trained_bn(model, seed=0):
    """Pretend-trained BatchNorm statistics: s and t non-trivial on every channel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def test_bn_eval_is_px_of_the_folded_network():
    """BN(z) = s·z + t on the paths: PX of the net with eval BatchNorm equals PX of the
    net with s folded into the weights and t as the layer's bias (s² in the kernel
    net, t a bias path), weight by weight."""
    torch.manual_seed(0)
    bn_net = PixelNet(
        nn.Flatten(),
        nn.Linear(4, 3, bias=False),
        nn.BatchNorm1d(3),
        nn.ReLU(),
        nn.Linear(3, 3, bias=False),
        nn.BatchNorm1d(3),
        nn.ReLU(),
        nn.Linear(3, 2, bias=False),
    ).double()
    _trained_bn(bn_net).eval()
    lin = [m for m in bn_net.body if isinstance(m, nn.Linear)]
    bns = [m for m in bn_net.body if isinstance(m, nn.BatchNorm1d)]
    folded = PixelNet(
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.ReLU(),
        nn.Linear(3, 3),
        nn.ReLU(),
        nn.Linear(3, 2, bias=False),
    ).double()
    f_lin = [m for m in folded.body if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b, bn in zip(lin, f_lin, [*bns, None], strict=True):
            if bn is None:
                b.weight.copy_(a.weight)
                continue
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            b.weight.copy_(s[:, None] * a.weight)
            b.bias.copy_(bn.bias - s * bn.running_mean)
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    ours = compute_scores(bn_net, [{"pixel_values": x}], method="px", bn="eval")
    ref = compute_scores(folded, [{"pixel_values": x}], method="px")
    # S = |∂R/∂W²|·W² is invariant to folding a positive per-row factor into W
    for (n, s), (m, r) in zip(ours.items(), ref.items(), strict=True):
        assert torch.allclose(s, r, rtol=1e-10, atol=0), (n, m)
        assert s.sum() > 0


@pytest.mark.slow
def test_bn_eval_scores_are_signal_not_round_off():
    """Reference mode's conv scores on a BatchNorm ResNet are round-off (float32 and
    float64 differ by orders of magnitude); on the paths they agree to float32
    precision."""
    model = _trained_bn(tiny_resnet())
    batches = make_batches(2, 4, 32)
    s32 = compute_scores(model, batches, method="px", bn="eval")
    s64 = compute_scores(
        model.double(),
        [{"pixel_values": b["pixel_values"].double()} for b in batches],
        method="px",
        bn="eval",
        cut_scale=False,
    )
    ratio = None
    for n in s64:
        assert s64[n].sum() > 0, n
        r = s32[n].double().sum() / s64[n].sum()  # one cut factor for the whole call
        ratio = r if ratio is None else ratio
        assert torch.allclose(s32[n].double() / ratio, s64[n], rtol=1e-3, atol=1e-6 * s64[n].max())


def _double(model, batches):
    return model.double(), [{"pixel_values": b["pixel_values"].double()} for b in batches]


CASES = {
    "resnet_bn_eval": (lambda: _trained_bn(tiny_resnet()), {"bn": "eval"}),
    "vit_norm_gate": (tiny_vit, {"norm": "gate"}),
    "convnext_norm_gate": (tiny_convnext, {"norm": "gate"}),
}
_SLOW = [pytest.mark.slow, pytest.mark.ci]


@pytest.mark.parametrize(
    "case",
    [
        "resnet_bn_eval",
        pytest.param("vit_norm_gate", marks=_SLOW),
        pytest.param("convnext_norm_gate", marks=pytest.mark.slow),
    ],
)
def test_cut_scaling_is_one_factor_and_leaves_masks_unchanged(case):
    """Rescaling at cuts (with bias paths after a cut taking the cumulative factor)
    multiplies R by one power of two — bit for bit, since scaling by 2^e commutes
    with rounding — and R is then brought to [0.5, 1) by one more: the scores are
    the unscaled ones exactly, and so are the masks."""
    build, opts = CASES[case]
    model, batches = _double(build(), make_batches(2, 3, 32))
    with torch.no_grad():  # non-zero biases everywhere: bias paths after every cut
        for n, p in model.named_parameters():
            if n.endswith("bias") and "norm" not in n:
                p.uniform_(0.01, 0.1)
    scaled = compute_scores(model, batches, method="px", **opts)
    plain = compute_scores(model, batches, method="px", cut_scale=False, **opts)
    for n in plain:
        assert plain[n].sum() > 0, n
        assert torch.equal(scaled[n], plain[n]), n
    a = prune(copy.deepcopy(model), batches, 0.9, "px", rounds=2, **opts).masks
    b = prune(model, batches, 0.9, "px", rounds=2, cut_scale=False, **opts).masks
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.slow
@pytest.mark.ci
def test_unnormalised_aux_nets_overflow_without_cut_scaling():
    """All-ones weights grow like fan-in^depth: an 8-block ViT overflows float32 when
    LayerNorm is a gate and nothing rescales; with the cut factors it is finite."""
    model = tiny_vit(layers=8)
    batches = make_batches(1, 2, 32)
    with pytest.raises(HfPxError, match="overflowed.*norm='rms'"):
        compute_scores(model, batches, method="px", norm="gate", cut_scale=False)
    scores = compute_scores(model, batches, method="px", norm="gate")
    for n, s in scores.items():
        assert torch.isfinite(s).all() and s.sum() > 0, n


@pytest.mark.slow
@pytest.mark.ci
def test_norm_gate_keeps_theta_dependence_before_a_norm():
    """Own-statistics RMS makes R invariant to the scale of a layer right before a norm
    (ConvNeXt's depthwise conv feeds only its LayerNorm): every score is unchanged
    when that conv is multiplied by 3. The gate reading keeps its θ² dependence."""
    batches = make_batches(2, 4, 32)
    base, scaled = tiny_convnext(), tiny_convnext()
    with torch.no_grad():
        conv = scaled.convnext.encoder.stages[0].layers[0].dwconv
        conv.weight.mul_(3.0)
        conv.bias.uniform_(0.1, 0.2)
        base.convnext.encoder.stages[0].layers[0].dwconv.bias.copy_(conv.bias / 3.0)
    spread = {}
    for mode in ("rms", "gate"):
        a = compute_scores(base, batches, method="px", norm=mode)
        b = compute_scores(scaled, batches, method="px", norm=mode)
        ratios = [float(b[n].double().sum() / a[n].double().sum()) for n in a]
        spread[mode] = max(ratios) / min(ratios)  # 1: no tensor moved relative to another
    # measured: rms 1.004 (LayerNorm's eps), gate 9.0 (the conv's 3² on its paths)
    assert spread["rms"] < 1.01
    assert spread["gate"] > 8.9


def test_unknown_modes_are_refused():
    model = tiny_vit()
    with pytest.raises(HfPxError, match="bn='train' is unknown; use one of reference, rms, eval"):
        compute_scores(model, make_batches(1, 2, 32), method="px", bn="train")
    with pytest.raises(HfPxError, match="norm='center' is unknown; use one of rms, gate"):
        compute_scores(model, make_batches(1, 2, 32), method="px", norm="center")


def test_defaults_live_in_one_place(monkeypatch):
    """Switching a default is one entry of px.DEFAULTS."""
    model = _trained_bn(tiny_resnet())
    batches = make_batches(2, 4, 32)
    monkeypatch.setitem(px.DEFAULTS, "bn", "eval")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            compute_scores(model, batches, method="px").values(),
            compute_scores(model, batches, method="px", bn="eval").values(),
            strict=True,
        )
    )


def test_default_falls_back_to_own_statistics_when_the_exact_aux_nets_overflow(caplog):
    """MobileNetV2 has no cut to rescale at: the default (bn='eval') overflows, so PX
    scores with own-statistics normalisation and says so; an explicit bn='eval' is an error."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    from hf_px import HfPxError
    from hf_px.methods.px import OWN_STATISTICS

    torch.manual_seed(0)
    model = MobileNetV2ForImageClassification(
        MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=3)
    ).eval()
    batches = make_batches(1, 2, 32)
    with pytest.raises(HfPxError, match="overflowed"):
        compute_scores(model, batches, method="px", bn="eval")
    with caplog.at_level("WARNING"):
        scores = compute_scores(model, batches, method="px")
    assert any("overflowed" in r.getMessage() for r in caplog.records)
    own = compute_scores(model, batches, method="px", **OWN_STATISTICS)
    assert scores.keys() == own.keys()
    assert all(torch.equal(scores[n], own[n]) for n in scores)
