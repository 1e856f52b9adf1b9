"""The `bitmask` storage encoding: non-zero values plus an adaptive code for their positions.

A tensor ``t`` (any rank, any 1/2/4/8-byte dtype) is stored as two tensors:

* ``values`` — 1-D, dtype of ``t``: every element whose *bit pattern* is not all
  zeros, in row-major order. Selecting on bits rather than on ``!= 0`` keeps
  ``-0.0`` (and NaN payloads) as stored values, so decoding is bit-exact. A
  pruned weight is stored at its mask's kept positions instead (``encode(t,
  positions=mask)``), a kept weight that is exactly 0 included, so that the
  index is the mask too (:func:`positions_of`) and no file repeats it;
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

Encoding is vectorised numpy. Decoding uses the native kernels of
``hf_px.checkpoint._bitmask_ext`` (built from C at install when a compiler is
there; one pass, GIL released, chunks on a thread pool) and falls back to
vectorised numpy (unpackbits, flatnonzero, fancy indexing: a few passes over m
or n elements) otherwise, or when ``HF_PX_PURE_PYTHON_DECODE=1``. Both give the
same bits.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import HfPxError
from ..utils import env_flag

logger = logging.getLogger(__name__)

MAGIC = b"HPX1"
VERSION = 1
CODEC_FULL = 0
CODEC_BITMASK = 1
CODEC_ELIAS_FANO = 2
CODEC_NAMES = {CODEC_FULL: "full", CODEC_BITMASK: "bitmask", CODEC_ELIAS_FANO: "elias-fano"}

# magic, version, codec, ndim, low bits l, count m
_HEAD = struct.Struct("<4sBBBBQ")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

try:
    from . import _bitmask_ext as _NATIVE
except ImportError:  # not built (no GCC-compatible compiler at install): numpy decoding
    _NATIVE = None
_fallback_logged = False


def native_decoder():
    """The native kernels module, or None (not built, or ``HF_PX_PURE_PYTHON_DECODE=1``).

    A missing build is logged once per process, at the first decode that asks: numpy
    gives the same bits, only slower, so it is news rather than a warning.
    """
    global _fallback_logged
    if env_flag("HF_PX_PURE_PYTHON_DECODE"):
        return None
    if _NATIVE is None and not _fallback_logged:
        _fallback_logged = True
        logger.info(
            "the native bitmask decoder (hf_px.checkpoint._bitmask_ext) is not built; "
            "decoding with numpy (same bits, slower; reinstall hf-px with GCC or Clang present)"
        )
    return _NATIVE


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


_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), 8))


def _pool(threads: int) -> ThreadPoolExecutor:
    # one long-lived pool: starting threads per tensor cost ~1 ms a tensor (measured)
    with _POOL_LOCK:
        pool = _POOL.get(threads)
        if pool is None:
            for old in _POOL.values():
                old.shutdown(wait=False)
            _POOL.clear()
            pool = _POOL[threads] = ThreadPoolExecutor(threads, thread_name_prefix="hf-px-decode")
        return pool


def _forget_pool() -> None:
    # a forked child has none of the parent's threads, and the lock may have been
    # held by one of them at the fork
    global _POOL_LOCK
    _POOL.clear()
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run(jobs: list, fn) -> None:
    threads = min(len(jobs), _threads())
    if threads <= 1:
        for job in jobs:
            fn(job)
        return
    # numpy and the native kernels release the GIL
    for _ in _pool(_threads()).map(fn, jobs):
        pass


def _stored(ints: np.ndarray, positions: torch.Tensor | None) -> np.ndarray | None:
    """The flat bool array of the positions to store; None when `positions` leaves out a
    non-zero bit pattern (it would be lost)."""
    if positions is None:
        return ints != 0
    stored = positions.detach().to("cpu", torch.bool).contiguous().reshape(-1).numpy()
    if stored.size != ints.size:
        raise HfPxError(f"positions hold {stored.size} elements, the tensor {ints.size}")
    return None if bool((ints[~stored] != 0).any()) else stored


def covers(t: torch.Tensor, positions: torch.Tensor) -> bool:
    """Whether every element of `t` outside `positions` is all-zero bits (``+0.0``), so that
    ``encode(t, positions)`` is exact."""
    return _stored(_int_view(t).numpy(), positions) is not None


def encode(
    t: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `t` as ``(values, index)``; see the module docstring for the layout.

    `positions` (bool, `t`'s shape): store these elements rather than the non-zero
    ones, zeros among them included, so that the index codes them exactly (a mask
    read back by :func:`positions_of`); every element outside must be ``+0.0``.
    The `full` code, which records no positions, is then used only when all are set.
    """
    ints = _int_view(t).numpy()
    numel = ints.size
    nonzero = _stored(ints, positions)
    if nonzero is None:
        raise HfPxError("a non-zero element lies outside the positions to encode")
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
    if positions is not None and m < numel:
        del costs[(CODEC_FULL, 0)]  # it would lose which elements are set
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


