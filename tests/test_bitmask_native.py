"""The native decoder (`hf_px.checkpoint._bitmask_ext`) against the numpy one, and the
fallback to numpy when it is not built (logged once).

Both must give the same bits for every code, dtype, shape and split into parts;
a corrupt index must raise HfPxError (never crash, never read out of bounds);
and the background decoding inside `from_pretrained` must hand back complete
weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bits, pruned, sparse, tiny_vit
from transformers import AutoModelForImageClassification

import hf_px
from hf_px.checkpoint import bitmask
from hf_px.errors import HfPxError

needs_native = pytest.mark.skipif(
    bitmask._NATIVE is None, reason="hf_px.checkpoint._bitmask_ext was not built (no C compiler)"
)


@pytest.fixture(params=["native", "numpy"])
def decoder(request, monkeypatch):
    if request.param == "native" and bitmask._NATIVE is None:
        pytest.skip("native decoder not built")
    monkeypatch.setenv("HF_PX_PURE_PYTHON_DECODE", "1" if request.param == "numpy" else "0")
    assert (bitmask.native_decoder() is not None) == (request.param == "native")
    return request.param


@needs_native
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]
)
@pytest.mark.parametrize("density", [0.001, 0.02, 0.1, 0.35, 0.5, 0.8, 0.97])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_native_matches_numpy_bit_for_bit(monkeypatch, dtype, density, parts):
    # tiny parts: every split point (mid-byte for Elias-Fano, odd counts for the bitmask)
    monkeypatch.setattr(bitmask, "MIN_PART", 16)
    monkeypatch.setattr(bitmask, "_threads", lambda: parts)
    for shape in [(1,), (7,), (9, 13), (64, 33), (12, 6, 3, 3), (4099,)]:
        t = sparse(shape, density, dtype, seed=len(shape) + shape[0])
        values, index = bitmask.encode(t)
        monkeypatch.setenv("HF_PX_PURE_PYTHON_DECODE", "0")
        native = bitmask.decode(values, index)
        monkeypatch.setenv("HF_PX_PURE_PYTHON_DECODE", "1")
        reference = bitmask.decode(values, index)
        assert torch.equal(bits(native), bits(t)), (shape, bitmask.read_header(index))
        assert torch.equal(bits(reference), bits(t))


@needs_native
def test_native_keeps_special_values_on_the_vector_path():
    # > 8 values after each special one, so the fp32 vector loop (not the tail) copies them
    n = 4096
    raw = torch.zeros(n, dtype=torch.int32)
    g = torch.Generator().manual_seed(5)
    raw[torch.randperm(n, generator=g)[: n // 2]] = torch.randint(
        1, 2**31 - 1, (n // 2,), generator=g, dtype=torch.int32
    )
    raw[10] = -(2**31)  # -0.0
    raw[11] = 0x7FC00123  # NaN with a payload
    raw[12] = 1  # smallest subnormal
    t = raw.view(torch.float32)
    values, index = bitmask.encode(t)
    assert bitmask.read_header(index).codec_name == "bitmask"
    out = bitmask.decode(values, index)
    assert torch.equal(bits(out), raw)


@pytest.mark.parametrize("density", [0.5, 0.05])
def test_random_corruption_never_crashes(decoder, monkeypatch, density):
    monkeypatch.setattr(bitmask, "MIN_PART", 64)
    t = sparse((96, 80), density, seed=11)
    values, index = bitmask.encode(t)
    head = bitmask.read_header(index)
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(150):
        bad = index.clone().numpy()
        where = rng.integers(head.offset, bad.size, size=int(rng.integers(1, 6)))
        bad[where] = rng.integers(0, 256, size=where.size, dtype=np.uint8)
        try:
            out = bitmask.decode(values, torch.from_numpy(bad))
        except HfPxError as exc:
            assert "re-save the checkpoint" in str(exc)
            outcomes["error"] += 1
        else:
            assert out.shape == t.shape and out.dtype == t.dtype
            outcomes["decoded"] += 1
    # flipped position bits must be caught at least sometimes (counts, order, range)
    assert outcomes["error"] > 0


@pytest.mark.parametrize(
    "damage", ["short-values", "upper-all-zero", "upper-all-one", "truncated-payload"]
)
def test_targeted_corruption_is_reported(decoder, damage):
    values, index = bitmask.encode(sparse((128, 64), 0.05, seed=2))
    head = bitmask.read_header(index)
    assert head.codec_name == "elias-fano"
    m, low = head.count, head.low_bits
    upper_at = head.offset + low * ((m + 7) // 8)
    bad = index.clone()
    if damage == "short-values":
        values = values[:-1]
    elif damage == "upper-all-zero":
        bad[upper_at:] = 0
    elif damage == "upper-all-one":
        bad[upper_at:] = 255
    else:
        bad = bad[: upper_at + 3]
    with pytest.raises(HfPxError, match="re-save the checkpoint|values hold"):
        bitmask.decode(values, bad)


@needs_native
def test_kernels_check_their_buffers():
    native = bitmask._NATIVE
    mask = np.array([0b1011], dtype=np.uint8)
    vals = np.arange(3, dtype=np.float32).view(np.uint8)
    out = np.empty(8, dtype=np.float32)
    native.expand_bitmask(mask, vals, out.view(np.uint8), 8, 4)
    assert out.tolist() == [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="count mismatch"):
        native.expand_bitmask(mask, vals[:8], out.view(np.uint8), 8, 4)
    with pytest.raises(ValueError, match="short bitmask"):
        native.expand_bitmask(mask, vals, np.empty(16, np.float32).view(np.uint8), 16, 4)
    with pytest.raises(ValueError, match="wrong size"):
        native.expand_bitmask(mask, vals, out.view(np.uint8)[:-4], 8, 4)
    with pytest.raises(ValueError, match="itemsize"):
        native.expand_bitmask(mask, vals, out.view(np.uint8), 8, 3)
    with pytest.raises(TypeError, match="writable"):
        native.expand_bitmask(mask, vals, bytes(32), 8, 4)
    assert native.count_ones(np.array([255, 1], np.uint8), 9) == 9
    assert native.select_one(np.array([0, 0b100], np.uint8), 0) == 10
    with pytest.raises(ValueError, match="too few"):
        native.select_one(np.array([1], np.uint8), 1)


def test_background_decoding_is_complete_after_wait(decoder, monkeypatch):
    monkeypatch.setattr(bitmask, "MIN_PART", 256)
    tensors = [sparse((300, 40), d, seed=i) for i, d in enumerate([0.5, 0.1, 0.01, 1.0])]
    results = [bitmask.decode_in_background(*bitmask.encode(t)) for t in tensors]
    for t, (out, pending) in zip(tensors, results, strict=True):
        if pending is not None:
            pending.wait()
        assert torch.equal(bits(out), bits(t))
    if decoder == "numpy":  # numpy decodes at once
        assert all(p is None for _, p in results)
    else:
        assert any(p is not None for _, p in results)


@needs_native
def test_background_decoding_reports_corruption_on_wait(monkeypatch):
    values, index = bitmask.encode(sparse((64, 64), 0.05, seed=4))
    head = bitmask.read_header(index)
    bad = index.clone()
    bad[head.offset + head.low_bits * ((head.count + 7) // 8) :] = 255
    _, pending = bitmask.decode_in_background(values, bad)
    with pytest.raises(HfPxError, match="re-save the checkpoint"):
        pending.wait()


class SlowPool:
    """An executor whose jobs start late: loading must wait for them, not race them."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(2)

    def submit(self, fn, *args):
        import time

        def late():
            time.sleep(0.02)
            return fn(*args)

        return self.pool.submit(late)


