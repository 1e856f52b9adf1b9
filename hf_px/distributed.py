"""Process infrastructure for data-parallel passes: who scores which batch, how sums are reduced.

Methods never talk to ``torch.distributed``: they ask a :class:`Reducer`, and
this module is the one place that talks to the backend an
`accelerate.Accelerator` set up.

* **Shard unit = a whole batch.** Batch ``i`` goes to process ``i % world_size``,
  so each batch is scored exactly as in a single process — BatchNorm batch
  statistics in PX's auxiliary passes included — and no sample is padded or
  counted twice (accelerate's ``even_batches`` padding is never used, and the
  model is never ``prepare()``-d: DDP would average gradients every step).
* **Reduce linear sums, then apply non-linear steps.** Scores are functions of
  sums over batches (PX: Σ z_data or Σ ∂R_b/∂θ²; SNIP: Σ ∇L_b; GraSP: Σ ∇L_b,
  then Σ H_b g). Those sums are all-reduced *before* any |·| or product.
* **Exactly the same numbers.** Sums travel in float64. A float64 sum of a few
  float32 numbers whose magnitudes lie within 2^26 of each other is exact, so
  it does not depend on the order of summation, i.e. on how batches were split
  over processes; cast back to float32 it is bit-for-bit the single-process
  result in practice (measured: tests/test_distributed.py compares masks).
* **Every collective is unconditional.** Each process calls the same
  reductions in the same order whatever the size of its shard (possibly
  empty), so uneven shards can neither hang nor abort.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import HfPxError, HfPxFailure

logger = logging.getLogger(__name__)

# Small tensors travel packed into float64 buffers of at most this many elements; larger
# ones are reduced in place, one by one, without a copy (docs/distributed.md has the timings).
BUCKET_NUMEL = 1 << 20

_LAUNCH_FIX = (
    "launch with `torchrun --nproc_per_node N` or "
    "`accelerate launch --multi_gpu --num_processes N` (on CPU as well)"
)


class Reducer:
    """Single process: identity reductions, every batch is ours."""

    world_size = 1
    rank = 0

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def shard(self, batches: Sequence[Any]) -> list[Any]:
        """This process's batches: ``batches[rank::world_size]`` (whole batches)."""
        return list(batches[self.rank :: self.world_size])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over processes. May reduce in place and return `tensor`."""
        return tensor

    def all_reduce_dict(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum a dict of tensors over processes, in float64; returns the input dtypes.

        Contiguous float64 tensors of at least :data:`BUCKET_NUMEL` elements are
        reduced *in place* (no copy: the methods accumulate in float64); other
        large tensors through a float64 copy; small ones are packed into float64
        buffers of up to :data:`BUCKET_NUMEL` elements, one collective each.
        """
        if self.world_size == 1 or not tensors:
            return tensors
        out: dict[str, torch.Tensor] = {}
        small: list[str] = []
        for n, t in tensors.items():
            if t.numel() < BUCKET_NUMEL:
                small.append(n)
            elif t.dtype == torch.float64 and t.is_contiguous():
                out[n] = self.all_reduce_sum(t)
            else:
                out[n] = self.all_reduce_sum(t.to(torch.float64)).to(t.dtype)
        for group in _buckets(small, tensors):
            flat = torch.cat([tensors[n].reshape(-1).to(torch.float64) for n in group])
            flat = self.all_reduce_sum(flat)
            offset = 0
            for n in group:
                t = tensors[n]
                out[n] = flat[offset : offset + t.numel()].view(t.shape).to(t.dtype)
                offset += t.numel()
        return {n: out[n] for n in tensors}

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """``[world_size, k]`` float64: row ``r`` is process r's 1-D `row`.

        Built from one all-reduce: each process fills only its own row and the
        others are zeros, so the sum is exact (x + 0 = x).
        """
        table = torch.zeros((self.world_size, row.numel()), dtype=torch.float64)
        table[self.rank] = row.detach().reshape(-1).to(torch.float64).cpu()
        return self.all_reduce_sum(table)


def _buckets(names: list[str], tensors: dict[str, torch.Tensor]) -> list[list[str]]:
    """Consecutive groups of `names` holding at most BUCKET_NUMEL elements each."""
    groups: list[list[str]] = []
    size = 0
    for n in names:
        k = tensors[n].numel()
        if not groups or size + k > BUCKET_NUMEL:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += k
    return groups


