"""Wanda scores |W_ij|·‖X_j‖₂: by hand on a Linear, against im2col on convolutions."""

from __future__ import annotations

import pytest
import torch
from conftest import PixelNet
from torch import nn

from hf_px import compute_scores, prune
from hf_px.methods import METHODS


class Tokens(nn.Module):
    """(N, 3, H, W) → (N, H·W, 3) tokens, so a Linear sees every position as a row."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


def test_linear_scores_by_hand():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-3.0, 1.0, 4.0]]))
    model = PixelNet(Tokens(), lin).eval()
    # two batches, channel c of every pixel is (c + 1) · (±1): ‖X_c‖² = Σ rows (c+1)²
    x1 = torch.ones(1, 3, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    x2 = -torch.ones(2, 3, 1, 1) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    batches = [{"pixel_values": x1}, {"pixel_values": x2}]
    rows = 1 * 4 + 2 * 1  # tokens over both batches
    col_norm = torch.tensor([1.0, 2.0, 3.0]) * rows**0.5
    expected = lin.weight.detach().abs() * col_norm
    scores = compute_scores(model, batches, method="wanda")
    torch.testing.assert_close(scores["body.1.weight"], expected)
    # a mask zeroes the weight's own score, and nothing else of a one-layer net
    masks = {"body.1.weight": torch.tensor([[True, False, True], [True, True, True]])}
    masked = compute_scores(model, batches, method="wanda", masks=masks)
    torch.testing.assert_close(masked["body.1.weight"], expected * masks["body.1.weight"])


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
        dict(in_channels=3, out_channels=2, kernel_size=(3, 2), stride=2, padding=(1, 0)),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=2),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=4),
    ],
)
def test_conv_scores_equal_im2col_column_norms(conv):
    torch.manual_seed(0)
    stem = nn.Conv2d(3, conv["in_channels"], 1, bias=False)
    layer = nn.Conv2d(**conv)
    model = PixelNet(stem, layer).eval()
    x = torch.randn(3, 3, 7, 6)
    scores = compute_scores(model, [{"pixel_values": x}], method="wanda")
    # reference: unfold the layer's input per group; column (c, u, v) over samples × positions
    h = stem(x).detach()
    pad = layer._reversed_padding_repeated_twice
    cols = nn.functional.unfold(
        nn.functional.pad(h, list(pad)),
        layer.kernel_size,
        dilation=layer.dilation,
        stride=layer.stride,
    )  # (N, C·kh·kw, L)
    norms = cols.pow(2).sum(dim=(0, 2)).sqrt().view(layer.in_channels, *layer.kernel_size)
    per_group = layer.in_channels // layer.groups
    out_per_group = layer.out_channels // layer.groups
    expected = torch.empty_like(layer.weight)
    for o in range(layer.out_channels):
        g = o // out_per_group
        expected[o] = layer.weight[o].abs() * norms[g * per_group : (g + 1) * per_group]
    torch.testing.assert_close(scores["body.1.weight"], expected.detach())


def test_registered_and_prunes_exactly():
    m = METHODS["wanda"]
    assert m.needs_data and not m.needs_labels and m.default_rounds == 1
    assert "Sun" in m.citation
    torch.manual_seed(0)
    model = PixelNet(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(4, 3, 6, 6)
    model(x)  # materialise the lazy layer
    result = prune(model, [{"pixel_values": x}], 0.6, method="wanda", scope="layerwise")
    for name, mask in result.masks.items():
        assert abs(float((~mask).float().mean()) - 0.6) <= 1.0 / mask.numel()
