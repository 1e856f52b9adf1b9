"""The `bitmask` storage encoding: bit-exact round trips, adaptive size, corrupt input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import bits, sparse

from hf_px.checkpoint import bitmask
from hf_px.errors import HfPxError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "shape",
    [(37,), (24, 40), (16, 8, 5), (12, 6, 3, 3), (4, 3, 2, 3, 3)],  # Linear, Conv1d/2d/3d
)
@pytest.mark.parametrize("density", [0.0, 0.03, 0.3, 0.5, 0.9, 1.0])
def test_round_trip_is_bit_exact(dtype, shape, density):
    t = sparse(shape, density, dtype)
    values, index = bitmask.encode(t)
    out = bitmask.decode(values, index)
    assert out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(bits(out), bits(t))


def test_negative_zero_nan_payloads_inf_subnormals_survive():
    special = torch.tensor(
        [0.0, -0.0, float("inf"), -float("inf"), 0.0, 0.0, 0.0, 0.0, 3.0, 0.0],
        dtype=torch.float32,
    )
    raw = bits(special).clone()
    # as bit patterns: float literals would be flushed if denormal flushing is on
    raw[4] = 1  # smallest positive subnormal
    raw[5] = -0x7FFFFFFF  # 0x80000001: smallest negative subnormal
    raw[6] = 0x7FC00123  # a NaN with a payload
    t = raw.view(torch.float32).reshape(2, 5)
    values, index = bitmask.encode(t)
    out = bitmask.decode(values, index)
    assert torch.equal(bits(out), bits(t))
    # -0.0 is stored (its bits are not zero); +0.0 is not
    assert bitmask.read_header(index).count == 7
    assert bits(out)[0, 1] == bits(torch.tensor(-0.0))


@pytest.mark.parametrize(
    ("density", "codec"),
    [(1.0, "full"), (0.5, "bitmask"), (0.1, "elias-fano"), (0.02, "elias-fano")],
)
def test_code_adapts_to_density(density, codec):
    _, index = bitmask.encode(sparse((256, 512), density))
    assert bitmask.read_header(index).codec_name == codec


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.85, 0.9, 0.95, 0.98])
def test_size_within_10_percent_of_information_bound(dtype, sparsity):
    t = sparse((384, 1024), 1.0 - sparsity, dtype, seed=1)
    values, index = bitmask.encode(t)
    count = int((bits(t) != 0).sum())
    bound = bitmask.information_bound_bits(t.numel(), count, 8 * t.element_size()) / 8
    size = bitmask.encoded_nbytes(values, index)
    assert size <= 1.10 * bound, (size, bound)
    # a plain bitmask is the baseline it must beat at high sparsity
    if sparsity >= 0.95:
        assert size < (t.numel() + 7) // 8 + count * t.element_size()


def test_information_bound_at_90_percent_is_11_5_percent_of_dense():
    assert bitmask.binary_entropy(0.5) == 1.0
    assert bitmask.binary_entropy(0.0) == bitmask.binary_entropy(1.0) == 0.0
    n = 1_000_000
    ratio = bitmask.information_bound_bits(n, n // 10, 32) / (32 * n)
    assert math.isclose(ratio, 0.115, abs_tol=0.001)


def test_header_describes_the_tensor():
    t = sparse((8, 4, 3, 3), 0.2)
    values, index = bitmask.encode(t)
    head = bitmask.read_header(index)
    assert head.shape == (8, 4, 3, 3) and head.numel == t.numel()
    assert head.count == values.numel() == int((bits(t) != 0).sum())


def test_corrupt_input_raises_project_error():
    values, index = bitmask.encode(sparse((64, 64), 0.1))
    bad = index.clone()
    bad[:4] = torch.tensor(list(b"NOPE"), dtype=torch.uint8)
    with pytest.raises(HfPxError, match="not an hf-px bitmask index"):
        bitmask.decode(values, bad)
    with pytest.raises(HfPxError, match="values hold"):
        bitmask.decode(values[:-1], index)
    with pytest.raises(HfPxError, match="truncated"):
        bitmask.decode(values, index[:10])
    newer = index.clone()
    newer[4] = bitmask.VERSION + 1
    with pytest.raises(HfPxError, match="pip install -U hf-px"):
        bitmask.decode(values, newer)


def test_unsupported_dtype_is_refused():
    with pytest.raises(HfPxError, match="--format dense"):
        bitmask.encode(torch.zeros(4, 4, dtype=torch.complex64))


@pytest.mark.parametrize("density", [0.03, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_threaded_decoding_matches(monkeypatch, density, threads):
    # many small chunks: every chunk boundary case (positions straddling bytes and chunks)
    monkeypatch.setattr(bitmask, "CHUNK", 64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(1000,), (33, 65), (17, 9, 3, 3)]:
            t = sparse(shape, density, seed=3)
            values, index = bitmask.encode(t)
            assert torch.equal(bits(bitmask.decode(values, index)), bits(t))
    finally:
        torch.set_num_threads(previous)
