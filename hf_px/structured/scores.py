"""Unit scores: one number per unit of every group (higher = more important).

* ``px``, ``form="bound"``: S_u = Σ over the unit's *fan-out* weights θ (the
  consumer's input columns of the unit) of the unstructured PX score |∂R/∂θ²| · θ² —
  the derivative of R with respect to a multiplicative mask c_u on those squared
  weights, at c = 1 (docs/method.md §11 derives it and says when it is exact).
* ``px``, ``form="fisher"`` (the default for weights loaded from a checkpoint, as for
  unstructured px): S_u = Σ_n Σ_c p_nc (∂ℓ(x_n, c)/∂c_u)², PX's per-sample fisher
  form with the mask c_u on the unit's fan-out instead of one weight: exact per-sample
  sums over each sample's ``fisher_classes`` most probable classes.
* ``taylor`` (Molchanov et al., CVPR 2019): first-order Taylor estimate of the loss
  change on removing the unit, (Σ_{fan-out θ} g · θ)² per batch (= (∂L/∂a_u · a_u)²
  summed over the unit's positions), summed over batches.
* ``l1`` (Li et al., ICLR 2017): the L1 norm of the unit's *producing* weights (the
  filter that computes the channel).
* ``random``: uniform random, seeded by (seed, round).

``l1`` and ``random`` are not comparable across layers, so they remove the same
fraction of every group (see :mod:`.prune`); ``px`` and ``taylor`` rank all units
of the model against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import HfPxError
from ..methods.base import call, cross_entropy, hooks, model_mode
from ..methods.px.options import PxOptions, form_choice
from ..methods.px.per_sample import per_sample_rows
from ..pruning import compute_scores
from .units import UnitGroup, block_exits, block_weights


@dataclass(frozen=True)
class UnitMethod:
    name: str
    label: str
    global_rank: bool  # scores comparable across groups
    default_rounds: int
    needs_labels: bool = False
    needs_data: bool = True
    citation: str = ""


METHODS = {
    "px": UnitMethod("px", "structured PX (Path eXclusion)", True, 10),
    "taylor": UnitMethod(
        "taylor",
        "first-order Taylor",
        True,
        10,
        needs_labels=True,
        citation='Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for '
        'Neural Network Pruning", CVPR 2019',
    ),
    "l1": UnitMethod(
        "l1",
        "L1 norm of filters",
        False,
        1,
        needs_data=False,
        citation='Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient '
        'ConvNets", ICLR 2017',
    ),
    "random": UnitMethod("random", "random", False, 1, needs_data=False),
}


def per_unit_columns(t: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Sum of `t` (a consumer weight's shape) over each unit's input columns."""
    v = t.transpose(0, 1).reshape(t.shape[1], -1).sum(1)
    return v.reshape(group.size, group.width).sum(1)


