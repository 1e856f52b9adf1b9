"""Structured pruning: unit scores, the schedule, physical removal, checkpoints."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as t
from torch import nn

import hf_px
from hf_px import HfPxError, compute_scores
from hf_px.checkpoint.structured import UNITS_NAME, load_units, save_structured
from hf_px.structured import (
    CostModel,
    UnitGroup,
    apply_masks,
    find_units,
    prune_structured,
    score_units,
    shrink,
)
from hf_px.structured.cost import layer_macs
from hf_px.structured.scores import per_unit_columns

ROOT = Path(__file__).resolve().parent.parent


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    vit = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    if kind == "vit":
        model = t.ViTForImageClassification(t.ViTConfig(**vit))
    elif kind == "deit":
        model = t.DeiTForImageClassification(t.DeiTConfig(**vit))
    elif kind == "dinov2":
        model = _dinov2(num_hidden_layers=2)
    elif kind in _VIT_LIKE:
        model = _VIT_LIKE[kind](num_hidden_layers=2)
    elif kind == "swin":  # windows of 2x2 patches: the attention runs on 16 windows per image
        cfg = t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[2, 4],
            window_size=2, num_labels=3,
        )  # fmt: skip
        model = t.SwinForImageClassification(cfg)
    elif kind == "swinv2":  # Swin V2: cosine attention, a position-bias MLP, the older MLP layout
        cfg = t.Swinv2Config(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[2, 4],
            window_size=2, num_labels=3,
        )  # fmt: skip
        model = t.Swinv2ForImageClassification(cfg)
    elif kind == "resnet":
        cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2], num_labels=3)
        model = t.ResNetForImageClassification(cfg)
    elif kind == "resnet-basic":
        cfg = t.ResNetConfig(
            embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2], layer_type="basic", num_labels=3
        )
        model = t.ResNetForImageClassification(cfg)
    else:
        cfg = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], num_labels=3)
        model = t.ConvNextForImageClassification(cfg)
    return model.eval()


def _dinov2(num_hidden_layers: int) -> nn.Module:
    """A tiny DINOv2 (layer scale 0.5, not the identity 1.0; its classifier reads the class
    token and the mean patch token)."""
    cfg = t.Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, mlp_ratio=2, layerscale_value=0.5, num_labels=3,
    )  # fmt: skip
    return t.Dinov2ForImageClassification(cfg)


def _vit_like(config_cls, model_cls, **extra):
    def make(num_hidden_layers: int) -> nn.Module:
        cfg = config_cls(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=num_hidden_layers,
            num_attention_heads=4, num_labels=3, **extra,
        )  # fmt: skip
        return model_cls(cfg)

    return make


# the other ViT-shaped families (BEiT with its per-layer relative position bias and
# layer scale, and data2vec-vision, BEiT in the older intermediate.dense → output.dense
# layout; DINOv2 with registers: register tokens beside the class token)
_BEIT = dict(intermediate_size=64, use_relative_position_bias=True, layer_scale_init_value=0.5)
_VIT_LIKE = {
    "vit_msn": _vit_like(t.ViTMSNConfig, t.ViTMSNForImageClassification, intermediate_size=64),
    "ijepa": _vit_like(t.IJepaConfig, t.IJepaForImageClassification, intermediate_size=64),
    "beit": _vit_like(t.BeitConfig, t.BeitForImageClassification, **_BEIT),
    "data2vec-vision": _vit_like(
        t.Data2VecVisionConfig, t.Data2VecVisionForImageClassification, **_BEIT
    ),
    "dinov2_with_registers": _vit_like(
        t.Dinov2WithRegistersConfig,
        t.Dinov2WithRegistersForImageClassification,
        mlp_ratio=2,
        num_register_tokens=2,
        layerscale_value=0.5,
    ),  # fmt: skip
}


# the most each tiny model can lose with internal units only (stem/stream convs stay)
REMOVE = {
    "vit": 0.4, "deit": 0.4, "swin": 0.4, "resnet": 0.1, "resnet-basic": 0.1, "convnext": 0.4,
    "dinov2": 0.4, "vit_msn": 0.4, "ijepa": 0.4, "beit": 0.3, "dinov2_with_registers": 0.4,
    "data2vec-vision": 0.3, "swinv2": 0.3,
}  # fmt: skip


def batches(n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"pixel_values": torch.randn(4, 3, 32, 32, generator=g), "labels": torch.arange(4) % 3}
        for _ in range(n)
    ]


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize(
    "kind,method",
    [
        ("vit", "px"),
        ("deit", "px"),
        ("swin", "px"),
        ("swin", "taylor"),
        ("resnet", "px"),
        ("resnet-basic", "px"),
        ("convnext", "px"),
        ("vit", "taylor"),
        ("resnet", "l1"),
        ("convnext", "random"),
        ("dinov2", "px"),
        ("dinov2", "taylor"),
        ("dinov2_with_registers", "px"),
        ("vit_msn", "px"),
        ("ijepa", "px"),
        ("beit", "px"),
        ("beit", "taylor"),
        ("data2vec-vision", "px"),
        ("data2vec-vision", "taylor"),
        ("swinv2", "px"),
        ("swinv2", "taylor"),
    ],
)
def test_shrunk_model_computes_the_masked_function(kind, method):
    model = build(kind)
    data = batches()
    result = prune_structured(model, data, REMOVE[kind], method=method, rounds=1)
    x = data[0]["pixel_values"]
    masked = logits(model, x)
    shrink(model, result.groups, result.kept)
    torch.testing.assert_close(logits(model, x), masked, atol=1e-5, rtol=1e-5)
    # the cost model's prediction is what the smaller model measures
    assert sum(layer_macs(model, 32).values()) == result.macs[1]
    assert sum(p.numel() for p in model.parameters()) == result.params[1]
    assert result.removed["macs"] >= REMOVE[kind]
    assert all(int(k.sum()) >= 1 for k in result.kept.values())
    assert result.macs[1] < result.macs[0] and result.params[1] < result.params[0]


def test_units_of_each_family():
    kinds = {k: {g.kind for g in find_units(build(k))} for k in REMOVE}
    assert kinds == {
        "vit": {"neurons", "heads"},
        "deit": {"neurons", "heads"},
        "swin": {"neurons", "heads"},
        "dinov2": {"neurons", "heads"},
        "dinov2_with_registers": {"neurons", "heads"},
        "vit_msn": {"neurons", "heads"},
        "ijepa": {"neurons", "heads"},
        "beit": {"neurons"},
        "data2vec-vision": {"neurons"},
        "swinv2": {"neurons"},
        "resnet": {"channels", "stream"},
        "resnet-basic": {"channels", "stream"},
        "convnext": {"channels"},
    }
    resnet = find_units(build("resnet"), ["channels"])
    assert len(resnet) == 2 * 3  # two internal widths per bottleneck, three blocks
    with pytest.raises(HfPxError, match="does not exist"):
        prune_structured(build("resnet"), batches(), 0.1, structure="heads")


def test_resnet_streams_are_every_writer_and_reader_of_a_residual_run():
    """One stream per run of blocks between projection shortcuts: the stem's output is a
    stream of its own when the first block projects, and joins the first stage's stream
    when that block adds its input unchanged; the last stream is read by the classifier."""
    stage = "resnet.encoder.stages"
    projected = {g.name: g for g in find_units(build("resnet-basic"), ["stream"])}
    assert [g.size for g in projected.values()] == [8, 16, 32]
    s0, s1, s2 = projected.values()
    assert s0.producers == ("resnet.embedder.embedder.convolution",)
    assert s0.consumers == (
        f"{stage}.0.layers.0.layer.0.convolution",
        f"{stage}.0.layers.0.shortcut.convolution",
    )
    assert s2.producers == (
        f"{stage}.1.layers.0.shortcut.convolution",
        f"{stage}.1.layers.0.layer.1.convolution",
        f"{stage}.1.layers.1.layer.1.convolution",
    )
    assert s2.consumers == (f"{stage}.1.layers.1.layer.0.convolution", "classifier.1")
    assert len(s2.norms) == len(s2.producers)
    cfg = t.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    joined = find_units(t.ResNetForImageClassification(cfg), ["stream"])
    assert [g.size for g in joined] == [16, 32]
    assert joined[0].producers == (
        "resnet.embedder.embedder.convolution",
        f"{stage}.0.layers.0.layer.1.convolution",
    )


@pytest.mark.parametrize("kind", ["resnet", "resnet-basic"])
@pytest.mark.parametrize("method", ["px", "taylor", "l1"])
def test_removing_stream_channels_computes_the_masked_function(tmp_path, kind, method):
    """Stream units alone (every group loses some), shrunk and through a hooked checkpoint:
    the logits of the masked network, and the parameter count the cost model said."""
    model = build(kind)
    data = batches()
    res = prune_structured(
        model, data, 0.3, structure="stream", method=method, rounds=2, uniform=True
    )
    counts = res.counts()
    assert all(counts[g.name] < g.size for g in res.groups), counts
    want = logits(model, data[0]["pixel_values"])
    shrink(model, res.groups, res.kept)
    torch.testing.assert_close(logits(model, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == res.params[1]
    if method == "px":
        loaded = t.AutoModelForImageClassification.from_pretrained(
            save_structured(model, tmp_path / "s", res)
        ).eval()
        torch.testing.assert_close(logits(loaded, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)


def test_uniform_gives_equal_widths_and_targets_are_met():
    model = build("vit")
    result = prune_structured(model, batches(), 0.3, method="px", rounds=2, uniform=True)
    counts = result.counts()
    assert len({counts[g.name] for g in result.groups if g.kind == "neurons"}) == 1
    assert len({counts[g.name] for g in result.groups if g.kind == "heads"}) == 1
    params = prune_structured(build("vit"), batches(), 0.3, target="params", method="l1")
    assert params.removed["params"] >= 0.3
    with pytest.raises(HfPxError, match="out of reach"):
        prune_structured(build("resnet"), batches(), 0.9, method="l1")
    with pytest.raises(HfPxError, match="fraction"):
        prune_structured(build("vit"), batches(), 50, method="l1")


@pytest.mark.parametrize(
    "kind,method,remove", [("convnext", "px", 0.35), ("vit", "taylor", 0.35), ("vit", "l1", 0.4)]
)
def test_round_to_keeps_whole_multiples_and_meets_the_target(kind, method, remove):
    """``round_to=16``: every group keeps a multiple of 16 channels (two heads of 8 channels
    are one), the MACs target still holds, and the smaller model computes the masked one."""
    x = batches()[0]["pixel_values"]
    plain = prune_structured(build(kind), batches(), remove, method=method, rounds=2)
    assert any(plain.counts()[g.name] * g.width % 16 for g in plain.groups)  # 1 rounds nothing
    model = build(kind)
    result = prune_structured(model, batches(), remove, method=method, rounds=2, round_to=16)
    for g in result.groups:
        assert result.counts()[g.name] * g.width % 16 == 0, (g.name, result.counts()[g.name])
    assert result.removed["macs"] >= remove
    assert result.removed["macs"] < plain.removed["macs"] + 0.1  # near the target, not past
    masked = logits(model, x)
    shrink(model, result.groups, result.kept)
    torch.testing.assert_close(logits(model, x), masked, rtol=1e-5, atol=1e-5)
    with pytest.raises(HfPxError, match="round_to must be a positive integer"):
        prune_structured(build(kind), batches(), 0.3, method=method, round_to=0)


def test_rounds_only_remove():
    seen = []
    model = build("convnext")
    prune_structured(model, batches(), 0.4, method="px", rounds=3, callback=seen.append)
    costs = [h["macs"] for h in seen]
    assert costs == sorted(costs, reverse=True) and all(h["macs"] <= h["goal"] for h in seen)


class _Net(nn.Module):
    """conv → act → conv → act → mean → linear (no bias): every path crosses `fc` once."""

    def __init__(self, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.act1, self.act2 = act(), act()
        self.fc = nn.Linear(5, 4, bias=False)

    def forward(self, pixel_values):
        h = self.act2(self.conv2(self.act1(self.conv1(pixel_values))))
        return self.fc(h.mean((2, 3)))


def _bound(model: nn.Module, data) -> float:
    """PX's R: it has degree one in the (transformed) classifier weights and this net
    has no cut to rescale at, so R = Σ of their PX scores (Euler)."""
    return float(compute_scores(model, data, "px")["fc.weight"].double().sum())


@pytest.mark.parametrize("act,group", [(nn.ReLU, "b"), (nn.Identity, "a"), (nn.Identity, "b")])
def test_px_unit_score_is_the_drop_of_r(act, group):
    """S_u = ∂R/∂c_u · c_u with c_u on the unit's fan-out θ², and R is affine in c_u:
    zeroing the fan-out (data side and gates unchanged) lowers R by exactly S_u.
    Gates are unchanged when nothing downstream is gated (ReLU net, last group) or
    when the net has no gates (identity activations)."""
    torch.manual_seed(0)
    net = _Net(act).double()
    data = [{"pixel_values": torch.randn(8, 3, 8, 8, dtype=torch.float64)}]
    groups = [
        UnitGroup("a", "channels", 6, 1, ("conv1",), ("conv2",)),
        UnitGroup("b", "channels", 5, 1, ("conv2",), ("fc",)),
    ]
    kept = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    scores = score_units("px", net, data, groups, kept)[group]
    consumer = {"a": net.conv2, "b": net.fc}[group]
    r0 = _bound(net, data)
    for u in range(scores.numel()):
        probe = copy.deepcopy(net)
        with torch.no_grad():
            {"a": probe.conv2, "b": probe.fc}[group].weight[:, u] = 0
        assert r0 - _bound(probe, data) == pytest.approx(float(scores[u]), rel=1e-9)
    assert consumer.weight.abs().sum() > 0  # the model itself was not touched


def test_structured_px_follows_the_form_rule_of_unstructured_px(tmp_path):
    """Weights loaded from a checkpoint: the unit-gate fisher form; an unmarked copy (or
    a fresh model): the bound; a given form wins; the decision is recorded."""
    build("resnet-basic").save_pretrained(tmp_path / "m")
    loaded = t.AutoModelForImageClassification.from_pretrained(tmp_path / "m").eval()
    copied = copy.deepcopy(loaded)  # the from_pretrained marks do not survive a deepcopy
    assert hf_px.utils.loaded_from_checkpoint(loaded)
    assert not hf_px.utils.loaded_from_checkpoint(copied)
    data = batches()
    kw = dict(remove=REMOVE["resnet-basic"], rounds=1)

    def run(loaded_weights: bool, **opts):
        model = (
            t.AutoModelForImageClassification.from_pretrained(tmp_path / "m").eval()
            if loaded_weights
            else copy.deepcopy(copied)
        )
        res = prune_structured(model, data, **kw, **opts)
        return res.config["px_form"]["form"], res.kept

    (f1, loaded_kept), (f2, copied_kept) = run(True), run(False)
    (f3, fisher_kept), (f4, bound_kept) = run(False, form="fisher"), run(True, form="bound")
    assert (f1, f2, f3, f4) == ("fisher", "bound", "fisher", "bound")
    assert all(torch.equal(loaded_kept[g], fisher_kept[g]) for g in loaded_kept)
    assert all(torch.equal(copied_kept[g], bound_kept[g]) for g in copied_kept)
    assert any(not torch.equal(loaded_kept[g], copied_kept[g]) for g in loaded_kept)
    for bad, needle in (({"form": "paths"}, "'bound' or 'fisher'"), ({"fromm": "bound"}, "valid:")):
        with pytest.raises(HfPxError, match=needle):
            prune_structured(copy.deepcopy(copied), data, **kw, **bad)


@pytest.mark.parametrize("kind", ["resnet-basic", "vit", "swin"])
def test_px_unit_fisher_is_the_per_sample_gate_derivative_squared(kind):
    """form="fisher": Σ_n Σ_c p_nc (∂ℓ(x_n, c)/∂c_u)², checked one sample and one class
    at a time through the consumers' weight gradients (Σ over u's columns of g · θ, over
    every consumer), in float64; the removed units of a second round score 0."""
    model = build(kind).double()
    data = [{"pixel_values": b["pixel_values"].double()} for b in batches(1)]
    groups = find_units(model)
    kept = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    got = score_units("px", model, data, groups, kept, options={"form": "fisher"})
    want = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for loss, pc in _sample_class_losses(model, data[0]["pixel_values"]):
        for g in groups:  # one mask on every reader of u (a stream has several)
            ws = [model.get_submodule(name).weight for name in g.consumers]
            grads = torch.autograd.grad(loss, ws, retain_graph=True)
            d = sum(per_unit_columns(gr * w.detach(), g) for gr, w in zip(grads, ws, strict=True))
            want[g.name] += pc * d.pow(2)
    for name in want:
        assert want[name].sum() > 0  # (a unit whose ReLU never fires is exactly 0)
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=0.0)
    first = groups[0].name
    top = int(got[first].argmax())
    kept[first][top] = False
    apply_masks(model, groups, kept)
    again = score_units("px", model, data, groups, kept, options={"form": "fisher"})
    assert again[first][top] == 0 and again[first].sum() > 0


def test_taylor_is_the_squared_gate_derivative():
    """Molchanov's criterion: (∂L/∂c_u · c_u)² per batch for a gate c on the unit's
    activation, summed over batches; computed independently with a hook."""
    model = build("vit")
    data = batches(2)
    groups = find_units(model, ["neurons"])
    kept = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    got = score_units("taylor", model, data, groups, kept)
    want = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for b in data:
        gates = {g.name: torch.ones(g.size, requires_grad=True) for g in groups}
        handles = [
            model.get_submodule(g.consumers[0]).register_forward_pre_hook(
                lambda m, args, c=gates[g.name]: (args[0] * c,)
            )
            for g in groups
        ]
        loss = nn.functional.cross_entropy(
            model(pixel_values=b["pixel_values"]).logits, b["labels"]
        )
        grads = torch.autograd.grad(loss, list(gates.values()))
        for h in handles:
            h.remove()
        for g, grad in zip(groups, grads, strict=True):
            want[g.name] += grad.double().pow(2)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-12)


LOAD_WITHOUT_HF_PX = r"""
import json, sys, torch, transformers as t
plain, hooked = sys.argv[1], sys.argv[2]
assert "hf_px" not in sys.modules
m = t.AutoModelForImageClassification.from_pretrained(plain).eval()
x = torch.load(plain + "/x.pt")
with torch.no_grad():
    got = m(pixel_values=x).logits