def test_from_pretrained_waits_for_background_decoding(decoder, monkeypatch, tmp_path):
    # many parts per tensor, each started late: still running when transformers moves on
    monkeypatch.setattr(bitmask, "MIN_PART", 32)
    slow = SlowPool()
    monkeypatch.setattr(bitmask, "_pool", lambda threads: slow)
    model, result = pruned(tiny_vit, 0.7)
    out = hf_px.save_pruned(model, tmp_path / "m", result, format="bitmask", card=False)
    for _ in range(3):
        loaded = AutoModelForImageClassification.from_pretrained(out)
        for name, ref in model.state_dict().items():
            assert torch.equal(bits(loaded.state_dict()[name]), bits(ref)), name


def test_corrupt_checkpoint_fails_from_pretrained(decoder, tmp_path):
    from safetensors.torch import load_file, save_file

    model, result = pruned(tiny_vit, 0.95)
    out = hf_px.save_pruned(model, tmp_path / "m", result, format="bitmask", card=False)
    tensors = load_file(out / "model.safetensors")
    name = next(k for k in tensors if k.endswith("_hfpx_index"))
    head = bitmask.read_header(tensors[name])
    assert head.codec_name == "elias-fano"
    tensors[name][head.offset + head.low_bits * ((head.count + 7) // 8) :] = 255
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    # decoded in the background (native): our error from the post-load wait; decoded at
    # once (numpy): transformers' conversion report, which quotes ours, then RuntimeError
    with pytest.raises((HfPxError, RuntimeError)) as caught:
        AutoModelForImageClassification.from_pretrained(out)
    if decoder == "native":
        assert caught.type is HfPxError and "re-save the checkpoint" in str(caught.value)
    else:
        assert "conversion" in str(caught.value)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_decoding_works_in_a_forked_child(decoder):
    import os

    t = sparse((512, 300), 0.3, seed=9)
    values, index = bitmask.encode(t)
    bitmask.decode(values, index)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: exit code says whether decoding worked
        # numpy compares: torch ops in a forked child may hang in OpenMP, not in hf-px
        out = bitmask.decode(values, index).numpy().view(np.uint32)
        os._exit(0 if np.array_equal(out, t.numpy().view(np.uint32)) else 1)
    import signal
    import time

    deadline = time.monotonic() + 60
    while True:  # a pool inherited from the parent would hang the child: do not wait forever
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("decoding hung in the forked child")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_missing_native_build_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(bitmask, "_NATIVE", None)
    monkeypatch.setattr(bitmask, "_fallback_logged", False)
    monkeypatch.delenv("HF_PX_PURE_PYTHON_DECODE", raising=False)
    t = sparse((64, 33), 0.1, torch.float32, seed=1)
    values, index = bitmask.encode(t)
    with caplog.at_level("INFO", logger="hf_px.checkpoint.bitmask"):
        assert torch.equal(bits(bitmask.decode(values, index)), bits(t))
        assert bitmask.native_decoder() is None
    fallback = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(fallback) == 1 and fallback[0].levelname == "INFO"
