"""PX against the path formula, by brute-force enumeration of every path.

R = Σ_n Σ_k [Σ_{p→k} v_p²] · [Σ_{p→k} a_p(x_n) x_{n,s(p)}²]; since R is linear in
each θ_j², ∂R/∂θ_j² · θ_j² = Σ_n Σ_k D_{n,k} Σ_{p→k, p∋j} v_p² with
D_{n,k} = Σ_{p→k} a_p(x_n) x_{n,s(p)}² (closed form, no autograd).
"""

from __future__ import annotations

import itertools

import torch
from conftest import PixelNet
from torch import nn

from hf_px import compute_scores


def unrolled(layer: nn.Module, in_shape: tuple[int, ...]):
    """(index map: out_unit × in_unit → flat weight index or −1, out_shape)."""
    if isinstance(layer, nn.Linear):
        o, i = layer.weight.shape
        return torch.arange(o * i).view(o, i), (o,)
    assert isinstance(layer, nn.Conv2d) and layer.stride == (1, 1) and layer.padding == (0, 0)
    c_in, h, w = in_shape
    c_out, _, kh, kw = layer.weight.shape
    oh, ow = h - kh + 1, w - kw + 1
    idx = torch.full((c_out * oh * ow, c_in * h * w), -1, dtype=torch.long)
    for oc, oy, ox, ic, ky, kx in itertools.product(
        range(c_out), range(oh), range(ow), range(c_in), range(kh), range(kw)
    ):
        out_u = (oc * oh + oy) * ow + ox
        in_u = (ic * h + oy + ky) * w + ox + kx
        idx[out_u, in_u] = ((oc * c_in + ic) * kh + ky) * kw + kx
    return idx, (c_out, oh, ow)


def brute_force_scores(net: PixelNet, x: torch.Tensor, masks=None):
    layers = [m for m in net.body if isinstance(m, nn.Linear | nn.Conv2d)]
    names = [n for n, _ in net.named_parameters()]
    masks = masks or {}
    shape = tuple(x.shape[1:])
    maps, weights, alive = [], [], []
    for layer, name in zip(layers, names, strict=True):
        idx, shape = unrolled(layer, shape if isinstance(layer, nn.Conv2d) else (0,))
        w = layer.weight.detach().double() * masks.get(name, torch.ones_like(layer.weight)).double()
        maps.append(idx)
        weights.append(w.reshape(-1))
        alive.append(masks.get(name, torch.ones_like(layer.weight)).reshape(-1).bool())
    # 0/1 ReLU pattern at every hidden unit, from the real (masked) model
    patterns, h = [], x.double()
    with torch.no_grad():
        for m in net.body:
            if isinstance(m, nn.ReLU):
                patterns.append((h > 0).double().reshape(h.shape[0], -1))
                h = torch.relu(h)
            elif isinstance(m, nn.Linear | nn.Conv2d):
                name = names[layers.index(m)]
                w = m.weight.double() * masks.get(name, torch.ones_like(m.weight)).double()
                h = (
                    nn.functional.linear(h, w)
                    if isinstance(m, nn.Linear)
                    else nn.functional.conv2d(h, w)
                )
            else:
                h = m(h)
    x2 = x.double().pow(2).reshape(x.shape[0], -1)
    n_out = maps[-1].shape[0]
    scores = [torch.zeros_like(w) for w in weights]
    # enumerate paths unit by unit: (u_0 -> u_1 -> ... -> u_L)
    sizes = [maps[0].shape[1]] + [m.shape[0] for m in maps]
    paths = []
    for path in itertools.product(*[range(s) for s in sizes]):
        js = [int(maps[lvl][path[lvl + 1], path[lvl]]) for lvl in range(len(maps))]
        if min(js) < 0 or not all(bool(alive[lvl][j]) for lvl, j in enumerate(js)):
            continue  # not an edge of the unrolled net, or through a pruned weight
        paths.append((path, js))
    kernel = torch.zeros(n_out, dtype=torch.float64)
    data = torch.zeros(x.shape[0], n_out, dtype=torch.float64)
    for path, js in paths:
        v2 = 1.0
        for lvl, j in enumerate(js):
            v2 *= float(weights[lvl][j]) ** 2
        kernel[path[-1]] += v2
        a = torch.ones(x.shape[0], dtype=torch.float64)
        for lvl, pat in enumerate(patterns):
            a = a * pat[:, path[lvl + 1]]
        data[:, path[-1]] += a * x2[:, path[0]]
    d = data.sum(0)
    for path, js in paths:
        v2 = 1.0
        for lvl, j in enumerate(js):
            v2 *= float(weights[lvl][j]) ** 2
        for lvl, j in enumerate(js):
            scores[lvl][j] += d[path[-1]] * v2
    return {
        n: s.view(layer.weight.shape) for n, s, layer in zip(names, scores, layers, strict=True)
    }


def _check(net, x, masks=None):
    net = net.double()
    ours = compute_scores(net, [{"pixel_values": x.double()}], method="px", masks=masks)
    ref = brute_force_scores(net, x, masks)
    assert set(ours) == set(ref)
    for n in ref:
        assert torch.allclose(ours[n].double(), ref[n], rtol=1e-9, atol=1e-12), n
        assert ref[n].abs().sum() > 0, n


def test_px_equals_path_formula_mlp():
    torch.manual_seed(0)
    net = PixelNet(
        nn.Flatten(),
        nn.Linear(4, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 2, bias=False),
    )
    _check(net, torch.randn(5, 1, 2, 2))


def test_px_equals_path_formula_conv():
    torch.manual_seed(3)
    net = PixelNet(
        nn.Conv2d(1, 2, 2, bias=False),
        nn.ReLU(),
        nn.Conv2d(2, 2, 2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    _check(net, torch.randn(16, 1, 3, 3))


def test_px_equals_path_formula_with_masks():
    torch.manual_seed(2)
    net = PixelNet(
        nn.Flatten(),
        nn.Linear(4, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 2, bias=False),
    )
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) > 0.3 for n, p in net.named_parameters()}
    x = torch.randn(6, 1, 2, 2)
    _check(net, x, masks)
    ours = compute_scores(net.double(), [{"pixel_values": x.double()}], masks=masks)
    for n, m in masks.items():
        assert (ours[n][~m] == 0).all()
