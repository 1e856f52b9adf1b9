"""What a structured model costs: multiply-accumulates (MACs) and parameters, exactly.

MACs counted: every Conv2d and Linear (output elements × input channels per group ×
kernel area) and the two attention matmuls (QKᵀ and PV: 2 · tokens² · head_dim per
head); norms, activations, softmax, pooling and additions are not counted. Parameters:
every parameter of the model (buffers are not).

Every count is a product of at most two unit counts (a layer's output and input
widths), so :class:`CostModel` holds, per term, the integer cost of one unit pair and
updates totals exactly (integers) as units go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import HfPxError
from .units import UnitGroup


@dataclass
class Term:
    per_unit: int  # cost with one unit in each of `groups` (both, when two)
    groups: tuple[str, ...]  # 0, 1 or 2 group names whose counts multiply


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "q_proj", None), nn.Linear) and hasattr(m, "head_dim")
    }


@torch.no_grad()
def layer_macs(model: nn.Module, image_size: int, num_channels: int = 3) -> dict[str, int]:
    """MACs of one image, per Conv2d/Linear module name and per attention module
    (its matmuls), measured by shapes on one forward pass."""
    out: dict[str, int] = {}
    handles = []
    attn = _attention_modules(model)

    def on_layer(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                k = math.prod(module.kernel_size) * (module.in_channels // module.groups)
            else:
                k = module.in_features
            out[name] = out.get(name, 0) + output.numel() * k

        return hook

    def on_attention(name):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            tokens = hidden.shape[-2]
            sequences = math.prod(hidden.shape[:-2])  # Swin: every window of the image
            heads = module.q_proj.out_features // module.head_dim
            per = 2 * tokens * tokens * module.head_dim * heads
            out[name] = out.get(name, 0) + sequences * per

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(on_layer(name)))
        if name in attn:
            handles.append(m.register_forward_hook(on_attention(name), with_kwargs=True))
    training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        x = torch.zeros(1, num_channels, image_size, image_size, dtype=p.dtype, device=p.device)
        model(pixel_values=x)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return out


class CostModel:
    """MACs and parameters as functions of the kept unit counts per group."""

    def __init__(self, model: nn.Module, groups: list[UnitGroup], image_size: int) -> None:
        self.sizes = {g.name: g.size for g in groups}
        out_of: dict[str, str] = {}
        in_of: dict[str, str] = {}
        for g in (g for g in groups if g.kind != "blocks"):
            for n in (*g.producers, *g.norms):
                out_of[n] = g.name
            for n in g.consumers:
                in_of[n] = g.name
            if g.kind == "heads":
                out_of[g.name] = g.name  # its matmuls scale with the head count
                out_of[f"{g.name}.relative_position_bias"] = g.name  # Swin: a bias column each
        macs = layer_macs(model, image_size)
        params = {name: p.numel() for name, p in model.named_parameters()}
        # a removable block costs everything inside it: one term per block list
        block_terms = {"macs": [], "params": []}
        for g in groups:
            if g.kind != "blocks":
                continue
            for key, costs in (("macs", macs), ("params", params)):
                per_block = []
                for b in g.producers:
                    inside = [n for n in costs if n.startswith(b + ".")]
                    per_block.append(sum(costs.pop(n) for n in inside))
                if len(set(per_block)) != 1:
                    raise HfPxError(
                        f"the blocks of {g.name} differ in cost ({sorted(set(per_block))}); "
                        "hf-px removes blocks only where they are alike"
                    )
                block_terms[key].append(Term(per_block[0], (g.name,)))
        self.macs_terms = self._terms(macs, out_of, in_of) + block_terms["macs"]
        # a bias / norm parameter scales with its module's outputs only, a weight with both
        self.params_terms = []
        for name in sorted(params):
            module, _, attr = name.rpartition(".")
            in_group = in_of.get(module) if attr == "weight" else None
            self.params_terms.append(self._term(params[name], out_of.get(module), in_group))
        self.params_terms += block_terms["params"]

    def _term(self, total: int, out_group: str | None, in_group: str | None) -> Term:
        groups = tuple(g for g in (out_group, in_group) if g is not None)
        denom = math.prod(self.sizes[g] for g in groups)
        per, rest = divmod(total, denom)
        if rest:
            raise ValueError(f"cost {total} is not a multiple of the unit counts {groups}")
        return Term(per, groups)

    def _terms(self, costs, out_of, in_of) -> list[Term]:
        return [self._term(c, out_of.get(n), in_of.get(n)) for n, c in sorted(costs.items())]

    @staticmethod
    def _total(terms: list[Term], counts: dict[str, int]) -> int:
        return sum(t.per_unit * math.prod(counts[g] for g in t.groups) for t in terms)

    def macs(self, counts: dict[str, int] | None = None) -> int:
        return self._total(self.macs_terms, counts or self.sizes)

    def params(self, counts: dict[str, int] | None = None) -> int:
        return self._total(self.params_terms, counts or self.sizes)

    def cost(self, target: str, counts: dict[str, int] | None = None) -> int:
        return self.macs(counts) if target == "macs" else self.params(counts)

    def terms(self, target: str) -> list[Term]:
        return self.macs_terms if target == "macs" else self.params_terms
