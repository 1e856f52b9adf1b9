"""The `bitmask` storage encoding: non-zero values plus an adaptive code for their positions.

A tensor ``t`` (any rank, any 1/2/4/8-byte dtype) is stored as two tensors:

* ``values`` — 1-D, dtype of ``t``: every element whose *bit pattern* is not all
  zeros, in row-major order. Selecting on bits rather than on ``!= 0`` keeps
  ``-0.0`` (and NaN payloads) as stored values, so decoding is bit-exact;
* ``index`` — uint8: a fixed header (magic, codec, shape, count) followed by
  the positions of those elements in one of three codes, picked per tensor as
  the smallest:

  ``full``      no positions; every element is stored (density near 1).
  ``bitmask``   one bit per element (LSB-first packed); optimal at density 1/2.
  ``elias-fano`` positions p_0 < … < p_{m-1} of the m stored elements among n:
                the low ``l`` bits of each p_i as ``l`` bit planes of m bits, the
                high parts ``p_i >> l`` in unary as a bit vector with ones at
                ``(p_i >> l) + i``. Cost ``m·(l + 1) + (n >> l)`` bits, i.e.
                ≈ ``2 + log2(n/m)`` bits per position for ``l = ⌊log2(n/m)⌋`` —
                within ≈ 1.5 bits per stored element of the entropy
                ``H(m/n)·n/m = log2(n/m) + log2 e + o(1)``.

The information bound for a tensor with m of n elements stored at b bits each
is ``m·b + n·H(m/n)`` bits (H the binary entropy). For fp32 the chosen code is
within 4% of it at every density (bitmask at density ≥ ≈0.3, Elias-Fano below;
`scripts/bench_checkpoint.py` measures whole checkpoints).

Encoding and decoding are vectorised numpy (packbits/unpackbits, flatnonzero,
fancy indexing); decoding is a few passes over m or n bytes.
"""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import HfPxError

MAGIC = b"HPX1"
VERSION = 1
CODEC_FULL = 0
CODEC_BITMASK = 1
CODEC_ELIAS_FANO = 2
CODEC_NAMES = {CODEC_FULL: "full", CODEC_BITMASK: "bitmask", CODEC_ELIAS_FANO: "elias-fano"}

# magic, version, codec, ndim, low bits l, count m
_HEAD = struct.Struct("<4sBBBBQ")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class IndexHeader:
    codec: int
    shape: tuple[int, ...]
    count: int
    low_bits: int
    offset: int  # where the payload starts in the index bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES[self.codec]