def per_unit_rows(t: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Sum of `t` (a producer weight's shape) over each unit's output rows."""
    v = t.reshape(t.shape[0], -1).sum(1)
    return v.reshape(group.size, group.width).sum(1)


#: the forms a unit score has (§11 of docs/method.md); "paths" stays per-weight only
UNIT_FORMS = ("bound", "fisher")


def unit_form(model: nn.Module, options: dict[str, Any]) -> tuple[str, str]:
    """(form, why) of structured px, by unstructured px's rule (``form_choice``): the
    per-sample fisher form at the unit's gate for weights loaded from a checkpoint,
    the bound for an initialised model or when a bound-only option is given."""
    PxOptions.from_dict(options)  # a misspelt option is an error here too
    form, why = form_choice(model, options)
    if form not in UNIT_FORMS:
        raise HfPxError(f"structured px scores units with form 'bound' or 'fisher', not {form!r}")
    return form, why


def weight_masks(
    model: nn.Module, groups: list[UnitGroup], kept: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) of the producers' and consumers' weights."""
    out: dict[str, torch.Tensor] = {}

    def mask_of(module_name: str) -> torch.Tensor:
        key = f"{module_name}.weight"
        if key not in out:
            w = model.get_submodule(module_name).weight
            out[key] = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        return out[key]

    for g in groups:
        if g.kind == "blocks":  # a removed block: the weights feeding its branch ends
            for block in _removed_blocks(g, kept):
                module = model.get_submodule(block)
                for w in block_weights(module):
                    out[f"{block}.{w}"] = torch.zeros(
                        module.get_parameter(w).shape, dtype=torch.bool
                    ).to(module.get_parameter(w).device)
            continue
        channels = kept[g.name].repeat_interleave(g.width)
        for name in g.producers:
            m = mask_of(name)
            m &= channels.view(-1, *([1] * (m.dim() - 1))).to(m.device)
        for name in g.consumers:
            m = mask_of(name)
            m &= channels.view(1, -1, *([1] * (m.dim() - 2))).to(m.device)
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, groups: list[UnitGroup], kept: dict[str, torch.Tensor]) -> None:
    """Zero the removed units' weights (producer rows and biases, consumer columns)."""
    for name, mask in weight_masks(model, groups, kept).items():
        p = model.get_parameter(name)
        p.masked_fill_(~mask, 0.0)
    for g in groups:
        if g.kind == "blocks":  # branch ends at 0: the block passes its input on unchanged
            for block in _removed_blocks(g, kept):
                module = model.get_submodule(block)
                for e in block_exits(module):
                    for p in module.get_submodule(e).parameters(recurse=False):
                        p.zero_()
            continue
        gone = ~kept[g.name].repeat_interleave(g.width)
        for name in g.producers:
            bias = model.get_submodule(name).bias
            if bias is not None:
                bias.masked_fill_(gone.to(bias.device), 0.0)


def _removed_blocks(group: UnitGroup, kept: dict[str, torch.Tensor]) -> list[str]:
    return [b for b, k in zip(group.producers, kept[group.name].tolist(), strict=True) if not k]


def score_units(
    method: str,
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    groups: list[UnitGroup],
    kept: dict[str, torch.Tensor],
    *,
    seed: int = 0,
    round_index: int = 0,
    options: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """{group name: float64 score per unit}; removed units score 0."""
    opts = dict(options or {})
    blocks = [g for g in groups if g.kind == "blocks"]
    if blocks and method != "random":
        if len(blocks) != len(groups):
            raise HfPxError("blocks are scored on their own, not with width units")
        out = _block_scores(method, model, batches, groups, kept, opts)
    elif method == "px" and opts.get("form") == "fisher":
        classes = PxOptions.from_dict(opts).fisher_classes
        out = _unit_fisher(model, batches, groups, classes)
    elif method == "px":
        masks = weight_masks(model, groups, kept)
        # the caller decides the form once (unit_form); scored alone, a unit gets the bound
        opts = {**opts, "form": opts.get("form") or "bound"}
        scores = compute_scores(model, batches, "px", masks=masks, **opts)
        out = {
            g.name: sum(per_unit_columns(scores[f"{c}.weight"].double(), g) for c in g.consumers)
            for g in groups
        }
    elif method == "taylor":
        out = _taylor(model, batches, groups, kept)
    elif method == "l1":
        out = {
            g.name: sum(
                per_unit_rows(model.get_submodule(p).weight.detach().double().abs(), g)
                for p in g.producers
            )
            for g in groups
        }
    elif method == "random":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + round_index)
        out = {g.name: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
    else:
        raise ValueError(method)
    return {n: torch.where(kept[n], s.cpu(), torch.zeros_like(s.cpu())) for n, s in out.items()}


def _taylor(model, batches, groups, kept) -> dict[str, torch.Tensor]:
    masks = weight_masks(model, groups, kept)
    tensors = {n: p.detach() for n, p in model.named_parameters()}
    for n, m in masks.items():
        tensors[n] = tensors[n] * m.to(tensors[n].dtype)
    consumers = sorted({f"{c}.weight" for g in groups for c in g.consumers})
    leaves = {n: tensors[n].clone().requires_grad_(True) for n in consumers}
    tensors.update(leaves)
    acc = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    with model_mode(model), torch.enable_grad():
        for batch in batches:
            loss = cross_entropy(call(model, tensors, batch["pixel_values"]), batch["labels"])
            grads = dict(
                zip(consumers, torch.autograd.grad(loss, list(leaves.values())), strict=True)
            )
            for g in groups:
                t = sum(
                    per_unit_columns((grads[n] * leaves[n].detach()).double(), g)
                    for n in (f"{c}.weight" for c in g.consumers)
                )
                acc[g.name] += t.cpu().pow(2)
    return acc


def _unit_fisher(model, batches, groups, n_classes: int) -> dict[str, torch.Tensor]:
    """Σ_n Σ_c p_nc (∂ℓ(x_n, c)/∂c_u)²: PX's fisher form with the mask c_u on the unit's
    fan-out (a per-sample gate on the consumer's input channels of u), the model's own
    `n_classes` most probable classes per sample; float64."""
    gates: dict[str, torch.Tensor] = {}

    samples = [0]

    def pre_hook_for(name: str, conv: bool):
        def pre_hook(module, args):
            a = args[0]
            n = samples[0]
            c = a.shape[1] if conv else a.shape[-1]
            # one gate per image: a layer run on windows (Swin) shares its image's gate
            rows = per_sample_rows(module, a, n) if not conv else a
            shape = (n, c, *([1] * (a.dim() - 2))) if conv else (n, *([1] * (rows.dim() - 2)), c)
            gate = torch.ones(shape, dtype=a.dtype, device=a.device, requires_grad=True)
            gates[name] = gate
            return ((rows * gate).reshape(a.shape), *args[1:])

        return pre_hook

    consumer_of = {c: g for g in groups for c in g.consumers}
    handles = []
    for name, g in consumer_of.items():
        m = model.get_submodule(name)
        handles.append(m.register_forward_pre_hook(pre_hook_for(name, isinstance(m, nn.Conv2d))))
    acc = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for _, logits in _gated_forwards(model, batches, handles, gates, samples):
        names = list(gates)
        for loss, w, retain in _top_class_losses(logits, n_classes):
            grads = torch.autograd.grad(loss, [gates[n] for n in names], retain_graph=retain)
            # one mask c_u on every consumer of u: its derivative sums over them
            per_group: dict[str, torch.Tensor] = {}
            for n, gr in zip(names, grads, strict=True):
                g = consumer_of[n]
                per = gr.detach().double().reshape(gr.shape[0], g.size, g.width).sum(-1)
                per_group[g.name] = per_group.get(g.name, 0) + per
            for name, per in per_group.items():
                acc[name] += (w[:, None] * per.square()).sum(0).cpu()
    return acc


def _block_scores(method, model, batches, groups, kept, opts) -> dict[str, torch.Tensor]:
    """Per removable block: px (bound: Σ S over the weights feeding its branch ends;
    fisher: as for units, the mask on the branch ends' outputs), taylor (the same mask,
    the labelled loss), l1 (Σ|θ| over those weights)."""
    if method == "l1":
        return {
            g.name: torch.tensor(
                [
                    sum(
                        float(model.get_submodule(b).get_parameter(w).detach().double().abs().sum())
                        for w in block_weights(model.get_submodule(b))
                    )
                    for b in g.producers
                ],
                dtype=torch.float64,
            )
            for g in groups
        }
    if method == "px" and opts.get("form") != "fisher":
        masks = weight_masks(model, groups, kept)
        scores = compute_scores(model, batches, "px", masks=masks, **{**opts, "form": "bound"})
        return {
            g.name: torch.tensor(
                [
                    sum(
                        float(scores[f"{b}.{w}"].double().sum())
                        for w in block_weights(model.get_submodule(b))
                    )
                    for b in g.producers
                ],
                dtype=torch.float64,
            )
            for g in groups
        }
    classes = PxOptions.from_dict(opts).fisher_classes if method == "px" else 0
    return _block_gates(model, batches, groups, classes)


def _block_gates(model, batches, groups, n_classes: int) -> dict[str, torch.Tensor]:
    """A gate of ones per image and block on its branch ends' outputs. n_classes > 0: PX's
    fisher form, Σ_n Σ_c p_nc (∂ℓ(x_n, c)/∂c_b)²; 0: Taylor, (Σ_n ∂L/∂c_b)² per batch."""
    gates: dict[tuple[str, int], torch.Tensor] = {}
    samples = [0]

    def hook_for(key):
        def hook(module, args, output):
            n = samples[0]
            gate = gates.get(key)
            if gate is None:
                gate = torch.ones(n, dtype=output.dtype, device=output.device, requires_grad=True)
                gates[key] = gate
            return output * gate.view(n, *([1] * (output.dim() - 1)))

        return hook

    handles = []
    for g in groups:
        for u, b in enumerate(g.producers):
            block = model.get_submodule(b)
            for e in block_exits(block):
                hook = hook_for((g.name, u))
                handles.append(block.get_submodule(e).register_forward_hook(hook))
    acc = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for batch, logits in _gated_forwards(model, batches, handles, gates, samples):
        keys = list(gates)
        if n_classes == 0:
            loss = cross_entropy(logits, batch["labels"])
            grads = torch.autograd.grad(loss, [gates[k] for k in keys])
            for (name, u), gr in zip(keys, grads, strict=True):
                acc[name][u] += float(gr.double().sum()) ** 2
            continue
        for loss, w, retain in _top_class_losses(logits, n_classes):
            grads = torch.autograd.grad(loss, [gates[k] for k in keys], retain_graph=retain)
            for (name, u), gr in zip(keys, grads, strict=True):
                acc[name][u] += float((w * gr.detach().double().square()).sum())
    return acc


def _gated_forwards(model, batches, handles, gates, samples):
    """(batch, float logits) per batch, eval mode, the gate hooks on and `gates` holding
    this forward's gates (`samples[0]`: its image count)."""
    with model_mode(model), hooks(handles), torch.enable_grad():
        for batch in batches:
            gates.clear()
            samples[0] = int(batch["pixel_values"].shape[0])
            logits = model(pixel_values=batch["pixel_values"]).logits
            yield batch, (logits if logits.dtype == torch.float64 else logits.float())


def _top_class_losses(logits: torch.Tensor, n_classes: int):
    """Per pass r: (Σ_n ℓ(x_n, c_nr), p_{n c_nr}, keep the graph) for each image's r-th most
    probable class c_nr, `n_classes` passes at most (PX's fisher form)."""
    p = torch.softmax(logits.detach(), dim=-1)
    k = min(logits.shape[-1], n_classes)
    order = torch.argsort(p, dim=-1, descending=True)[:, :k]
    for r in range(k):
        cls = order[:, r]
        w = p.gather(1, cls[:, None])[:, 0].double()
        yield nn.functional.cross_entropy(logits, cls, reduction="sum"), w, r < k - 1
