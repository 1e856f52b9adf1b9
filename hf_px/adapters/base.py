"""What a model family is, for pruning: prunable weights, gates, norms, classifier.

An adapter holds no scoring maths. It answers four questions the methods ask:

* which parameters are prunable (default: the weight of every Conv2d and Linear,
  classifier included; never biases, norms, embeddings, position embeddings,
  class tokens);
* which parameters form the classifier head (the reference PX keeps them
  untransformed in both auxiliary networks);
* which modules are *gates* — activations read as ``act(z) = g(z) * z`` — and
  how to read ``g`` from the pre-activation ``z``;
* which modules are normalisation layers, and of which kind.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import HfPxError

logger = logging.getLogger(__name__)

GateFn = Callable[[torch.Tensor], torch.Tensor]

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def relu_gate(z: torch.Tensor) -> torch.Tensor:
    """The 0/1 ReLU pattern (reference: ``where(z > 0, 1, 0)``; LeakyReLU alike)."""
    return (z > 0).to(z.dtype)


def gelu_gate(z: torch.Tensor) -> torch.Tensor:
    """GELU(z) = z * Phi(z): the gate is the standard normal CDF."""
    return 0.5 * (1.0 + torch.erf(z * _SQRT1_2))


def gelu_tanh_gate(z: torch.Tensor) -> torch.Tensor:
    """tanh-approximate GELU: z * 0.5 * (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z.pow(3))))


def silu_gate(z: torch.Tensor) -> torch.Tensor:
    """SiLU(z) = z * sigmoid(z)."""
    return torch.sigmoid(z)