def positions_of(index: torch.Tensor) -> torch.Tensor:
    """The positions an index codes, as a bool tensor of the encoded shape (`full`: all):
    the mask of a tensor encoded with ``positions=mask``."""
    head = read_header(index)
    if head.codec == CODEC_FULL:
        return torch.ones(head.shape, dtype=torch.bool)
    return decode(torch.ones(head.count, dtype=torch.uint8), index).to(torch.bool)


def decode(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: the dense tensor, bit for bit."""
    out, pending = _decode(values, index, background=False)
    assert pending is None
    return out


class PendingDecode:
    """Decoding jobs still running on the decoding threads (see :func:`decode_in_background`)."""

    def __init__(self, futures: list) -> None:
        self.futures = futures

    def wait(self) -> None:
        """Block until every job is done; a corrupt index raises :class:`HfPxError` here."""
        error = None
        for future in self.futures:  # wait for all, even after a failure
            try:
                future.result()
            except ValueError as exc:
                error = error or exc
        if error is not None:
            raise HfPxError(f"{error}; re-save the checkpoint")


def decode_in_background(
    values: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, PendingDecode | None]:
    """Like :func:`decode`, but the native kernels fill the tensor on the decoding threads
    while the caller goes on: the tensor's contents are valid only after ``wait()`` of the
    returned :class:`PendingDecode` (None when everything was done at once: numpy decoding,
    `full` code). Header, sizes and counts are checked before this returns."""
    return _decode(values, index, background=True)


def _decode(
    values: torch.Tensor, index: torch.Tensor, background: bool
) -> tuple[torch.Tensor, PendingDecode | None]:
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
        return vals.clone().view(values.dtype).reshape(head.shape), None
    native = native_decoder()
    pending = None
    if native is not None:
        out_np, pending = _decode_native(native, head, payload, vals.numpy(), background)
    else:
        out_np = _decode_numpy(head, payload, vals.numpy())
    return torch.from_numpy(out_np).view(values.dtype).reshape(head.shape), pending


def _bitmask_chunks(head: IndexHeader, payload: np.ndarray):
    """Byte offsets of the decoding chunks and, per chunk, the first stored value."""
    numel, m = head.numel, head.count
    if payload.size * 8 < numel:
        raise HfPxError("corrupt bitmask index (short bitmask); re-save the checkpoint")
    payload = payload[: (numel + 7) // 8]
    starts = list(range(0, payload.size, CHUNK // 8))
    counts = np.add.reduceat(_popcounts(payload), starts, dtype=np.int64) if starts else []
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if int(offsets[-1]) != m:
        raise HfPxError("corrupt bitmask index (count mismatch); re-save the checkpoint")
    return payload, starts, offsets


def _upper_cum(head: IndexHeader, payload: np.ndarray) -> np.ndarray:
    m = head.count
    upper_cum = np.cumsum(_popcounts(payload[head.low_bits * ((m + 7) // 8) :]), dtype=np.int64)
    if upper_cum.size == 0 or int(upper_cum[-1]) < m:
        raise HfPxError("corrupt bitmask index (too few positions); re-save the checkpoint")
    return upper_cum


# Elements below which a tensor is decoded by one thread (thread hand-off costs more).
MIN_PART = 1 << 16


def _parts(numel: int) -> int:
    return max(1, min(_threads(), numel // MIN_PART))


def _decode_native(
    native, head: IndexHeader, payload: np.ndarray, vals_np: np.ndarray, background: bool
) -> tuple[np.ndarray, PendingDecode | None]:
    """One C pass per part (``_bitmask_ext``), parts on the decoding threads.

    The tensor is split into as many parts as there are threads; page faults of the
    fresh output memory, the larger cost on big tensors, are then taken in parallel.
    """
    numel, m = head.numel, head.count
    size = vals_np.itemsize
    vals_u8 = vals_np.view(np.uint8)
    parts = _parts(numel)
    if head.codec == CODEC_BITMASK:
        nbytes = (numel + 7) // 8
        if payload.size < nbytes:
            raise HfPxError("corrupt bitmask index (short bitmask); re-save the checkpoint")
        payload = payload[:nbytes]
        cuts = [nbytes * j // parts for j in range(parts)] + [nbytes]
        offsets = [0]
        for j in range(parts - 1):
            offsets.append(
                offsets[-1]
                + native.count_ones(payload[cuts[j] : cuts[j + 1]], 8 * (cuts[j + 1] - cuts[j]))
            )
        offsets.append(m)
        if offsets[-2] > m:
            raise HfPxError("corrupt bitmask index (count mismatch); re-save the checkpoint")
        # every element is written (zeros too), so the memory need not be zeroed first
        out_np = np.empty(numel, dtype=vals_np.dtype)
        out_u8 = out_np.view(np.uint8)

        def bitmask_part(j: int) -> None:
            e0, e1 = 8 * cuts[j], min(8 * cuts[j + 1], numel)
            native.expand_bitmask(
                payload[cuts[j] : cuts[j + 1]],
                vals_u8[size * offsets[j] : size * offsets[j + 1]],
                out_u8[size * e0 : size * e1],
                e1 - e0,
                size,
            )

        return out_np, _dispatch(parts, bitmask_part, background)
    out_np = np.zeros(numel, dtype=vals_np.dtype)
    if not m:
        return out_np, None
    low, plane = head.low_bits, (m + 7) // 8
    upper = payload[low * plane :]
    out_u8 = out_np.view(np.uint8)
    cuts = [m * j // parts for j in range(parts)] + [m]

    def ef_part(j: int) -> None:
        a, b = cuts[j], cuts[j + 1]
        if a == b:
            return
        native.scatter_elias_fano(
            payload[: low * plane],
            plane,
            low,
            upper,
            native.select_one(upper, a),  # where the a-th unary high part ends
            vals_u8[size * a : size * b],
            a,
            out_u8,
            numel,
            size,
        )

    return out_np, _dispatch(parts, ef_part, background)


def _dispatch(parts: int, fn, background: bool) -> PendingDecode | None:
    if background:
        pool = _pool(_threads())
        return PendingDecode([pool.submit(fn, j) for j in range(parts)])
    _run_checked(list(range(parts)), fn)
    return None


def _run_checked(jobs: list, fn) -> None:
    try:
        _run(jobs, fn)
    except ValueError as exc:  # the native kernels' report of a corrupt index
        raise HfPxError(f"{exc}; re-save the checkpoint") from None


def _decode_numpy(head: IndexHeader, payload: np.ndarray, vals_np: np.ndarray) -> np.ndarray:
    numel, m = head.numel, head.count
    # calloc'd zero pages instead of a memset (docs/checkpoints.md, "Decoding details")
    out_np = np.zeros(numel, dtype=vals_np.dtype)
    if head.codec == CODEC_BITMASK:
        payload, starts, offsets = _bitmask_chunks(head, payload)

        def bitmask_chunk(j: int) -> None:
            b0 = starts[j]
            e0, e1 = 8 * b0, min(8 * (b0 + CHUNK // 8), numel)
            # flatnonzero + fancy assignment: 5x faster than boolean-mask assignment
            where = np.flatnonzero(_unpack_bits(payload[b0 : b0 + CHUNK // 8], e1 - e0))
            out_np[e0:e1][where] = vals_np[offsets[j] : offsets[j + 1]]

        _run(list(range(len(starts))), bitmask_chunk)
    elif m:
        upper_cum = _upper_cum(head, payload)

        def ef_chunk(a: int) -> None:
            b = min(a + CHUNK, m)
            pos = _ef_positions(payload, m, head.low_bits, a, b, upper_cum)
            # positions strictly increase in a valid index (the native kernel checks too)
            if pos[-1] >= numel or pos[0] < 0 or bool((pos[1:] <= pos[:-1]).any()):
                raise HfPxError(
                    "corrupt bitmask index (position out of range); re-save the checkpoint"
                )
            out_np[pos] = vals_np[a:b]

        _run(list(range(0, m, CHUNK)), ef_chunk)
    return out_np


def encoded_nbytes(values: torch.Tensor, index: torch.Tensor) -> int:
    return values.numel() * values.element_size() + index.numel()
