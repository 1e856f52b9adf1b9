"""`hf-px finetune DIR`: a pruned checkpoint trained with its masks fixed, saved again."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_px.cli.main import run


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "pruned"
    code = run(
        [
            "prune",
            "px-digits-resnet",
            "--sparsity",
            "0.7",
            "--method",
            "magnitude",
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def _zeros(directory):
    w = load_file(str(directory / "model.safetensors"))
    return {k: v == 0 for k, v in w.items() if v.dim() == 4 or (v.dim() == 2 and "classifier" in k)}


def test_finetune_keeps_masks_and_writes_checkpoint(pruned_dir, tmp_path, capsys):
    out = tmp_path / "tuned"
    code = run(
        [
            "finetune",
            str(pruned_dir),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--weight-decay",
            "0.05",
            "--num-samples",
            "96",
            "--batch-size",
            "32",
            "--output-dir",
            str(out),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["pruned_weights_nonzero"] == 0
    assert summary["sparsity"] == pytest.approx(0.7, abs=1e-4)
    before, after = _zeros(pruned_dir), _zeros(out)
    assert before.keys() == after.keys() and before
    for k in before:  # every pruned weight still 0; training changed the kept ones
        assert torch.equal(before[k] & after[k], before[k])
    w0, w1 = (
        load_file(str(pruned_dir / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert any(not torch.equal(w0[k], w1[k]) for k in before)
    cfg = json.loads((out / "pruning_config.json").read_text())
    assert cfg["method"] == "magnitude" and cfg["calibration"]["finetune"]["epochs"] == 2
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.7, abs=1e-4)


def test_the_calibration_record_survives_the_finetune(pruned_dir, tmp_path):
    # the prune records its calibration data in pruning_config.json, so the card that
    # `hf-px finetune` writes again still names it (it said "user-supplied batches")
    cfg = json.loads((pruned_dir / "pruning_config.json").read_text())
    calib = {k: v for k, v in cfg["calibration"].items() if k != "finetune"}
    assert calib == {
        "dataset": "sklearn-digits",
        "split": "train",
        "num_samples": 100,
        "batch_size": 32,
        "seed": 0,
        "batchnorm_recalibrated": True,
    }
    line = "| Calibration data | sklearn-digits (split `train`), 100 images |"
    assert line in (pruned_dir / "README.md").read_text()
    out = tmp_path / "tuned"
    args = ["finetune", str(pruned_dir), "--epochs", "1", "--num-samples", "32"]
    assert run([*args, "--output-dir", str(out), "--quiet"]) == 0
    tuned = json.loads((out / "pruning_config.json").read_text())["calibration"]
    assert {k: v for k, v in tuned.items() if k != "finetune"} == calib
    assert tuned["finetune"]["num_samples"] == 32
    assert line in (out / "README.md").read_text()


def test_finetune_refuses_unpruned_dir_and_bad_args(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run(["finetune", str(plain), "--quiet"]) == 2
    assert "pruning_config.json" in capsys.readouterr().err
    assert run(["finetune", str(plain), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
