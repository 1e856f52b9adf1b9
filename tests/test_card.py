"""Model cards: metadata the Hub indexes, the body, the density chart, no local leaks."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    CHILD_THREADS,
    PixelNet,
    make_batches,
    pruned,
    tiny_convnext,
    tiny_resnet,
    tiny_vit,
)
from huggingface_hub import ModelCard
from PIL import Image
from torch import nn

import hf_px
from hf_px.card import CHART_NAME, count_macs, template_path, write_card
from hf_px.errors import HfPxError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _leaks(text: str, *paths: Path) -> list[str]:
    found = [str(p) for p in paths if str(p) in text]
    home = str(Path.home())
    if home not in ("/", "") and home in text:
        found.append(home)
    user = getpass.getuser()
    if re.search(rf"\b{re.escape(user)}\b", text):
        found.append(f"user {user}")
    return found


@pytest.fixture(scope="module")
def vit_card(tmp_path_factory):
    model, result = pruned()
    out = tmp_path_factory.mktemp("card") / "vit-px"
    path = write_card(
        out,
        model=model,
        result=result,
        source={"model_id": "google/vit-base-patch16-224", "license": "apache-2.0"},
        calibration={"dataset": "ylecun/mnist", "split": "train", "num_samples": 8},
        evaluation={
            "dataset": "ylecun/mnist",
            "split": "test",
            "accuracy_before": 0.625,
            "accuracy_after": 0.5,
            "loss_before": 1.0,
            "loss_after": 1.25,
            "num_samples": 64,
        },
    )
    return model, result, out, path


def test_card_metadata_is_what_the_hub_indexes(vit_card):
    _, result, out, path = vit_card
    assert path == out / "README.md"
    data = ModelCard.load(path).data
    assert data.base_model == "google/vit-base-patch16-224"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert {"pruned", "sparse", "px", "magnitude", "vit"} <= set(data.tags)
    assert data.datasets == ["ylecun/mnist"]
    assert data.license == "apache-2.0"
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == 0.5
    assert results["accuracy"].dataset_type == "ylecun/mnist"
    assert results["accuracy"].dataset_split == "test"
    assert results["loss"].metric_value == 1.25
    assert data.model_name == f"vit-base-patch16-224-magnitude-sparse{round(100 * result.sparsity)}"


def test_card_body_reports_run_layers_compute_and_citation(vit_card):
    model, result, out, path = vit_card
    text = path.read_text()
    body = text.split("---", 2)[2]
    assert "global magnitude" in body and "(`magnitude`)" in body
    assert "| Sparsity requested | 90.00% of the prunable weights |" in body
    achieved = f"{100 * result.sparsity:.2f}% ({result.num_pruned:,} of {result.num_prunable:,}"
    assert achieved in body
    assert "| Rounds | 1 (exponential schedule" in body
    assert "| Scope | global" in body
    assert "ylecun/mnist (split `train`), 8 images" in body
    # one table row per pruned tensor, with its exact kept count
    for name, mask in result.masks.items():
        kept = int(mask.sum())
        density = 100 * kept / mask.numel()
        assert (
            f"| `{name}` | {'×'.join(map(str, mask.shape))} | {mask.numel():,} | {kept:,} | {density:.2f}% |"
            in body
        )
    # parameters: all vs non-zero after pruning
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert f"| Parameters (all) | {total:,} | {total - result.num_pruned:,} non-zero" in body
    assert nonzero <= total - result.num_pruned  # unpruned weights may be 0 too, never more
    macs = count_macs(model, result.masks)
    assert macs["remaining"] < 0.2 * macs["dense"]  # ~90% of Conv/Linear weights gone
    assert "Multiply-accumulates per image" in body
    assert "on ylecun/mnist, split `test`, 64 images" in body
    assert "| Before pruning | After pruning |" in body
    assert "| 62.50% (1.0000) | 50.00% (1.2500) |" in body
    assert "not fine-tuned" in body and "## Fine-tuning" not in body
    assert (
        "Finding Lottery Tickets in Vision Models via Data-driven Spectral Foresight Pruning"
        in body
    )
    assert "Iurada, Leonardo and Ciccone, Marco and Tommasi, Tatiana" in body
    assert "CVPR" in body and "2024" in body
    assert "import hf_px" not in body  # dense: plain transformers


def test_density_chart_is_a_png_embedded_in_the_card(vit_card):
    _, _, out, path = vit_card
    chart = out / CHART_NAME
    assert f"]({CHART_NAME})" in path.read_text()
    with Image.open(chart) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert width >= 500 and height >= 200
        # not a blank canvas: the bars are drawn in the chart colour (#3b75af)
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 16)}
        assert (0x3B, 0x75, 0xAF) in colours
    assert not list(out.glob(".*.tmp"))


def test_template_is_shipped_and_identical_to_source():
    source = REPO_ROOT / "model_cards" / "pruned_model_card.md"
    packaged = REPO_ROOT / "hf_px" / "card" / "templates" / "pruned_model_card.md"
    assert packaged.read_bytes() == source.read_bytes(), (
        "copy model_cards/pruned_model_card.md to hf_px/card/templates/"
    )
    assert template_path() == packaged.resolve()
    text = source.read_text()
    assert text.startswith("---\n{{ card_data }}\n---")
    for section in ("## What was done", "## Per-layer density", "## How to load", "## Citation"):
        assert section in text


@pytest.mark.parametrize("storage", ["dense", "bitmask"])
def test_card_snippet_runs_as_written(tmp_path, storage):
    """The card's snippet, run as written in a fresh interpreter in the folder, loads it
    (dense: without hf_px ever imported; bitmask: `import hf_px` comes first)."""
    model, result = pruned()
    processor = None
    if storage == "dense":  # with an image processor saved, the card points to it
        from transformers import ViTImageProcessor

        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    out = hf_px.save_pruned(
        model, tmp_path / "ckpt", result, format=storage, image_processor=processor
    )
    text = (out / "README.md").read_text()
    if processor is not None:
        assert "The image processor is included" in text
        assert "AutoImageProcessor.from_pretrained(model_id)" in text
    else:
        assert "Prepare real images with the base model's image processor" in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'model_id = "."' in snippet
    lines = snippet.splitlines()
    load_line = next(i for i, line in enumerate(lines) if "from_pretrained" in line)
    if storage == "bitmask":
        assert (
            lines.index("import hf_px  # registers the bitmask format with transformers")
            < load_line
        )
        check = ""
    else:
        assert "import hf_px" not in snippet
        check = "import sys; assert 'hf_px' not in sys.modules, 'hf_px was imported'\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS=CHILD_THREADS)
    proc = subprocess.run(
        [sys.executable, "-c", snippet + check], cwd=out, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "torch.Size([1, 3])"


def test_bitmask_card_names_the_repo_when_known(tmp_path):
    model, result = pruned()
    path = write_card(tmp_path, model=model, result=result, format="bitmask", repo_id="me/vit-px")
    text = path.read_text()
    assert 'model_id = "me/vit-px"' in text
    assert "pip install hf-px" in text and "`bitmask` format" in text


def test_local_source_keeps_hub_origin_and_leaks_no_path(tmp_path):
    """A local source: base_model only from a Hub id its config.json records; never a path."""
    src = tmp_path / "sources" / "my-vit"
    tiny_vit().save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config["_name_or_path"] = "google/vit-base-patch16-224-in21k"  # as transformers 4 wrote it
    (src / "config.json").write_text(json.dumps(config))
    (src / "README.md").write_text("---\nlicense: mit\n---\n# my vit\n")
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(src).eval()
    assert model.config._name_or_path == str(src)  # the absolute path is in memory ...
    result = hf_px.prune(model, make_batches(), 0.5, method="magnitude", rounds=1)
    out = tmp_path / "out"
    calib_dir = tmp_path / "my-images"
    calib_dir.mkdir()
    path = write_card(
        out,
        model=model,
        result=result,
        source={"model_id": None, "local_path": str(src)},
        calibration={"dataset": str(calib_dir), "num_samples": 8},
    )
    text = path.read_text()
    data = ModelCard.load(path).data
    assert data.base_model == "google/vit-base-patch16-224-in21k"
    assert data.license == "mit"  # carried over from the source card
    assert data.datasets is None  # a local folder is not a Hub dataset
    assert "local folder `my-images`" in text
    # ... but no absolute path, home dir or user name reaches any written file
    for f in out.iterdir():
        content = f.read_bytes().decode("latin-1")
        assert _leaks(content, tmp_path, src, calib_dir) == [], f.name

    # without a recorded Hub id, base_model is left out rather than guessed
    config.pop("_name_or_path")
    (src / "config.json").write_text(json.dumps(config))
    path = write_card(out, model=model, result=result, source={"local_path": str(src)})
    assert ModelCard.load(path).data.base_model is None
    assert "base_model" not in path.read_text()


def test_macs_match_the_hand_count():
    torch.manual_seed(0)
    net = PixelNet(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 224 * 224, 5),
    )
    masks = {
        "body.0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool),
        "body.2.weight": torch.zeros(4, 2, 3, 3, dtype=torch.bool),
        "body.4.weight": torch.ones(5, 4 * 224 * 224, dtype=torch.bool),
    }
    masks["body.4.weight"][:, : 224 * 224] = False  # density 3/4
    conv1 = 224 * 224 * 4 * 3 * 9
    conv2 = 224 * 224 * 4 * 2 * 9  # groups=2: 2 input channels per output
    linear = 4 * 224 * 224 * 5
    macs = count_macs(net, masks)
    assert macs["per_layer"] == {"body.0": conv1, "body.2": conv2, "body.4": linear}
    assert macs["dense"] == conv1 + conv2 + linear
    assert macs["remaining"] == conv1 + 0 + linear * 3 // 4


@pytest.mark.parametrize("factory, label", [(tiny_resnet, "ResNet"), (tiny_convnext, "ConvNext")])
def test_cnn_cards(tmp_path, factory, label):
    model, result = pruned(factory, 0.8)
    path = write_card(tmp_path, model=model, result=result)
    text = path.read_text()
    assert f"A {label} image classifier" in text
    assert "Multiply-accumulates per image" in text
    assert ModelCard.load(path).data.tags[:3] == ["pruned", "sparse", "px"]
    assert "model-index" not in text and "datasets" not in text.split("---")[1]


def test_bad_format_is_refused(tmp_path):
    model, result = pruned()
    with pytest.raises(HfPxError, match="choose 'dense' or 'bitmask'"):
        write_card(tmp_path, model=model, result=result, format="zip")
    assert not any(tmp_path.iterdir())