want = torch.load(plain + "/logits.pt")
assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
pipe = t.pipeline("image-classification", model=plain)
from PIL import Image
import numpy as np
print("PIPELINE", pipe(Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)))[0]["label"])
try:
    t.AutoModelForImageClassification.from_pretrained(hooked)
except Exception as e:
    print("REFUSED", type(e).__name__)
else:
    print("LOADED SILENTLY")
assert "hf_px" not in sys.modules
import hf_px  # after transformers' quantizer registry is loaded: registers at once
m = t.AutoModelForImageClassification.from_pretrained(hooked)
print("LOADED WITH HF_PX", sum(p.numel() for p in m.parameters()))
"""


def test_checkpoints_plain_and_hooked(tmp_path):
    x = batches()[0]["pixel_values"]
    # uniform ViT: expressible in its config → a plain transformers checkpoint
    vit = build("vit")
    res = prune_structured(vit, batches(), 0.3, method="px", rounds=1, uniform=True)
    want = logits(vit, x)
    processor = t.ViTImageProcessor(size={"height": 32, "width": 32})
    plain = save_structured(vit, tmp_path / "plain", res, image_processor=processor)
    torch.save(x, plain / "x.pt")
    torch.save(want, plain / "logits.pt")
    cfg = json.loads((plain / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["intermediate_size"] == res.counts()["vit.layers.0.mlp"] < 64
    assert cfg["num_attention_heads"] == res.counts()["vit.layers.0.attention"]
    assert vit.config.intermediate_size == 64  # the caller's config is left alone
    # ResNet internal widths: never in its config → the hook layout
    resnet = build("resnet")
    res_r = prune_structured(resnet, batches(), 0.1, method="px", rounds=1)
    want_r = logits(resnet, x)
    hooked = save_structured(resnet, tmp_path / "hooked", res_r)
    assert (
        json.loads((hooked / "config.json").read_text())["quantization_config"]["quant_method"]
        == "hf_px_structured"
    )
    record = load_units(hooked)
    assert record["layout"] == "hf_px_structured"
    for g in res_r.groups:
        kept = torch.nonzero(res_r.kept[g.name]).reshape(-1).tolist()
        assert record["groups"][g.name]["kept"] == kept
    # with hf_px imported (this process): loads, same function, and saves back
    loaded = t.AutoModelForImageClassification.from_pretrained(hooked).eval()
    torch.testing.assert_close(logits(loaded, x), want_r, atol=1e-5, rtol=1e-5)
    loaded.save_pretrained(tmp_path / "resaved")
    again = t.AutoModelForImageClassification.from_pretrained(tmp_path / "resaved").eval()
    torch.testing.assert_close(logits(again, x), want_r, atol=1e-5, rtol=1e-5)
    assert "import hf_px" in (hooked / "README.md").read_text()
    # a fresh process without hf_px: plain loads (and pipeline works), hooked refuses
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HF_PX, str(plain), str(hooked)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PIPELINE" in proc.stdout and "REFUSED" in proc.stdout, proc.stdout
    assert f"LOADED WITH HF_PX {res_r.params[1]}" in proc.stdout
    assert "hf_px_structured_checkpoint" in proc.stdout + proc.stderr  # the marker's hint


def test_dinov2_uniform_heads_are_a_plain_checkpoint_and_neurons_are_hooked(tmp_path):
    """DINOv2's config names one head count (with head_dim beside it): uniform heads give a
    plain checkpoint. Its MLP width is an integer mlp_ratio of the hidden size, which
    cannot say 48 of 64: neurons give the hooked layout."""
    data = batches()
    x = data[0]["pixel_values"]
    for structure, layout in (("heads", "plain"), ("neurons", "hf_px_structured")):
        model = build("dinov2")
        res = prune_structured(model, data, 0.2, structure=structure, uniform=True, rounds=1)
        want = logits(model, x)
        out = save_structured(model, tmp_path / structure, res)
        assert load_units(out)["layout"] == layout
        cfg = json.loads((out / "config.json").read_text())
        assert ("quantization_config" in cfg) == (layout != "plain")
        if layout == "plain":
            assert cfg["num_attention_heads"] == min(res.counts().values()) < 4
            assert cfg["head_dim"] == 8
        loaded = t.AutoModelForImageClassification.from_pretrained(out).eval()
        torch.testing.assert_close(logits(loaded, x), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["vit_msn", "ijepa", "beit", "data2vec-vision"])
def test_uniform_neurons_of_vit_shaped_families_are_plain_checkpoints(tmp_path, kind):
    """Their configs name one MLP width (`intermediate_size`): uniform neurons give a plain
    transformers checkpoint that loads to the same logits."""
    model = build(kind)
    data = batches()
    res = prune_structured(model, data, 0.2, structure="neurons", uniform=True, rounds=1)
    want = logits(model, data[0]["pixel_values"])
    out = save_structured(model, tmp_path / kind, res)
    cfg = json.loads((out / "config.json").read_text())
    assert load_units(out)["layout"] == "plain" and "quantization_config" not in cfg
    assert cfg["intermediate_size"] == min(res.counts().values()) < 64
    loaded = t.AutoModelForImageClassification.from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kind",
    ["convnext", "vit", "deit", "swin", "dinov2", "beit", "ijepa", "swinv2", "data2vec-vision"],
)
def test_hooked_nonuniform_checkpoints_round_trip(tmp_path, kind):
    model = build(kind)
    data = batches()
    res = prune_structured(model, data, REMOVE[kind], method="px", rounds=1)
    counts = res.counts()
    assert len(set(counts.values())) > 1  # widths differ per layer: not config-expressible
    want = logits(model, data[0]["pixel_values"])
    out = save_structured(model, tmp_path / kind, res)
    assert (out / UNITS_NAME).is_file()
    loaded = t.AutoModelForImageClassification.from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) == res.params[1]


def test_uniform_deit_is_a_plain_checkpoint(tmp_path):
    model = build("deit")
    data = batches()
    res = prune_structured(model, data, 0.4, method="l1")
    want = logits(model, data[0]["pixel_values"])
    out = save_structured(model, tmp_path / "deit", res)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["head_dim"] == 8
    assert cfg["num_attention_heads"] < 4 and cfg["intermediate_size"] < 64
    loaded = t.AutoModelForImageClassification.from_pretrained(out).eval()
    assert not getattr(loaded, "is_quantized", False)
    torch.testing.assert_close(logits(loaded, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)


def test_cost_model_counts_attention_matmuls():
    model = build("vit")
    cost = CostModel(model, find_units(model), 32)
    linear = sum(v for n, v in layer_macs(model, 32).items() if not n.endswith("attention"))
    tokens, dim = 17, 32
    assert cost.macs() == linear + 2 * 2 * tokens * tokens * dim  # two layers, QKᵀ and PV
    assert hf_px.__version__


def test_cli_prune_structured(tmp_path, capsys):
    """`hf-px prune-structured` on a local model directory: JSON summary, a loadable
    smaller checkpoint, one-line errors for bad input."""
    from hf_px.cli.main import run

    src = tmp_path / "src"
    build("convnext").save_pretrained(src)
    out = tmp_path / "out"
    argv = ["prune-structured", str(src), "--remove", "0.3", "--method", "l1"]
    flags = ["--json", "--quiet", "--no-latency", "--round-to", "8"]
    code = run([*argv, "--output-dir", str(out), *flags])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "hf_px_structured" and summary["removed"]["macs"] >= 0.3
    loaded = t.AutoModelForImageClassification.from_pretrained(out)
    assert sum(p.numel() for p in loaded.parameters()) == summary["params"]["after"]
    widths = [m.out_features for n, m in loaded.named_modules() if n.endswith("pwconv1")]
    assert widths and all(w % 8 == 0 for w in widths), widths
    assert run([*argv, "--output-dir", str(out), "--structure", "heads", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = run([*argv, "--output-dir", str(tmp_path / "o2"), "--structure", "heads", "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_cli_prune_structured_says_which_px_form_it_used(tmp_path, capsys):
    """The shipped model's weights come from a checkpoint: auto picks the fisher form,
    `--px-form bound` the bound; the JSON and the summary line say which."""
    from hf_px.cli.main import run

    base = ["prune-structured", "px-digits-resnet", "--remove", "0.2", "--rounds", "1"]
    flags = ["--no-latency", "--num-samples", "20"]
    assert run([*base, *flags, "--output-dir", str(tmp_path / "auto")]) == 0
    assert "form fisher: weights loaded from a checkpoint" in capsys.readouterr().out
    assert load_units(tmp_path / "auto")["config"]["px_form"]["form"] == "fisher"
    out = tmp_path / "bound"
    assert run([*base, *flags, "--px-form", "bound", "--output-dir", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["px_form"]["form"] == "bound"
    assert load_units(out)["config"]["px_form"]["form"] == "bound"


def test_cli_finetune_trains_a_structured_checkpoint_and_keeps_its_layout(tmp_path, capsys):
    """`hf-px finetune` on a `prune-structured` output: Trainer trains the smaller model
    (its quantizer allows training), the output keeps the layout and the unit record with
    the recipe added, loads with the same shapes, and its weights moved."""
    from safetensors.torch import load_file

    from hf_px.cli.main import run

    src, out = tmp_path / "s", tmp_path / "s-ft"
    argv = ["prune-structured", "px-digits-resnet", "--remove", "0.3", "--rounds", "1"]
    assert run([*argv, "--num-samples", "20", "--no-latency", "--output-dir", str(src)]) == 0
    capsys.readouterr()
    ft = ["finetune", str(src), "--epochs", "1", "--num-samples", "64", "--quiet", "--json"]
    assert run([*ft, "--format", "bitmask", "--output-dir", str(out)]) == 2
    assert "structured checkpoint" in capsys.readouterr().err and not out.exists()
    assert run([*ft, "--output-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "structured, hf_px_structured" and summary["removed"]["macs"] >= 0.3
    before, after = load_units(src), load_units(out)
    assert after["config"]["finetune"]["epochs"] == 1 and "finetune" not in before["config"]
    assert after["groups"] == before["groups"] and after["layout"] == before["layout"]
    assert "Fine-tuned after pruning" in (out / "README.md").read_text()
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))
    loaded = t.AutoModelForImageClassification.from_pretrained(out)
    assert sum(p.numel() for p in loaded.parameters()) == before["params"]["after"]
    with pytest.raises(HfPxError, match="structured checkpoint"):
        hf_px.load_pruning(out)  # no masks: the one-line answer names what it is


def test_structured_checkpoints_record_accuracy_and_calibration_data(tmp_path, capsys):
    """`prune-structured --eval` keeps what it measured and the data the units were scored
    on in the unit record and the card; `hf-px finetune` carries both over."""
    from hf_px.cli.main import run

    src, out = tmp_path / "s", tmp_path / "s-ft"
    argv = ["prune-structured", "px-digits-resnet", "--remove", "0.3", "--rounds", "1", "--eval"]
    assert (
        run([*argv, "--num-samples", "20", "--no-latency", "--json", "--output-dir", str(src)]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    record = load_units(src)
    ev = record["evaluation"]
    assert (ev["accuracy_dense"], ev["accuracy_pruned"]) == (
        summary["evaluation"]["accuracy_before"],
        summary["evaluation"]["accuracy_after"],
    )
    assert ev["dataset"] == "sklearn-digits" and ev["num_samples"] > 0
    calib = record["calibration"]
    assert calib["dataset"] == "sklearn-digits" and calib["num_samples"] == 20
    assert calib["batchnorm_recalibrated"] is True  # the ResNet has BatchNorm layers
    card = (src / "README.md").read_text()
    row = f"| top-1 on sklearn-digits [{ev['split']}], {ev['num_samples']} images | "
    assert row + f"{100 * ev['accuracy_dense']:.2f}% | {100 * ev['accuracy_pruned']:.2f}% |" in card
    assert "Units scored on sklearn-digits [train], 20 images." in card
    ft = ["finetune", str(src), "--epochs", "1", "--num-samples", "32", "--quiet"]
    assert run([*ft, "--output-dir", str(out)]) == 0
    after = load_units(out)
    assert after["evaluation"] == ev and after["calibration"] == calib
    tuned = (out / "README.md").read_text()
    assert row in tuned and "Units scored on sklearn-digits" in tuned


def _sample_class_losses(model: nn.Module, x: torch.Tensor):
    """(ℓ(x_n, c), p_nc) one image and class at a time: the brute force of the fisher forms."""
    for n in range(len(x)):
        out = model(pixel_values=x[n : n + 1]).logits
        p = out.softmax(-1)[0].detach()
        for c in range(out.shape[-1]):
            yield nn.functional.cross_entropy(out, torch.tensor([c])), p[c]


def _deep(kind: str) -> nn.Module:
    """Models with more than one removable block per list."""
    torch.manual_seed(0)
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
               num_attention_heads=4, intermediate_size=64, num_labels=3)  # fmt: skip
    if kind == "vit":
        return t.ViTForImageClassification(t.ViTConfig(**vit)).eval()
    if kind == "deit":
        return t.DeiTForImageClassification(t.DeiTConfig(**vit)).eval()
    if kind == "dinov2":
        return _dinov2(num_hidden_layers=3).eval()
    if kind in _VIT_LIKE:
        return _VIT_LIKE[kind](num_hidden_layers=3).eval()
    if kind == "resnet":
        cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[2, 3], num_labels=3)
        return t.ResNetForImageClassification(cfg).eval()
    cfg = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[2, 3], num_labels=3)
    return t.ConvNextForImageClassification(cfg).eval()


@pytest.mark.parametrize(
    "kind",
    [
        "vit",
        "deit",
        "resnet",
        "convnext",
        "dinov2",
        "dinov2_with_registers",
        "beit",
        "data2vec-vision",
    ],
)
@pytest.mark.parametrize("method", ["px", "taylor"])
def test_removing_blocks_gives_a_shallower_plain_checkpoint(tmp_path, kind, method):
    """Whole blocks: the masked network (branch ends at 0) computes what the network with
    the blocks deleted computes; the config's depth says so, so the checkpoint is plain
    transformers (no quantization_config) and loads to the same logits."""
    model = _deep(kind)
    data = batches()
    remove = 0.1 if kind == "resnet" else 0.25
    res = prune_structured(model, data, remove, structure="blocks", method=method, rounds=2)
    assert res.removed["macs"] >= remove and sum(res.counts().values()) < sum(
        g.size for g in res.groups
    )
    want = logits(model, data[0]["pixel_values"])
    out = save_structured(model, tmp_path / "b", res)
    torch.testing.assert_close(logits(model, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == res.params[1]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and load_units(out)["layout"] == "plain"
    dense = _deep(kind).config.to_dict()

    def depth(cfg):
        return sum(cfg["depths"]) if "depths" in cfg else cfg["num_hidden_layers"]

    assert depth(config) < depth(dense)
    loaded = t.AutoModelForImageClassification.from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, data[0]["pixel_values"]), want, atol=1e-5, rtol=0)


def test_block_fisher_is_the_per_sample_branch_gate_derivative_squared():
    """form="fisher" for blocks: Σ_n Σ_c p_nc (∂ℓ/∂c_b)² with c_b scaling the block's
    branch ends; checked through the exit layers' own parameters (⟨∂ℓ/∂out, out⟩ of a
    Linear = Σ θ ∂ℓ/∂θ over its weight and bias), one sample and class at a time."""
    model = _deep("vit").double()
    data = [{"pixel_values": b["pixel_values"].double()} for b in batches(1)]
    (group,) = find_units(model, ["blocks"])
    kept = {group.name: torch.ones(group.size, dtype=torch.bool)}
    got = score_units("px", model, data, [group], kept, options={"form": "fisher"})[group.name]
    want = torch.zeros(group.size, dtype=torch.float64)
    for loss, pc in _sample_class_losses(model, data[0]["pixel_values"]):
        for u, block in enumerate(group.producers):
            ps = [
                q
                for e in ("attention.o_proj", "mlp.fc2")
                for q in model.get_submodule(f"{block}.{e}").parameters()
            ]
            grads = torch.autograd.grad(loss, ps, retain_graph=True)
            d = sum((g * q.detach()).sum() for g, q in zip(grads, ps, strict=True))
            want[u] += pc * d**2
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0.0)


def test_blocks_are_pruned_on_their_own():
    model = _deep("vit")
    with pytest.raises(HfPxError, match="on its own"):
        prune_structured(model, batches(), 0.3, structure=["blocks", "heads"])
    assert "blocks" not in {g.kind for g in find_units(model)}  # auto leaves blocks out
    with pytest.raises(HfPxError, match="one block kept per list"):
        prune_structured(model, batches(), 0.9, structure="blocks")
    cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1])
    shallow = t.ResNetForImageClassification(cfg)  # every block projects: none can go
    with pytest.raises(HfPxError, match="no removable units of kind blocks"):
        prune_structured(shallow, batches(), 0.1, structure="blocks")
