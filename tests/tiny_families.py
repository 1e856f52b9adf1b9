"""Tiny configs, one per image-classification model type of transformers.

Every entry builds a random-init classifier small enough to score, prune, save
and reload in about a second on one CPU core, at ``IMAGE_SIZE`` pixels. The
family test (`test_families.py`) and the table script
(`scripts/family_table.py`) both use them.
"""

from __future__ import annotations

from typing import Any

import torch

IMAGE_SIZE = 32
NUM_LABELS = 3
# types whose total stride needs more pixels (MobileViTv2 unfolds 2x2 patches at stride 32)
IMAGE_SIZES = {"mobilevitv2": 64}

_VIT = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)
_SWIN = dict(
    image_size=IMAGE_SIZE,
    patch_size=4,
    embed_dim=16,
    depths=[2, 1],
    num_heads=[2, 2],
    window_size=4,
)
_CLIP_VISION = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
)
_CLIP_TEXT = dict(
    vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)
_BEIT = dict(_VIT, use_relative_position_bias=True, use_mean_pooling=True)

# model_type -> config keyword arguments (num_labels is added by `build`)
CONFIGS: dict[str, dict[str, Any]] = {
    "beit": _BEIT,
    "bit": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=4),
    "clip": dict(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION),
    "convnext": dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=IMAGE_SIZE),
    "convnextv2": dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=IMAGE_SIZE),
    "cvt": dict(
        patch_sizes=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[2, 1],
        embed_dim=[16, 32],
        num_heads=[1, 2],
        depth=[1, 2],  # transformers indexes stage s's drop-path rates at s
        mlp_ratio=[2.0, 2.0],
        attention_drop_rate=[0.0, 0.0],
        drop_rate=[0.0, 0.0],
        drop_path_rate=[0.0, 0.0],
        qkv_bias=[True, True],
        cls_token=[False, True],
        qkv_projection_method=["dw_bn", "dw_bn"],
        kernel_qkv=[3, 3],
        padding_kv=[1, 1],
        stride_kv=[2, 2],
        padding_q=[1, 1],
        stride_q=[1, 1],
    ),
    "data2vec-vision": _BEIT,
    "deit": _VIT,
    "dinat": dict(
        patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], kernel_size=3, dilations=None
    ),
    "dinov2": dict(_VIT, mlp_ratio=2, intermediate_size=None),
    "dinov2_with_registers": dict(_VIT, mlp_ratio=2, intermediate_size=None, num_register_tokens=2),
    "donut-swin": _SWIN,
    "efficientnet": dict(
        image_size=IMAGE_SIZE,
        width_coefficient=0.25,
        depth_coefficient=0.3,
        kernel_sizes=[3, 3],
        in_channels=[32, 16],
        out_channels=[16, 24],
        strides=[1, 2],
        num_block_repeats=[1, 1],
        expand_ratios=[1, 6],
        hidden_dim=320,  # round_filters(1280) at width 0.25: the top conv's width
        dropout_rate=0.0,
        drop_connect_rate=0.0,
    ),
    "focalnet": dict(
        image_size=IMAGE_SIZE,
        patch_size=4,
        embed_dim=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        focal_levels=[2, 2],
        focal_windows=[3, 3],
        drop_path_rate=0.0,
    ),
    "hgnet_v2": dict(
        embedding_size=8,
        depths=[1, 1],
        hidden_sizes=[16, 32],
        stem_channels=[3, 8, 8],
        stage_in_channels=[8, 16],
        stage_mid_channels=[8, 16],
        stage_out_channels=[16, 32],
        stage_num_blocks=[1, 1],
        stage_downsample=[False, True],
        stage_downsample_strides=[2, 2],
        stage_light_block=[False, True],
        stage_kernel_size=[3, 3],
        stage_numb_of_layers=[2, 2],
        out_features=["stage2"],
        out_indices=[2],
    ),
    "hiera": dict(
        embed_dim=8,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_size=[3, 3],
        patch_stride=[2, 2],
        patch_padding=[1, 1],
        mlp_ratio=2.0,
        depths=[1, 1],
        num_heads=[1, 2],
        num_query_pool=1,
        query_stride=[2, 2],
        masked_unit_size=[4, 4],
        masked_unit_attention=[True, False],
    ),
    "ijepa": _VIT,
    "imagegpt": dict(vocab_size=17, n_positions=64, n_embd=16, n_layer=1, n_head=2),
    "levit": dict(
        image_size=IMAGE_SIZE,
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        depths=[1, 1],
        key_dim=[8, 8],
        mlp_ratio=[2, 2],
        attention_ratio=[2, 2],
        patch_size=16,
        down_ops=[["Subsample", 8, 16 // 8, 4, 2, 2]],
    ),
    "metaclip_2": dict(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION),
    "mobilenet_v1": dict(image_size=IMAGE_SIZE, depth_multiplier=0.25, min_depth=4),
    "mobilenet_v2": dict(image_size=IMAGE_SIZE, depth_multiplier=0.25, min_depth=4),
    "mobilevit": dict(
        image_size=IMAGE_SIZE,
        patch_size=2,
        hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 8, 8, 8, 16, 32],
        num_attention_heads=2,
        mlp_ratio=2.0,
    ),
    "mobilevitv2": dict(
        image_size=64,
        width_multiplier=0.25,
        n_attn_blocks=[1, 1, 1],
        base_attn_unit_dims=[16, 16, 16],
    ),
    "perceiver": dict(
        num_latents=4,
        d_latents=16,
        d_model=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=1,
        num_cross_attention_heads=1,
        image_size=IMAGE_SIZE,
    ),
    "poolformer": dict(
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_encoder_blocks=2,
        patch_sizes=[7, 3],
        strides=[4, 2],
        padding=[2, 1],
    ),
    "pp_lcnet": dict(
        block_configs=[
            [[3, 8, 8, 1, False]],
            [[3, 8, 8, 2, False]],
            [[3, 8, 16, 2, False]],
            [[5, 16, 16, 2, False]],
            [[5, 16, 16, 2, True]],
        ],
        stem_channels=8,
        class_expand=32,
    ),
    "pvt": dict(
        image_size=IMAGE_SIZE,
        num_encoder_blocks=2,
        depths=[1, 1],
        sequence_reduction_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[4, 2],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
    ),
    "pvt_v2": dict(
        image_size=IMAGE_SIZE,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
    ),
    "regnet": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8),
    "resnet": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"),
    "segformer": dict(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
    ),
    "shieldgemma2": {},
    "siglip": dict(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION),
    "siglip2": dict(text_config=_CLIP_TEXT, vision_config=dict(_CLIP_VISION, num_patches=16)),
    "swiftformer": dict(
        image_size=IMAGE_SIZE,
        depths=[1, 1],
        embed_dims=[8, 16],
        downsamples=[True, True],
        mlp_ratio=2,
    ),
    "swin": _SWIN,
    "swinv2": _SWIN,
    "textnet": dict(
        stem_out_channels=8,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        conv_layer_kernel_sizes=[[[3, 3]], [[3, 3], [1, 3]]],
        conv_layer_strides=[[1], [2, 1]],
        hidden_sizes=[8, 8, 16],
        out_features=["stage2"],
        out_indices=[2],
    ),
    "timm_wrapper": {},
    "vit": _VIT,
    "vit_msn": _VIT,
}