def binary_entropy(p: float) -> float:
    """H(p) = −p log2 p − (1−p) log2 (1−p), in bits; H(0) = H(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def information_bound_bits(numel: int, count: int, value_bits: int) -> float:
    """Bits needed for `count` arbitrary values among `numel` positions: m·b + n·H(m/n)."""
    if numel == 0:
        return 0.0
    return count * value_bits + numel * binary_entropy(count / numel)


def _int_view(t: torch.Tensor) -> torch.Tensor:
    size = t.element_size()
    if size not in _INT_VIEW or t.is_complex() or t.dtype == torch.bool:
        raise HfPxError(f"cannot bitmask-encode a tensor of dtype {t.dtype}; use --format dense")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat if flat.dtype == _INT_VIEW[size] else flat.view(_INT_VIEW[size])


def _ef_bits(numel: int, count: int, low: int, last: int) -> int:
    if count == 0:
        return 0
    return count * low + count + (last >> low)


def _ef_candidates(numel: int, count: int) -> list[int]:
    if count == 0:
        return [0]
    base = max(0, int(math.floor(math.log2(max(numel / count, 1.0)))))
    return sorted({max(0, base - 1), base, base + 1})


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, bitorder="little")


def _unpack_bits(data: np.ndarray, count: int | None) -> np.ndarray:
    return np.unpackbits(data, count=count, bitorder="little")


def _encode_ef(pos: np.ndarray, low: int) -> np.ndarray:
    m = pos.size
    if m == 0:
        return np.zeros(0, dtype=np.uint8)
    planes = []
    if low:
        low_part = pos & ((1 << low) - 1)
        for j in range(low):
            planes.append(_pack_bits(((low_part >> j) & 1).astype(np.uint8)))
    high = (pos >> low) + np.arange(m, dtype=np.int64)
    upper = np.zeros(int(high[-1]) + 1, dtype=np.uint8)
    upper[high] = 1
    planes.append(_pack_bits(upper))
    return np.concatenate(planes)


def _popcounts(data: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(data)
    return _POPCOUNT[data]


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
# Elements per decoding chunk: small enough that a chunk's int64 positions stay in
# cache, large enough that per-chunk Python overhead is noise.
CHUNK = 1 << 18


def _low_dtype(low: int) -> type:
    for bits_, dt in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
        if low <= bits_:
            return dt
    return np.uint64


def _ef_positions(payload: np.ndarray, m: int, low: int, a: int, b: int, upper_cum) -> np.ndarray:
    """Positions of stored elements a..b-1 (a multiple of 8) from an Elias-Fano payload."""
    plane = (m + 7) // 8
    k = b - a
    dt = _low_dtype(low)
    low_part = np.zeros(k, dtype=dt)
    for j in range(low):
        chunk = payload[j * plane + a // 8 : j * plane + (b + 7) // 8]
        bits_ = _unpack_bits(chunk, k).astype(dt, copy=False)
        if j:
            bits_ <<= dt(j)
        low_part |= bits_
    upper = payload[low * plane :]
    # bytes holding the a-th … (b-1)-th one of the unary high parts
    first = int(np.searchsorted(upper_cum, a, side="right"))
    last = int(np.searchsorted(upper_cum, b - 1, side="right"))
    before = int(upper_cum[first - 1]) if first else 0
    ones = np.flatnonzero(_unpack_bits(upper[first : last + 1], None))[a - before :][:k]
    if ones.size != k:
        raise HfPxError("corrupt bitmask index (too few positions); re-save the checkpoint")
    # high_i = (one's bit index in the whole vector) - i; in place: each pass is a
    # full sweep over k int64s, which is what decoding costs
    pos = ones - np.arange(a - 8 * first, b - 8 * first, dtype=np.int64)
    if low:
        pos <<= low
        pos |= low_part
    return pos


def _run(jobs: list, fn) -> None:
    threads = max(1, min(len(jobs), torch.get_num_threads(), 8))
    if threads == 1:
        for job in jobs:
            fn(job)
        return
    # numpy releases the GIL in unpackbits / nonzero / fancy assignment
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, jobs):
            pass


def encode(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `t` as ``(values, index)``; see the module docstring for the layout."""
    ints = _int_view(t).numpy()
    numel = ints.size
    nonzero = ints != 0
    pos = np.flatnonzero(nonzero)
    m = int(pos.size)
    value_bytes = t.element_size()
    last = int(pos[-1]) if m else 0
    # payload bytes per codec; the stored values differ for `full` (all n elements)
    costs = {
        (CODEC_FULL, 0): numel * value_bytes,
        (CODEC_BITMASK, 0): (numel + 7) // 8 + m * value_bytes,
    }
    for low in _ef_candidates(numel, m):
        bits = _ef_bits(numel, m, low, last)
        # bit planes are byte-padded separately
        padded = low * ((m + 7) // 8) + (bits - m * low + 7) // 8 if m else 0
        costs[(CODEC_ELIAS_FANO, low)] = padded + m * value_bytes
    # ties: the simpler code (lower codec id, then fewer low bits)
    codec, low = min(costs, key=lambda k: (costs[k], k))
    if codec == CODEC_FULL:
        values_np = ints
        payload = np.zeros(0, dtype=np.uint8)
    elif codec == CODEC_BITMASK:
        values_np = ints[nonzero]
        payload = _pack_bits(nonzero.view(np.uint8))
    else:
        values_np = ints[pos]
        payload = _encode_ef(pos.astype(np.int64, copy=False), low)
    shape = tuple(int(s) for s in t.shape)
    head = _HEAD.pack(MAGIC, VERSION, codec, len(shape), low, m)
    head += struct.pack(f"<{len(shape)}Q", *shape)
    index = np.concatenate([np.frombuffer(head, dtype=np.uint8), payload])
    values = torch.from_numpy(np.ascontiguousarray(values_np)).view(t.dtype)
    return values, torch.from_numpy(index)


def read_header(index: torch.Tensor | np.ndarray | bytes) -> IndexHeader:
    """Parse the fixed header of an index tensor (cheap: reads ≤ 80 bytes)."""
    if isinstance(index, torch.Tensor):
        raw = index[: _HEAD.size + 8 * 16].numpy().tobytes()
    elif isinstance(index, np.ndarray):
        raw = index[: _HEAD.size + 8 * 16].tobytes()
    else:
        raw = bytes(index[: _HEAD.size + 8 * 16])
    if len(raw) < _HEAD.size:
        raise HfPxError("corrupt bitmask index (truncated header); re-save the checkpoint")
    magic, version, codec, ndim, low, count = _HEAD.unpack_from(raw)
    if magic != MAGIC or codec not in CODEC_NAMES:
        raise HfPxError("not an hf-px bitmask index; re-save the checkpoint with hf-px")
    if version > VERSION:
        raise HfPxError(
            f"bitmask index version {version} is newer than this hf-px supports; "
            "pip install -U hf-px"
        )
    end = _HEAD.size + 8 * ndim
    if len(raw) < end:
        raise HfPxError("corrupt bitmask index (truncated shape); re-save the checkpoint")
    shape = struct.unpack_from(f"<{ndim}Q", raw, _HEAD.size)
    return IndexHeader(codec=codec, shape=tuple(shape), count=count, low_bits=low, offset=end)


def decode(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: the dense tensor, bit for bit."""
    head = read_header(index)
    index_np = index.numpy() if index.dtype == torch.uint8 else index.view(torch.uint8).numpy()
    payload = index_np[head.offset :]
    numel = head.numel
    expected = numel if head.codec == CODEC_FULL else head.count
    if values.dim() != 1 or values.numel() != expected:
        raise HfPxError(
            f"bitmask values hold {values.numel()} elements, index says {expected}; "
            "re-save the checkpoint"
        )
    vals = _int_view(values)
    if head.codec == CODEC_FULL:
        return vals.clone().view(values.dtype).reshape(head.shape)
    # np.zeros (calloc: the kernel hands out zeroed pages) rather than torch.zeros
    # (memset): inside from_pretrained on ResNet-50 at 90% sparsity torch.zeros took
    # 0.97 s of a 1.3 s load, np.zeros made the whole load 0.36 s (measured, 2 cores)
    out_np = np.zeros(numel, dtype=vals.numpy().dtype)
    vals_np = vals.numpy()
    m = head.count
    if head.codec == CODEC_BITMASK:
        if payload.size * 8 < numel:
            raise HfPxError("corrupt bitmask index (short bitmask); re-save the checkpoint")
        payload = payload[: (numel + 7) // 8]
        starts = list(range(0, payload.size, CHUNK // 8))
        counts = np.add.reduceat(_popcounts(payload), starts, dtype=np.int64) if starts else []
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if int(offsets[-1]) != m:
            raise HfPxError("corrupt bitmask index (count mismatch); re-save the checkpoint")

        def bitmask_chunk(j: int) -> None:
            b0 = starts[j]
            e0, e1 = 8 * b0, min(8 * (b0 + CHUNK // 8), numel)
            # flatnonzero + fancy assignment: 5x faster than boolean-mask assignment
            where = np.flatnonzero(_unpack_bits(payload[b0 : b0 + CHUNK // 8], e1 - e0))
            out_np[e0:e1][where] = vals_np[offsets[j] : offsets[j + 1]]

        _run(list(range(len(starts))), bitmask_chunk)
    elif m:
        upper_cum = np.cumsum(_popcounts(payload[head.low_bits * ((m + 7) // 8) :]), dtype=np.int64)
        if upper_cum.size == 0 or int(upper_cum[-1]) < m:
            raise HfPxError("corrupt bitmask index (too few positions); re-save the checkpoint")

        def ef_chunk(a: int) -> None:
            b = min(a + CHUNK, m)
            pos = _ef_positions(payload, m, head.low_bits, a, b, upper_cum)
            if pos[-1] >= numel or pos[0] < 0:
                raise HfPxError(
                    "corrupt bitmask index (position out of range); re-save the checkpoint"
                )
            out_np[pos] = vals_np[a:b]

        _run(list(range(0, m, CHUNK)), ef_chunk)
    return torch.from_numpy(out_np).view(values.dtype).reshape(head.shape)


def encoded_nbytes(values: torch.Tensor, index: torch.Tensor) -> int:
    return values.numel() * values.element_size() + index.numel()
