"""Data-parallel calibration: who scores which batch, and how sums are reduced.

Methods never talk to ``torch.distributed``: they ask a :class:`Reducer`. The
shard unit is a whole *batch* (batch ``i`` goes to process ``i % world_size``), so
each batch is scored exactly as in a single process — BatchNorm batch statistics
in PX's auxiliary passes included — and no sample is counted twice or padded
(accelerate's ``even_batches`` padding is never used). Scores are sums over
batches, reduced with an all-reduce before any non-linear step (|.|, products),
so they do not depend on the number of processes beyond float summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Reducer:
    """Single process: identity reductions, every batch is ours."""

    world_size = 1
    rank = 0

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def shard(self, batches: Sequence[Any]) -> list[Any]:
        return list(batches[self.rank :: self.world_size])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_dict(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum a dict of tensors over processes with one flat all-reduce."""
        if self.world_size == 1 or not tensors:
            return tensors
        names = list(tensors)
        flat = torch.cat([tensors[n].reshape(-1).to(torch.float64) for n in names])
        flat = self.all_reduce_sum(flat)
        out, offset = {}, 0
        for n in names:
            t = tensors[n]
            out[n] = flat[offset : offset + t.numel()].view(t.shape).to(t.dtype)
            offset += t.numel()
        return out


class AccelerateReducer(Reducer):
    """Reductions through an `accelerate.Accelerator` (any backend it supports)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.world_size = accelerator.num_processes
        self.rank = accelerator.process_index

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        device = self.accelerator.device
        reduced = self.accelerator.reduce(tensor.to(device).contiguous(), reduction="sum")
        return reduced.to(tensor.device)


def make_reducer(accelerator: Any = None) -> Reducer:
    if accelerator is None:
        return Reducer()
    if isinstance(accelerator, Reducer):
        return accelerator
    return AccelerateReducer(accelerator)