def quick_gelu_gate(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(1.702 * z)


def _activation(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``act(z)`` through the module's own ``forward``, never ``module(z)``.

    The gate is read inside the module's forward hooks: calling the module there
    re-enters those hooks (infinite recursion). ``forward`` is the activation's
    functional form and dispatches no hook; the clone keeps in-place activations
    (``ReLU6(inplace=True)``) off the caller's tensor.
    """
    with torch.no_grad():
        return module.forward(z.clone())


def ratio_gate(module: nn.Module) -> GateFn:
    """Generic gate act(z)/z; at z = 0 the slope of act at 0 (central difference)."""

    def gate(z: torch.Tensor) -> torch.Tensor:
        out = _activation(module, z)
        eps = 1e-3
        h = torch.tensor([eps, -eps], dtype=z.dtype, device=z.device)
        ends = _activation(module, h)
        slope0 = (ends[0] - ends[1]) / (2 * eps)
        safe = torch.where(z == 0, torch.ones_like(z), z)
        return torch.where(z == 0, slope0.expand_as(z), out / safe)

    return gate


def default_gate_for(module: nn.Module) -> GateFn | None:
    """The gate of an activation module, or None if the module is not an activation."""
    from transformers import activations as tact

    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        return relu_gate
    if isinstance(module, nn.GELU):
        return gelu_tanh_gate if module.approximate == "tanh" else gelu_gate
    if isinstance(module, tact.GELUActivation):
        return gelu_gate
    if isinstance(module, tact.GELUTanh | tact.NewGELUActivation | tact.FastGELUActivation):
        return gelu_tanh_gate
    if isinstance(module, tact.QuickGELUActivation):
        return quick_gelu_gate
    if isinstance(module, nn.SiLU | tact.SiLUActivation):
        return silu_gate
    activation_types: tuple[type, ...] = (
        nn.ReLU6,
        nn.Hardswish,
        nn.Mish,
        nn.ELU,
        tact.MishActivation,
        tact.ClippedGELUActivation,
        tact.AccurateGELUActivation,
        tact.LaplaceActivation,
        tact.ReLUSquaredActivation,
    )
    if isinstance(module, activation_types):
        return ratio_gate(module)
    return None


BATCH_NORM = "batch"
LAYER_NORM = "layer"
GROUP_NORM = "group"


def norm_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return BATCH_NORM
    if isinstance(module, nn.LayerNorm):
        return LAYER_NORM
    if isinstance(module, nn.GroupNorm):
        return GROUP_NORM
    return None


@dataclass
class Gate:
    name: str
    module: nn.Module
    fn: GateFn


@dataclass
class Norm:
    name: str
    module: nn.Module
    kind: str


class Adapter:
    """Default behaviour: any module tree of Conv2d/Linear layers and activation modules."""

    name = "generic"
    model_types: tuple[str, ...] = ()
    #: attribute names of the classifier head on `*ForImageClassification` models
    classifier_attrs: tuple[str, ...] = (
        "classifier",
        "head",
        "fc",
        "cls_classifier",  # DeiT with teacher: class-token and distillation heads
        "distillation_classifier",
        "classifier_distill",  # LeViT with teacher
    )
    prunable_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)
    #: (regex, why) for Conv2d/Linear weights no score can rank in this family: they are
    #: left out of pruning (kept dense) with a warning, never pruned by tie order
    unscorable: tuple[tuple[str, str], ...] = ()

    # -- prunable weights ---------------------------------------------------------------
    def prunable_parameters(
        self, model: nn.Module, exclude: Iterable[str] = ()
    ) -> dict[str, nn.Parameter]:
        patterns = [_compile(p) for p in exclude]
        owned = {}
        for mod_name, module in model.named_modules():
            if isinstance(module, self.prunable_types) and module.weight is not None:
                owned[id(module.weight)] = f"{mod_name}.weight" if mod_name else "weight"
        unscorable = [(re.compile(p), why) for p, why in self.unscorable]
        probability_only = self.probability_only_weights(model)
        out: dict[str, nn.Parameter] = {}
        skipped: dict[str, int] = {}
        for name, param in model.named_parameters():
            if id(param) not in owned or any(p.search(name) for p in patterns):
                continue
            why = probability_only.get(name) or next(
                (w for p, w in unscorable if p.search(name)), None
            )
            if why is not None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            out[name] = param
        for why, count in skipped.items():
            _warn_once(f"{self.name}: {count} weight tensors kept dense: {why}")
        return out

    def probability_only_weights(self, model: nn.Module) -> dict[str, str]:
        """Weights that reach the output only through softmax attention probabilities
        this adapter does not read as gates (name → why): PX gives them no score.

        The rule (docs/method.md §4.4): in PX's kernel net the tokens carry no image, and
        an attention module that the adapter does not gate is a fixed mixing of them;
        the query/key projections of such a module (named ``query``/``key`` or
        ``q``/``k``) and the MLPs that compute its position bias shape only the mixing
        weights, so their scores are zero in exact arithmetic wherever the mixed tokens
        agree, and round-off. They are kept dense and reported, decided from the
        module structure, never from the scores' values.
        """
        gated = {id(a.module) for a in self.attention(model)}
        out: dict[str, str] = {}
        for name, module in model.named_modules():
            if id(module) in gated:
                continue
            prefix = f"{name}." if name else ""
            for q_name, k_name in _QUERY_KEY_NAMES:
                q, k = getattr(module, q_name, None), getattr(module, k_name, None)
                if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                    out[f"{prefix}{q_name}.weight"] = _PROBABILITY_ONLY
                    out[f"{prefix}{k_name}.weight"] = _PROBABILITY_ONLY
            if name.endswith(_POSITION_BIAS_MLPS):
                for sub, child in module.named_modules():
                    if isinstance(child, self.prunable_types):
                        out[f"{prefix}{sub}.weight"] = _PROBABILITY_ONLY
        return out

    # -- classifier ---------------------------------------------------------------------
    def classifier_parameter_names(self, model: nn.Module) -> set[str]:
        """Parameters of the classification head (kept untransformed by reference PX).

        Only models with a transformers `config` have a head we can name; hand-built
        nets get the paper's formula on every layer.
        """
        if getattr(model, "config", None) is None:
            return set()
        names: set[str] = set()
        for attr in self.classifier_attrs:  # every head: distilled models have two
            head = getattr(model, attr, None)
            if isinstance(head, nn.Module):
                names.update(f"{attr}.{n}" for n, _ in head.named_parameters())
        return names

    # -- gates and norms ------------------------------------------------------------------
    def gates(self, model: nn.Module) -> list[Gate]:
        out = []
        for name, module in model.named_modules():
            fn = default_gate_for(module)
            if fn is not None:
                out.append(Gate(name, module, fn))
        return out

    def norms(self, model: nn.Module) -> list[Norm]:
        out = []
        for name, module in model.named_modules():
            kind = norm_kind(module)
            if kind is not None:
                out.append(Norm(name, module, kind))
        return out

    def attention(self, model: nn.Module) -> list[Attention]:
        """Softmax attentions whose probabilities PX reads as token-mixing gates."""
        return find_attention(model)

    def cuts(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose output every input→output path crosses (PX rescales there).

        Default: the outermost ``*Layer`` modules held in a ModuleList/Sequential —
        the blocks on a transformers model's residual stream (ViTLayer,
        ResNetBottleNeckLayer, ConvNextLayer, ...), applied one after the other.
        Override for a family whose block list is not applied sequentially.
        """
        out: list[nn.Module] = []
        inside: set[int] = set()
        for module in model.modules():
            if id(module) in inside:
                continue
            if isinstance(module, nn.ModuleList | nn.Sequential):
                for child in module.children():
                    if type(child).__name__.endswith("Layer"):
                        out.append(child)
                        inside.update(id(m) for m in child.modules())
        return out

    def norm_parameter_names(self, model: nn.Module) -> set[str]:
        names: set[str] = set()
        for norm in self.norms(model):
            prefix = f"{norm.name}." if norm.name else ""
            names.update(prefix + n for n, _ in norm.module.named_parameters(recurse=False))
        return names


_warned: set[str] = set()

#: Linear children that project a softmax attention's queries and keys
_QUERY_KEY_NAMES = (("query", "key"), ("q", "k"))
#: modules whose output is only an additive attention bias (Swin v2's log-spaced CPB)
_POSITION_BIAS_MLPS = ("continuous_position_bias_mlp",)
_PROBABILITY_ONLY = (
    "they shape only the probabilities of a softmax attention that PX cannot read as a "
    "gate (inline attention), so their PX scores are zero in exact arithmetic where the "
    "mixed tokens agree and round-off elsewhere (docs/method.md §4.4)"
)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise HfPxError(
            f"invalid --exclude regular expression {pattern!r} ({exc}); fix the pattern"
        ) from None


@dataclass
class Attention:
    """A `transformers` attention module that dispatches through `AttentionInterface`
    and projects with `q_proj`/`k_proj`/`v_proj` Linear layers."""

    name: str
    module: nn.Module
    q: str  # parameter names of the projection weights
    k: str
    v: str


def find_attention(model: nn.Module) -> list[Attention]:
    out = []
    for name, module in model.named_modules():
        projs = [getattr(module, a, None) for a in ("q_proj", "k_proj", "v_proj")]
        if all(isinstance(p, nn.Linear) for p in projs) and hasattr(module, "config"):
            prefix = f"{name}." if name else ""
            out.append(
                Attention(
                    name,
                    module,
                    q=f"{prefix}q_proj.weight",
                    k=f"{prefix}k_proj.weight",
                    v=f"{prefix}v_proj.weight",
                )
            )
    return out