def image_size(model_type: str) -> int:
    return IMAGE_SIZES.get(model_type, IMAGE_SIZE)


def config(model_type: str):
    from transformers import AutoConfig

    kwargs = dict(CONFIGS[model_type])
    # explicit labels: some configs (pvt) leave id2label unset for num_labels alone
    id2label = {i: f"class_{i}" for i in range(NUM_LABELS)}
    label2id = {v: k for k, v in id2label.items()}
    return AutoConfig.for_model(
        model_type, num_labels=NUM_LABELS, id2label=id2label, label2id=label2id, **kwargs
    )


def architectures(model_type: str) -> tuple[str, ...]:
    """The classifier classes transformers maps `model_type` to (first = default)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    return names if isinstance(names, tuple) else (names,)


def build(model_type: str, seed: int = 0, architecture: str | None = None):
    """The tiny random-init classifier of `model_type`, in eval mode."""
    import transformers

    torch.manual_seed(seed)
    cfg = config(model_type)
    name = architecture or architectures(model_type)[0]
    cfg.architectures = [name]  # so that `pipeline` and from_pretrained pick this class back
    return getattr(transformers, name)(cfg).eval()


def batches(model_type: str, n_batches: int = 2, batch_size: int = 4, seed: int = 0):
    size = image_size(model_type)
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]


def image_processor(model_type: str):
    """A plain resize/normalise processor at the tiny model's input size."""
    from transformers import ViTImageProcessor

    size = image_size(model_type)
    return ViTImageProcessor(size={"height": size, "width": size})