class AccelerateReducer(Reducer):
    """Reductions through the process group an `accelerate.Accelerator` set up.

    For torch.distributed backends (gloo on CPU, nccl on GPU, ...) tensors are
    all-reduced *in place* with ``torch.distributed.all_reduce`` on the group
    accelerate initialised: ``Accelerator.reduce`` averages by default and clones
    every tensor (``scripts/bench_distributed.py`` compares both). Other backends
    (XLA) go through ``Accelerator.reduce(..., reduction="sum")``.
    """

    def __init__(self, accelerator: Any) -> None:
        check_world_size(accelerator)
        self.accelerator = accelerator
        self.world_size = int(accelerator.num_processes)
        self.rank = int(accelerator.process_index)

    @property
    def is_main_process(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        device = self.accelerator.device
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            here = _same_device(tensor.device, device)
            buf = (tensor if here else tensor.to(device)).contiguous()  # in place when possible
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            return buf if here else buf.to(tensor.device)
        reduced = self.accelerator.reduce(tensor.to(device).contiguous(), reduction="sum")
        return reduced.to(tensor.device)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def _same_device(a: torch.device, b: torch.device | str) -> bool:
    """`cpu` and `cpu:0` are one device (``tensor.to("cpu:0")`` would copy)."""
    b = torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def make_reducer(accelerator: Any = None) -> Reducer:
    """A :class:`Reducer` for `accelerator` (None → single process)."""
    if accelerator is None:
        return Reducer()
    if isinstance(accelerator, Reducer):
        return accelerator
    return AccelerateReducer(accelerator)


# -- launching ----------------------------------------------------------------------------
def _launched_world_size() -> int:
    """Processes the launcher promised: WORLD_SIZE (torchrun, accelerate) or MPI's."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(key)
        if value:
            try:
                return int(value)
            except ValueError:
                raise HfPxError(f"{key}={value!r} is not an integer; unset it") from None
    return 1


def _single_process_cpu_launch() -> bool:
    """`accelerate launch --cpu --num_processes N>1` without an MPI hostfile: the
    launcher exports MASTER_ADDR/MASTER_PORT and ACCELERATE_USE_CPU, yet starts
    one plain process with no WORLD_SIZE (accelerate 1.15, measured)."""
    env = os.environ
    return (
        env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1")
        and "MASTER_PORT" in env
        and _launched_world_size() == 1
        and "LOCAL_RANK" not in env
    )


def check_world_size(accelerator: Any) -> None:
    """Raise when the launcher started N processes but `accelerator` sees fewer.

    Each rank would then believe it is alone, score every batch and write the
    output N times; on a machine without a GPU this is what ``Accelerator()``
    (without ``cpu=True``) does under torchrun.
    """
    seen = int(getattr(accelerator, "num_processes", 1))
    launched = _launched_world_size()
    if launched != seen:
        hint = (
            "create the Accelerator with cpu=True on a machine without GPU "
            "(hf_px.distributed.make_accelerator does)"
            if seen == 1
            else _LAUNCH_FIX
        )
        raise HfPxError(f"launched for {launched} processes but this one sees {seen}; {hint}")
    if seen == 1 and _single_process_cpu_launch():
        raise HfPxError(
            "`accelerate launch --cpu --num_processes N` started one process (it needs an "
            f"MPI hostfile); {_LAUNCH_FIX}"
        )


def _has_gpu() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def make_accelerator(cpu: bool | None = None, **kwargs: Any) -> Any:
    """An `accelerate.Accelerator` for the calibration pass, checked.

    ``cpu=None``: ``cpu=True`` for a multi-process launch on a machine without
    GPU (otherwise accelerate leaves every rank alone, measured with
    accelerate 1.15), else accelerate's default device. Raises
    :class:`HfPxError` when the launched world size differs from the processes
    the accelerator sees.
    """
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is a dependency
        raise HfPxError("data-parallel scoring needs accelerate: pip install accelerate") from None
    if cpu is None:
        multi = _launched_world_size() > 1 or "LOCAL_RANK" in os.environ
        cpu = multi and not _has_gpu()
    if _single_process_cpu_launch():
        raise HfPxError(
            "`accelerate launch --cpu --num_processes N` started one process (it needs an "
            f"MPI hostfile); {_LAUNCH_FIX}"
        )
    try:
        accelerator = Accelerator(cpu=cpu, **kwargs)
    except (RuntimeError, ValueError) as err:
        raise HfPxFailure(f"could not start accelerate: {err}; {_LAUNCH_FIX}") from err
    check_world_size(accelerator)
    return accelerator


# -- every rank holds the same model ---------------------------------------------------------
def check_not_offloaded(model: nn.Module) -> None:
    """Refuse models with offloaded or meta weights.

    Measured: with CPU or disk offload through accelerate's hooks the
    offloaded parameters receive no gradient, so every gradient-based score of
    theirs would silently be 0. Scoring needs every weight materialised.
    """
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise HfPxError(
                f"parameter {name!r} is not materialised (offloaded or on the meta device); "
                "load the model without device_map/offload so it fits one device"
            )
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and _offloads(hook):
            raise HfPxError(
                "the model uses accelerate CPU/disk offload, whose weights get no gradient "
                "while scoring; load it without device_map/offload on one device"
            )


def _offloads(hook: Any) -> bool:
    if getattr(hook, "offload", False):
        return True
    return any(_offloads(h) for h in getattr(hook, "hooks", ()) or ())


def weights_digest(model: nn.Module) -> torch.Tensor:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes) as
    eight float64 numbers (each < 2**32, so exact)."""
    check_not_offloaded(model)
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    digest = h.digest()
    words = [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 32, 4)]
    return torch.tensor(words, dtype=torch.float64)


def check_same_weights(model: nn.Module, reducer: Reducer | Any) -> None:
    """Raise unless every process holds bit-identical parameters and buffers.

    Seeds are not trusted: a random initialisation, a different checkpoint
    revision or a stale cache on one node would make the processes score
    different models and the masks meaningless. Collective: call it on every
    process. `reducer` may also be an `Accelerator`.
    """
    reducer = make_reducer(reducer)
    if reducer.world_size == 1:
        check_not_offloaded(model)
        return
    table = reducer.gather_rows(weights_digest(model))
    differ = [r for r in range(reducer.world_size) if not torch.equal(table[r], table[0])]
    if differ:
        raise HfPxError(
            f"process(es) {differ} hold different weights from process 0; load the same "
            "checkpoint on every process (from_pretrained), or seed before building the model"
        )


def move_batches(batches: Sequence[dict[str, Any]], device: Any) -> list[dict[str, Any]]:
    """Batches with every tensor on `device` (e.g. ``accelerator.device``)."""
    return [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in batches
    ]
