"""Models stored in float16/bfloat16: scored, recalibrated, evaluated and trained in
float32, written back in their own dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_batches, tiny_resnet, tiny_vit
from safetensors import safe_open

import hf_px
from hf_px.cli.main import run
from hf_px.cli.resolve import SHIPPED

HALF = [torch.float16, torch.bfloat16]


def _saved_dtypes(directory: Path) -> set[torch.dtype]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}


def _half_digits(tmp_path: Path, dtype: torch.dtype) -> Path:
    """The shipped digits ResNet written by `save_pretrained` in `dtype`."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    src = SHIPPED["px-digits-resnet"]
    out = tmp_path / f"digits-{str(dtype).split('.')[-1]}"
    AutoModelForImageClassification.from_pretrained(src).to(dtype).save_pretrained(out)
    AutoImageProcessor.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("builder", [tiny_resnet, tiny_vit], ids=["resnet", "vit"])
def test_prune_scores_in_float32_and_keeps_the_models_dtype(builder, dtype):
    model = builder().to(dtype)
    result = hf_px.prune(model, make_batches(), 0.5, method="px", rounds=2)
    assert {p.dtype for p in model.parameters()} == {dtype}
    for name, p in model.named_parameters():
        if name in result.masks:  # pruned weights are zero, kept ones are not
            assert bool((p[~result.masks[name]] == 0).all())
    assert result.num_pruned == round(0.5 * result.num_prunable)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_compute_scores_of_a_half_model_are_finite_and_leave_it_untouched(dtype):
    model = tiny_vit().to(dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for method in ("px", "snip", "synflow"):
        scores = hf_px.compute_scores(model, make_batches(), method=method)
        assert all(bool(torch.isfinite(s.float()).all()) for s in scores.values()), method
    for n, p in model.named_parameters():
        assert p.dtype == dtype and torch.equal(p, before[n])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_evaluate_and_finetune_take_a_half_model(dtype):
    from hf_px.evaluation import evaluate
    from hf_px.training import finetune

    model = tiny_resnet().to(dtype)
    result = hf_px.prune(model, make_batches(), 0.5, method="magnitude")
    assert 0.0 <= evaluate(model, make_batches())["accuracy"] <= 1.0
    stats = finetune(model, result, make_batches(), epochs=1, lr=1e-3)
    assert stats["pruned_weights_nonzero"] == 0
    assert {p.dtype for p in model.parameters()} == {dtype}


@pytest.mark.parametrize(
    ("dtype", "method"),
    [
        (torch.float16, "magnitude"),
        (torch.bfloat16, "px"),
        (torch.float16, "snip"),
        pytest.param(torch.float16, "px", marks=pytest.mark.slow),  # bf16 px covers the path
    ],
    ids=["fp16-magnitude", "bf16-px", "fp16-snip", "fp16-px"],
)
def test_cli_prunes_and_evaluates_a_half_checkpoint_in_its_dtype(tmp_path, capsys, dtype, method):
    src = _half_digits(tmp_path, dtype)
    out = tmp_path / "out"
    argv = ["prune", str(src), "--sparsity", "0.9", "--method", method, "--rounds", "2"]
    argv += [
        "--dataset",
        "sklearn-digits",
        "--examples-per-class",
        "2",
        "--output-dir",
        str(out),
        "--json",
        "--quiet",
    ]
    assert run(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert _saved_dtypes(out) == {dtype}
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert run(["eval", str(out), "--dataset", "sklearn-digits", "--num-samples", "64",
                "--json", "--quiet"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["num_samples"] == 64


def test_cli_finetune_trains_a_half_checkpoint_and_saves_it_in_its_dtype(tmp_path, capsys):
    from hf_px import load_pruning

    src, pruned, tuned = _half_digits(tmp_path, torch.float16), tmp_path / "p", tmp_path / "ft"
    data = ["--dataset", "sklearn-digits", "--num-samples", "64", "--quiet"]
    assert run(["prune", str(src), "--sparsity", "0.9", "--method", "magnitude",
                "--output-dir", str(pruned), *data]) == 0  # fmt: skip
    assert run(["finetune", str(pruned), "--epochs", "1", "--learning-rate", "1e-3",
                "--output-dir", str(tuned), *data]) == 0, capsys.readouterr().err  # fmt: skip
    assert _saved_dtypes(tuned) == {torch.float16}
    saved = load_pruning(tuned)
    with safe_open(str(tuned / "model.safetensors"), "pt") as f:
        for name, mask in saved.masks.items():
            assert bool((f.get_tensor(name)[~mask] == 0).all()), name
    assert saved.sparsity == pytest.approx(0.9, abs=1e-4)


def test_float32_compute_restores_dtypes_identity_and_sharing():
    from torch import nn

    from hf_px.utils import float32_compute

    shared = torch.ones(3, dtype=torch.float16)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 3)).to(torch.bfloat16)
    net[0].register_buffer("s", shared)
    net[2].register_buffer("s", shared)
    param = net[0].weight
    with float32_compute(net):
        assert {t.dtype for t in [*net.parameters(), *net.buffers()] if t.is_floating_point()} == {
            torch.float32
        }
        assert net[0].s is net[2].s
    assert net[0].weight is param and param.dtype == torch.bfloat16
    assert net[0].s is net[2].s and net[0].s.dtype == torch.float16
    assert net[1].running_mean.dtype == torch.bfloat16