def check_scores(scores: dict[str, torch.Tensor]) -> list[str]:
    """Problems with a score dict: non-finite, negative, or all-zero tensors."""
    problems = []
    for name, s in scores.items():
        if not bool(torch.isfinite(s).all()):
            problems.append(f"{name}: non-finite scores")
        elif bool((s < 0).any()):
            problems.append(f"{name}: negative scores")
        elif float(s.sum()) == 0.0:
            problems.append(f"{name}: all-zero scores")
    return problems


def check_pruned(model, result, sparsity: float) -> list[str]:
    """Problems with a pruning result: inexact count, emptied tensors, unzeroed weights."""
    problems = []
    params = dict(model.named_parameters())
    total = sum(m.numel() for m in result.masks.values())
    pruned = sum(int((~m).sum()) for m in result.masks.values())
    if pruned != round(sparsity * total):
        problems.append(f"pruned {pruned} of {total} weights, expected {round(sparsity * total)}")
    for name, mask in result.masks.items():
        if not bool(mask.any()):
            problems.append(f"{name}: emptied")
        if bool((params[name].detach()[~mask] != 0).any()):
            problems.append(f"{name}: pruned weights are not zero")
    return problems


def check_reload(model, directory) -> list[str]:
    """Problems reloading `directory` with plain from_pretrained: any tensor not bit-exact."""
    from transformers import AutoModelForImageClassification

    loaded = AutoModelForImageClassification.from_pretrained(directory)
    if type(loaded) is not type(model):
        return [f"reloaded as {type(loaded).__name__}, not {type(model).__name__}"]
    problems = []
    want = model.state_dict()
    got = loaded.state_dict()
    if set(want) != set(got):
        problems.append(f"state_dict keys differ: {sorted(set(want) ^ set(got))[:3]}")
    for key in sorted(set(want) & set(got)):
        a, b = want[key], got[key]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.view(-1), b.view(-1)):
            problems.append(f"{key}: not bit-exact after reload")
        elif a.is_floating_point() and not torch.equal(
            a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)
        ):
            problems.append(f"{key}: bit pattern differs after reload")
    return problems


def check_pipeline(directory, model_type: str) -> list[str]:
    """Problems running pipeline("image-classification") on `directory`."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    size = image_size(model_type)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    out = pipeline("image-classification", model=str(directory), device="cpu")(image)
    if not out or not all("label" in o and "score" in o for o in out):
        return [f"pipeline returned {out!r}"]
    return []


SPARSITY = 0.9


def run_checks(model_type: str, workdir, pipeline: bool = True, rounds: int = 2) -> dict:
    """Score, prune at 90% global, save dense and bitmask, reload, (pipeline): problems per
    stage. A refused type is expected to raise HfPxError from `prune` before any work."""
    import copy
    from pathlib import Path

    from hf_px import compute_scores, prune, save_pruned

    workdir = Path(workdir)
    model = build(model_type)
    data = batches(model_type)
    out: dict[str, Any] = {}
    scores = compute_scores(model, data, method="px")
    out["tensors"] = len(scores)
    out["score"] = check_scores(scores)
    pruned = copy.deepcopy(model)
    result = prune(pruned, data, SPARSITY, method="px", rounds=rounds)
    out["prune"] = check_pruned(pruned, result, SPARSITY)
    proc = image_processor(model_type)
    for fmt in ("dense", "bitmask"):
        directory = save_pruned(
            pruned, workdir / fmt, result, format=fmt, image_processor=proc, card=False
        )
        out[f"reload_{fmt}"] = check_reload(pruned, directory)
    if pipeline:
        out["pipeline"] = check_pipeline(workdir / "bitmask", model_type)
    return out
