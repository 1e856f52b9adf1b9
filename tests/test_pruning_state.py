"""Masks as saved state: `save_pruned` writes them, `load_pruning` reads them back
(from a directory or the Hub), and fine-tuning uses them rather than the zeros."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import make_batches, tiny_resnet, tiny_vit

import hf_px
from hf_px.checkpoint import MASKS_NAME, inspect_checkpoint
from hf_px.checkpoint.state import decode_masks, encode_masks
from hf_px.errors import HfPxError


@pytest.mark.parametrize("density", [0.0, 1e-3, 0.1, 0.5, 0.51, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 5), (16, 8, 3, 3)])
def test_mask_codec_round_trips_bit_for_bit(density, shape):
    g = torch.Generator().manual_seed(hash((density, shape)) % 2**31)
    mask = torch.rand(shape, generator=g) < density
    encoded = encode_masks({"a.weight": mask})
    back = decode_masks(encoded)
    assert list(back) == ["a.weight"]
    assert back["a.weight"].dtype == torch.bool and torch.equal(back["a.weight"], mask)


def test_masks_cost_a_few_percent_of_the_weights():
    g = torch.Generator().manual_seed(0)
    masks = {
        f"l{i}.weight": torch.rand(256, 256, generator=g) < d
        for i, d in enumerate((0.1, 0.5, 0.95))
    }
    nbytes = {k: t.numel() * t.element_size() for k, t in encode_masks(masks).items()}
    fp32 = 256 * 256 * 4
    # Elias-Fano for 10% kept (~5.3 bits a kept weight); a bitmask at 50%; at 95% the
    # pruned 5% are listed instead of the kept
    assert nbytes["l0.weight"] < 0.021 * fp32
    assert nbytes["l1.weight"] < 0.032 * fp32
    assert nbytes["l2.weight:pruned"] < 0.013 * fp32


@pytest.fixture(scope="module")
def pruned():
    model = tiny_resnet()
    result = hf_px.prune(model, make_batches(), 0.9, method="magnitude")
    # a kept weight that is exactly 0: the zeros no longer tell the masks
    name = max(result.masks, key=lambda n: float(result.masks[n].float().mean()))
    kept = result.masks[name].reshape(-1).nonzero()[0, 0]
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[kept] = 0.0
    return model, result, name, int(kept)


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_save_then_load_pruning_gives_the_masks_config_and_report(pruned, tmp_path, fmt):
    model, result, name, kept = pruned
    out = hf_px.save_pruned(model, tmp_path / fmt, result, format=fmt)
    # a bitmask index codes its mask: the positions are stored once
    assert (out / MASKS_NAME).is_file() == (fmt == "dense")
    loaded = hf_px.load_pruning(out)
    assert isinstance(loaded, hf_px.PruningResult)
    assert list(loaded.masks) == list(result.masks)
    for n, m in result.masks.items():
        assert torch.equal(loaded.masks[n], m), n
    assert loaded.masks[name].reshape(-1)[kept]  # kept, although its weight is 0
    assert loaded.config == result.config
    assert loaded.report() == json.loads((out / "sparsity_report.json").read_text())
    if fmt == "dense":
        weights = sum(f.stat().st_size for f in out.glob("model*.safetensors"))
        assert (out / MASKS_NAME).stat().st_size < 0.25 * weights  # headers dominate here


def test_a_kept_zero_weight_survives_a_bitmask_round_trip(pruned, tmp_path):
    """The index lists kept positions, not non-zero ones: the zero is stored, so both the
    mask and the weights come back exactly, and inspect counts the zero."""
    from transformers import AutoModelForImageClassification

    model, result, name, kept = pruned
    out = hf_px.save_pruned(model, tmp_path / "b", result, format="bitmask")
    assert torch.equal(hf_px.load_pruning(out).masks[name], result.masks[name])
    back = AutoModelForImageClassification.from_pretrained(out)
    for n, p in model.state_dict().items():
        assert torch.equal(back.state_dict()[n], p), n
    info = inspect_checkpoint(out)["tensors"][name]
    assert info["zeros"] == int((~result.masks[name]).sum()) + 1


def test_bitmask_masks_of_renamed_keys_come_from_the_indices(tmp_path):
    """transformers stores ViT weights under their original names (`...attention.query`
    for `...q_proj`): the indices still code the masks, and no masks file is written."""
    model = tiny_vit()
    result = hf_px.prune(model, make_batches(), 0.9, method="magnitude")
    out = hf_px.save_pruned(model, tmp_path / "b", result, format="bitmask")
    assert not (out / MASKS_NAME).exists()
    loaded = hf_px.load_pruning(out)
    assert list(loaded.masks) == list(result.masks)
    for n, m in result.masks.items():
        assert torch.equal(loaded.masks[n], m), n


def test_a_mask_the_weights_cannot_code_goes_to_the_masks_file(pruned, tmp_path):
    """A -0.0 where the mask prunes must stay bit-exact, so that weight is coded by its
    non-zero bits and its mask alone goes to the masks file; the others stay in the index."""
    model, result, name, kept = pruned
    other = next(n for n in result.masks if n != name)
    param = dict(model.named_parameters())[other]
    at = (~result.masks[other]).reshape(-1).nonzero()[0, 0]
    with torch.no_grad():
        param.view(-1)[at] = -0.0
    try:
        out = hf_px.save_pruned(model, tmp_path / "b", result, format="bitmask")
    finally:
        with torch.no_grad():
            param.view(-1)[at] = 0.0
    from hf_px.checkpoint.state import read_masks

    assert list(read_masks(out / MASKS_NAME)) == [other]
    loaded = hf_px.load_pruning(out)
    assert list(loaded.masks) == list(result.masks)
    for n, m in result.masks.items():
        assert torch.equal(loaded.masks[n], m), n


def _strip_masks_from_indices(out):
    """Rewrite a bitmask checkpoint as an older hf-px wrote it: indices of the non-zero
    elements, no masks named in the metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hf_px.checkpoint import bitmask
    from hf_px.checkpoint.constants import INDEX_SUFFIX, MASKS_METADATA

    for path in out.glob("model*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key in [k for k in tensors if k + INDEX_SUFFIX in tensors]:
            dense = bitmask.decode(tensors[key], tensors[key + INDEX_SUFFIX])
            tensors[key], tensors[key + INDEX_SUFFIX] = bitmask.encode(dense)
        metadata.pop(MASKS_METADATA)
        save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_old_checkpoint_without_masks_falls_back_to_zeros_with_a_warning(
    pruned, tmp_path, fmt, caplog
):
    model, result, name, kept = pruned
    out = hf_px.save_pruned(model, tmp_path / fmt, result, format=fmt)
    if fmt == "dense":
        (out / MASKS_NAME).unlink()
    else:
        _strip_masks_from_indices(out)
    zeros = {n: p.detach() != 0 for n, p in model.named_parameters() if n in result.masks}
    for kwargs in ({}, {"model": model}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_px"):
            loaded = hf_px.load_pruning(out, **kwargs)
        assert MASKS_NAME in caplog.text and "exactly 0" in caplog.text
        assert loaded.masks.keys() == zeros.keys()
        for n, m in zeros.items():
            assert torch.equal(loaded.masks[n], m), n
        assert not loaded.masks[name].reshape(-1)[kept]  # what the fallback cannot know


def test_load_pruning_refuses_what_is_not_a_pruned_checkpoint(tmp_path):
    with pytest.raises(HfPxError, match="pruning_config.json"):
        hf_px.load_pruning(tmp_path)
    with pytest.raises(HfPxError, match="not a directory or a Hub model id"):
        hf_px.load_pruning(tmp_path / "missing")
    with pytest.raises(HfPxError, match="local cache"):
        hf_px.load_pruning("nobody/never-pushed")  # HF_HUB_OFFLINE=1 in the tests


def test_cli_finetune_trains_a_kept_zero_weight(pruned, tmp_path, capsys):
    """`hf-px finetune` reads the saved masks: a kept weight that was exactly 0 trains."""
    from hf_px.cli.main import run

    model, result, name, kept = pruned
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    src = hf_px.save_pruned(model, tmp_path / "src", result, image_processor=processor)
    # the shipped digits are 8x8; this tiny 3-class ResNet sees them as 3-class data
    code = run(
        [
            "finetune",
            str(src),
            "--dataset",
            str(_three_class_folder(tmp_path)),
            "--lr",
            "1e-2",
            "--output-dir",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    tuned = hf_px.load_pruning(tmp_path / "out")
    for n, m in result.masks.items():
        assert torch.equal(tuned.masks[n], m), n
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert float(w[name].reshape(-1)[kept]) != 0.0  # it trained
    for n, m in result.masks.items():
        assert float(w[n][~m].abs().max()) == 0.0


def _three_class_folder(tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits(n_class=3)
    root = tmp_path / "three"
    for i in range(24):
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.rint(d.images[i] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(grey, mode="L").convert("RGB").save(folder / f"{i}.png")
    return root


LOAD_PRUNING = """
import json, sys
import hf_px
result = hf_px.load_pruning(sys.argv[1])
config = hf_px.PruningConfig.from_pretrained(sys.argv[1])
print(json.dumps({"masks": {n: m.reshape(-1).tolist() for n, m in result.masks.items()},
                  "config": result.config.to_dict(), "report": result.report(),
                  "from_pretrained": config.to_dict()}))
"""


@pytest.mark.slow
@pytest.mark.ci
def test_load_pruning_from_the_hub(tmp_path):
    """push the folder to a local Hub server, then `load_pruning(repo_id)` and
    `PruningConfig.from_pretrained(repo_id)` in a fresh process and cache: masks,
    config and report as saved."""
    from hub_server import HubServer
    from test_hub import CLI, TOKEN, USER, _run

    model = tiny_vit()
    result = hf_px.prune(model, make_batches(), 0.9, method="magnitude")
    folder = hf_px.save_pruned(model, tmp_path / "ckpt", result, format="bitmask")
    server = HubServer().start()
    server.state.add_user(USER, TOKEN)
    try:
        repo = f"{USER}/tiny-vit-masks"
        proc = _run(
            CLI, "push", str(folder), repo, "--quiet",
            hub_url=server.url, home=tmp_path / "push-home", token=TOKEN, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        proc = _run(
            LOAD_PRUNING, repo,
            hub_url=server.url, home=tmp_path / "fresh", token=None, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.stop()
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(got["masks"]) == list(result.masks)
    for n, m in result.masks.items():
        assert got["masks"][n] == m.reshape(-1).tolist(), n
    assert got["config"] == json.loads(result.config.to_json()) == got["from_pretrained"]
    assert got["report"] == json.loads(json.dumps(result.report()))
    # a bitmask checkpoint's masks are its weights' indices: no masks file to fetch
    snap = list((tmp_path / "fresh").glob("hub/models--alice--tiny-vit-masks/snapshots/*"))
    assert snap and (snap[0] / "model.safetensors").exists()
    assert not (snap[0] / MASKS_NAME).exists()
