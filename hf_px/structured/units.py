"""Structured units: which output channels, neurons or heads can be removed together.

A :class:`UnitGroup` is one set of interchangeable units inside one block: the
``size`` units of ``width`` consecutive channels each, produced by the output rows of
``producers`` (weight dim 0, bias; BatchNorm ``norms`` on the same channels) and read
by the input columns of ``consumers`` (weight dim 1). Removing unit u deletes its rows,
its norm entries and its columns; nothing else in the network sees those channels,
so the smaller network computes exactly what the network with those weights at zero
computes (the consumers' columns carry all of the unit's effect).

A residual *stream* channel is written by every block of a stage (its last
convolution, and the projection shortcut that opens the stage) and read by every block
(its first convolution) and by whatever follows the stage; removing one means editing
all of them together. That is the ResNet kind ``stream``: one group per run of blocks
between projection shortcuts (the stem's output joins the first stage's stream when
the first block adds its input unchanged), consumers = every first convolution and
projection shortcut that reads it, and the classifier for the last stage.

* ``resnet``: the two internal widths of every bottleneck (conv 1x1 → conv 3x3 →
  conv 1x1: the outputs of the first two convolutions with their BatchNorms) or
  the one of a basic block, kind ``channels``; the residual streams, kind ``stream``.
* ``convnext``: the MLP hidden channels of every block (``pwconv1`` → GELU →
  ``pwconv2``), kind ``channels``.
* ``vit`` / ``deit`` / ``swin``: the MLP neurons of every layer (``fc1`` → GELU →
  ``fc2``), kind ``neurons``; the attention heads (``q_proj``/``k_proj``/``v_proj``
  rows of a head, ``o_proj`` columns; a Swin head also its column of the relative
  position bias table), kind ``heads``. Swin's config gives widths per stage as ratios
  (``mlp_ratio``, ``num_heads``), so its pruned widths always need the hook.
* ``data2vec-vision`` / ``swinv2``: the MLP neurons of the older layout
  (``intermediate.dense`` → GELU → ``output.dense``), kind ``neurons``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import HfPxError

KINDS = ("channels", "stream", "neurons", "heads", "blocks")
FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    "resnet": ("channels", "stream", "blocks"),
    "convnext": ("channels", "blocks"),
    "vit": ("neurons", "heads", "blocks"),
    "deit": ("neurons", "heads", "blocks"),
    "swin": ("neurons", "heads"),
    "dinov2": ("neurons", "heads", "blocks"),
    "dinov2_with_registers": ("neurons", "heads", "blocks"),
    "vit_msn": ("neurons", "heads", "blocks"),
    "ijepa": ("neurons", "heads", "blocks"),
    # not heads: BEiT's relative position bias tables sit in the layer (or the encoder,
    # shared by every layer), outside the attention a head's removal resizes
    "beit": ("neurons", "blocks"),
    # the older layout: the MLP is ``intermediate.dense`` → GELU → ``output.dense``; heads are
    # left out (Swin V2's per-head logit scale and position-bias MLP, data2vec's bias tables)
    "data2vec-vision": ("neurons", "blocks"),
    "swinv2": ("neurons",),
}
#: kinds ``auto`` leaves out: a whole block costs what its widths make it, so blocks are
#: pruned on their own (the cost model multiplies at most two unit counts per layer)
SEPARATE_KINDS = ("blocks",)
#: per block class, the modules that end its residual branches: a gate on their outputs
#: scales the branches, and zeroing their weight and bias makes the block the identity
_BLOCK_EXITS = {
    "ViTLayer": ("attention.o_proj", "mlp.fc2"),
    "DeiTLayer": ("attention.o_proj", "mlp.fc2"),
    "ConvNextLayer": ("pwconv2",),
    "Dinov2Layer": ("attention.o_proj", "mlp.fc2"),  # the layer scales multiply a 0 by γ
    "Dinov2WithRegistersLayer": ("attention.o_proj", "mlp.fc2"),
    "ViTMSNLayer": ("attention.o_proj", "mlp.fc2"),
    "IJepaLayer": ("attention.o_proj", "mlp.fc2"),
    "BeitLayer": ("attention.o_proj", "mlp.fc2"),
    "Data2VecVisionLayer": ("attention.output.dense", "output.dense"),
}
#: families whose config names one MLP width (``intermediate_size``) for every layer, and
#: those that name one head count (``num_attention_heads``, with ``head_dim`` beside it);
#: DINOv2 (with or without registers) states its MLP width as an integer ``mlp_ratio``
_UNIFORM_NEURONS = ("vit", "deit", "vit_msn", "ijepa", "beit", "data2vec-vision")
_UNIFORM_HEADS = ("vit", "deit", "vit_msn", "ijepa", "dinov2", "dinov2_with_registers")
#: families whose layers hold an ``…MLP`` (fc1 → fc2) and an ``…Attention`` (q/k/v → o)
_VIT_LIKE = ("vit", "deit", "swin", "dinov2", "dinov2_with_registers", "vit_msn", "ijepa", "beit")
#: families whose layers hold ``intermediate.dense`` → activation → ``output.dense``
_INTERMEDIATE_MLP = {"data2vec-vision": "Data2VecVisionLayer", "swinv2": "Swinv2Layer"}


@dataclass(frozen=True)
class UnitGroup:
    """Kind ``blocks``: `name` is the block list (a ModuleList/Sequential), `producers`
    the removable blocks' module names (one per unit); `consumers` and `norms` are empty
    (:func:`block_exits` names what ends each block's residual branch)."""

    name: str  # the block's module name + a role, unique in the model
    kind: str
    size: int  # units in the dense model
    width: int  # channels per unit (a head's head_dim; 1 otherwise)
    producers: tuple[str, ...]  # modules whose output channels are the units
    consumers: tuple[str, ...]  # modules whose input channels are the units
    norms: tuple[str, ...] = ()  # BatchNorms on the units' channels
    uniform_key: str = ""  # groups with one key share one width in the model's config
    min_keep: int = 1  # units a group keeps at least


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or "?"


def family_kinds(model: nn.Module) -> tuple[str, ...]:
    kinds = FAMILY_KINDS.get(model_type(model))
    if kinds is None:
        raise HfPxError(
            f"structured pruning supports model types {', '.join(sorted(FAMILY_KINDS))}; "
            f"this model is {model_type(model)!r} (use unstructured `hf-px prune`)"
        )
    return kinds


def resolve_kinds(model: nn.Module, structure: str | list[str] | tuple[str, ...]) -> list[str]:
    """``auto`` → every unit kind of the family; else the named kinds, checked."""
    available = family_kinds(model)
    names = [structure] if isinstance(structure, str) else list(structure)
    if names == ["auto"]:
        return [k for k in available if k not in SEPARATE_KINDS]
    for n in names:
        if n not in available:
            raise HfPxError(
                f"structure {n!r} does not exist for {model_type(model)!r} models; "
                f"choose from {', '.join(available)} or auto"
            )
    picked = [k for k in available if k in names]
    if any(k in SEPARATE_KINDS for k in picked) and len(picked) > 1:
        raise HfPxError(
            "structure blocks removes whole blocks and is pruned on its own, not with "
            f"{'+'.join(k for k in picked if k not in SEPARATE_KINDS)}; run prune-structured "
            "once per kind"
        )
    return picked


def find_units(
    model: nn.Module, kinds: list[str] | tuple[str, ...] | None = None
) -> list[UnitGroup]:
    """The unit groups of `model`, in module order (`kinds`: None = what ``auto`` takes)."""
    kinds = list(kinds) if kinds is not None else resolve_kinds(model, "auto")
    mt = model_type(model)
    groups: list[UnitGroup] = []
    for name, module in model.named_modules():
        cls = type(module).__name__
        if mt == "resnet" and "channels" in kinds and cls.startswith("ResNet"):
            groups += _resnet_block(name, module, cls)
        elif mt == "convnext" and "channels" in kinds and cls == "ConvNextLayer":
            hidden = module.pwconv1.out_features
            groups.append(
                UnitGroup(
                    f"{name}.mlp", "channels", hidden, 1, (f"{name}.pwconv1",),
                    (f"{name}.pwconv2",), uniform_key="",
                )
            )  # fmt: skip
        elif mt in _VIT_LIKE and cls.endswith("MLP") and "neurons" in kinds:
            key = "intermediate_size" if mt in _UNIFORM_NEURONS else ""
            groups.append(
                UnitGroup(
                    f"{name}", "neurons", module.fc1.out_features, 1, (f"{name}.fc1",),
                    (f"{name}.fc2",), uniform_key=key,
                )
            )  # fmt: skip
        elif _INTERMEDIATE_MLP.get(mt) == cls and "neurons" in kinds:
            key = "intermediate_size" if mt in _UNIFORM_NEURONS else ""
            groups.append(
                UnitGroup(
                    f"{name}.intermediate", "neurons", module.intermediate.dense.out_features, 1,
                    (f"{name}.intermediate.dense",), (f"{name}.output.dense",), uniform_key=key,
                )
            )  # fmt: skip
        elif mt in _VIT_LIKE and cls.endswith("Attention") and "heads" in kinds:
            hd = module.head_dim
            key = "num_attention_heads" if mt in _UNIFORM_HEADS else ""
            groups.append(
                UnitGroup(
                    f"{name}", "heads", module.q_proj.out_features // hd, hd,
                    tuple(f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj")),
                    (f"{name}.o_proj",), uniform_key=key,
                )
            )  # fmt: skip
    if mt == "resnet" and "stream" in kinds:
        groups += _resnet_streams(model)
    if "blocks" in kinds:
        groups += _block_lists(model)
    return groups


def block_exits(block: nn.Module) -> tuple[str, ...]:
    """Modules (relative to the block) that end its residual branches; a ResNet block's
    is its last BatchNorm (weight and bias 0 → the branch adds 0)."""
    cls = type(block).__name__
    if cls in _BLOCK_EXITS:
        return _BLOCK_EXITS[cls]
    return (f"layer.{len(block.layer) - 1}.normalization",)


def block_weights(block: nn.Module) -> tuple[str, ...]:
    """The weights (relative to the block) that feed its branch ends: what PX's bound
    sums for the block (the Linear/conv before a ResNet block's last BatchNorm)."""
    cls = type(block).__name__
    if cls in _BLOCK_EXITS:
        return tuple(f"{e}.weight" for e in _BLOCK_EXITS[cls])
    return (f"layer.{len(block.layer) - 1}.convolution.weight",)


def fixed_blocks(container: nn.Module) -> int:
    """Blocks of a list that are never removed (a ResNet stage's projecting block)."""
    return sum(
        not isinstance(getattr(b, "shortcut", nn.Identity()), nn.Identity) for b in container
    )


def _block_lists(model: nn.Module) -> list[UnitGroup]:
    """One group per list of blocks: ViT/DeiT/DINOv2's layers, a ConvNeXt stage's layers, a
    ResNet stage's blocks that add their input unchanged (the projecting one stays)."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential) or not len(module):
            continue
        classes = {type(b).__name__ for b in module}
        if classes <= set(_BLOCK_EXITS):
            removable = list(range(len(module)))
            keep = 1
        elif classes <= {"ResNetBottleNeckLayer", "ResNetBasicLayer"}:
            removable = [i for i, b in enumerate(module) if isinstance(b.shortcut, nn.Identity)]
            keep = 0 if len(removable) < len(module) else 1
        else:
            continue
        if len(removable) <= keep:
            continue
        blocks = tuple(f"{name}.{i}" for i in removable)
        out.append(UnitGroup(name, "blocks", len(blocks), 1, blocks, (), min_keep=keep))
    return out


def _resnet_streams(model: nn.Module) -> list[UnitGroup]:
    """The residual streams of an HF ResNet: (producers, norms, consumers) per stream."""
    base = getattr(model, "resnet", model)
    prefix = "resnet." if base is not model else ""
    stem = f"{prefix}embedder.embedder"
    streams: list[dict[str, list[str]]] = []
    cur = {
        "producers": [f"{stem}.convolution"],
        "norms": [f"{stem}.normalization"],
        "consumers": [],
    }
    for si, stage in enumerate(base.encoder.stages):
        for li, layer in enumerate(stage.layers):
            name = f"{prefix}encoder.stages.{si}.layers.{li}"
            last = len(layer.layer) - 1
            cur["consumers"].append(f"{name}.layer.0.convolution")
            if isinstance(getattr(layer.shortcut, "convolution", None), nn.Conv2d):
                cur["consumers"].append(f"{name}.shortcut.convolution")
                streams.append(cur)
                cur = {
                    "producers": [f"{name}.shortcut.convolution"],
                    "norms": [f"{name}.shortcut.normalization"],
                    "consumers": [],
                }
            cur["producers"].append(f"{name}.layer.{last}.convolution")
            cur["norms"].append(f"{name}.layer.{last}.normalization")
    head = getattr(model, "classifier", None)
    linear = [f"classifier.{i}" for i, m in enumerate(head or []) if isinstance(m, nn.Linear)]
    if len(linear) != 1:
        return []  # a backbone or an unknown head: what reads the last stream is not known
    cur["consumers"].append(linear[0])
    streams.append(cur)
    out = []
    for i, st in enumerate(streams):
        width = model.get_submodule(st["producers"][0]).out_channels
        out.append(
            UnitGroup(
                f"{prefix}stream.{i}", "stream", width, 1, tuple(st["producers"]),
                tuple(st["consumers"]), norms=tuple(st["norms"]),
            )
        )  # fmt: skip
    return out


def _resnet_block(name: str, module: nn.Module, cls: str) -> list[UnitGroup]:
    if cls not in ("ResNetBottleNeckLayer", "ResNetBasicLayer"):
        return []
    convs = list(module.layer)  # ResNetConvLayer: convolution + normalization + activation
    out = []
    for i in range(len(convs) - 1):  # every output but the last (that one is the stream)
        out.append(
            UnitGroup(
                f"{name}.layer.{i}",
                "channels",
                convs[i].convolution.out_channels,
                1,
                (f"{name}.layer.{i}.convolution",),
                (f"{name}.layer.{i + 1}.convolution",),
                norms=(f"{name}.layer.{i}.normalization",),
            )
        )
    return out
