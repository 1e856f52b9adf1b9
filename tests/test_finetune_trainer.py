"""Fine-tuning through `transformers.Trainer` (`hf_px.training.trainer_finetune`, `hf-px
finetune`): pruned weights stay exactly 0.0 through every optimizer update — AdamW,
SGD with momentum and weight decay, gradient accumulation — also with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_resnet
from safetensors.torch import load_file

import hf_px
from hf_px.training import trainer_finetune

ROOT = Path(__file__).resolve().parent.parent


def _dataset(n: int = 48, size: int = 16):
    from datasets import Dataset
    from sklearn.datasets import load_digits

    d = load_digits(n_class=3)
    x = torch.tensor(d.images[:n], dtype=torch.float32) / 8.0 - 1.0
    x = torch.nn.functional.interpolate(x[:, None], size=(size, size), mode="bilinear")
    x = x.expand(-1, 3, -1, -1).contiguous()
    ds = Dataset.from_dict({"pixel_values": x.numpy(), "labels": d.target[:n].tolist()})
    return ds.with_format("torch"), x


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize(
    "optimizer, weight_decay, accumulation, lr",
    [("adamw", 0.1, 1, 3e-3), ("sgd", 0.01, 1, 0.05), ("adamw", 0.1, 3, 3e-3)],
)
def test_trainer_keeps_pruned_weights_exactly_zero(optimizer, weight_decay, accumulation, lr):
    ds, x = _dataset()
    model = tiny_resnet(num_labels=3)
    result = hf_px.prune(model, [{"pixel_values": x[:16]}], 0.8, method="magnitude")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = trainer_finetune(
        model, result, ds, epochs=2, learning_rate=lr, batch_size=8,
        gradient_accumulation_steps=accumulation, weight_decay=weight_decay,
        optimizer=optimizer, quiet=True,
    )  # fmt: skip
    assert stats["steps"] == 2 * -(-6 // accumulation)  # 6 batches an epoch
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        pruned = params[n].detach()[~m]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not pruned.signbit().any(), n
        assert not torch.equal(params[n].detach()[m], before[n][m]), n  # kept ones trained
    opt = stats_optimizer(stats)
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    if optimizer == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9
    for n, m in result.masks.items():  # no optimizer state at pruned coordinates
        for v in opt.state[params[n]].values():
            if isinstance(v, torch.Tensor) and v.shape == m.shape:
                assert float(v[~m].abs().max()) == 0.0, n
    assert stats["pruned_weights_nonzero"] == 0 and stats["eval_after"] is None


def stats_optimizer(stats):
    opt = stats["trainer"].optimizer
    return getattr(opt, "optimizer", opt)  # accelerate wraps it


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The shipped model's training digits and held-out digits, as one DatasetDict."""
    from datasets import DatasetDict

    from hf_px.calibration import digits_dataset

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_digits_model import split_indices
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    ds = digits_dataset()
    train, test = split_indices(ds["label"])
    path = tmp_path_factory.mktemp("digits") / "digits"
    DatasetDict(
        {"train": ds.select(train.tolist()), "test": ds.select(test.tolist())}
    ).save_to_disk(str(path))
    return path


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "HF_"))}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
@pytest.mark.ci
def test_cli_prune_then_finetune_recovers_and_rewrites_the_card(digits, tmp_path, cli):
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    common = ["--eval-split", "test", "--quiet", "--json"]
    proc = cli("prune", "px-digits-resnet", "--sparsity", "0.9", "--method", "synflow",
               "--rounds", "10", "--eval", "--eval-dataset", str(digits),
               "--output-dir", str(pruned), *common, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("finetune", str(pruned), "--dataset", str(digits), "--epochs", "2",
               "--output-dir", str(tuned), *common, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    ev = s["evaluation"]
    assert ev["split"] == "test" and ev["num_samples"] == 450
    assert ev["accuracy_dense"] > 0.95
    assert ev["accuracy_finetuned"] > ev["accuracy_pruned"] + 0.05  # fine-tuning recovers
    assert s["pruned_weights_nonzero"] == 0 and s["recipe"]["trainer"] == "transformers.Trainer"
    saved = hf_px.load_pruning(pruned)
    w = load_file(str(tuned / "model.safetensors"))
    for n, m in saved.masks.items():
        assert float(w[n][~m].abs().max()) == 0.0, n
    card = (tuned / "README.md").read_text()
    assert "| Before pruning | After pruning | After fine-tuning |" in card
    assert "## Fine-tuning" in card and "split `test`, 450 images" in card
    assert "1×3×32×32 input" in card  # the shipped processor's size, not 224


@pytest.mark.slow
@pytest.mark.ci
def test_finetune_under_torchrun_with_two_processes(digits, tmp_path, cli):
    """`torchrun --nproc_per_node 2 -m hf_px finetune`: Trainer runs data parallel on CPU,
    one checkpoint is written, every pruned weight is still 0."""
    env = _env(tmp_path)
    pruned = tmp_path / "pruned"
    prune = ["prune", "px-digits-resnet", "--sparsity", "0.9", "--method", "magnitude",
             "--output-dir", str(pruned), "--quiet"]  # fmt: skip
    assert cli(*prune, cwd=tmp_path).returncode == 0  # setup: needs no process of its own
    args = [
        "finetune",
        str(pruned),
        "--dataset",
        str(digits),
        "--num-samples",
        "256",
        "--batch-size",
        "16",
        "--gradient-accumulation-steps",
        "2",
        "--quiet",
        "--json",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    runs = {}
    for name in ("one", "two"):
        out = ["--output-dir", str(tmp_path / name)]
        if name == "one":  # the one-process reference runs here; the two-process run launches
            proc = cli(*args, *out, cwd=tmp_path)
        else:
            proc = subprocess.run([*torchrun, "2", "-m", "hf_px", *args, *out], env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout)  # one JSON object: only the main process prints
        w = load_file(str(tmp_path / name / "model.safetensors"))
        for n, m in hf_px.load_pruning(pruned).masks.items():
            assert float(w[n][~m].abs().max()) == 0.0, n
    assert runs["one"]["num_processes"] == 1 and runs["two"]["num_processes"] == 2
    # 256 images, 16 a process, 2 accumulated: 8 optimizer steps on one process, 4 on two
    assert runs["one"]["steps"] == 8 and runs["two"]["steps"] == 4
    assert runs["two"]["recipe"]["num_processes"] == 2
