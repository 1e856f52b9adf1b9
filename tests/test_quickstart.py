"""`make quickstart`'s script, run as CI runs it: offline, a fresh process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.ci
def test_quickstart_prunes_finetunes_saves_and_reloads(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ACCELERATE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(ROOT))
    out = tmp_path / "qs" / "px-digits-resnet-px90"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "quickstart.py"),
            "--output-dir",
            str(out),
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # a fresh 2-core machine needs ~3 min; a hang still ends
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the summary lines, then one JSON object
    text = proc.stdout
    assert "PX pruned 90.00%" in text and "reloaded in a fresh process" in text
    assert "dense" in text and "-> pruned" in text and "-> fine-tuned" in text
    result = json.loads(text[text.index("{") :])
    assert result["method"] == "px" and result["requested_sparsity"] == 0.9
    assert result["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result["reloaded_sparsity"] == pytest.approx(result["achieved_sparsity"], abs=1e-9)
    assert result["calibration_images"] == 100  # the paper's 10 per class
    assert result["eval_images"] == 450  # the held-out digits
    assert result["finetune_images"] == 1347  # the shipped model's own training digits
    assert result["accuracy_dense"] > 0.95
    assert 0.0 <= result["accuracy_pruned"] <= 1.0
    # fine-tuning with the masks fixed recovers most of the dense accuracy
    assert result["accuracy_finetuned"] > max(result["accuracy_pruned"], 0.85)
    assert result["accuracy_reloaded"] == pytest.approx(result["accuracy_finetuned"], abs=1e-9)
    assert result["min_tensor_density"] > 0.0  # no layer collapsed
    assert 0 < result["size_on_disk_bytes"] < 1_000_000  # bitmask
    tuned = out.with_name(out.name + "-ft")
    for d in (out, tuned):
        for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
            assert (d / name).is_file(), (d, name)
        # bitmask: the weights' indices are the masks, stored once
        assert not (d / "pruning_masks.safetensors").exists()
        assert str(tmp_path) not in (d / "README.md").read_text()
    card = (tuned / "README.md").read_text()
    assert "| Before pruning | After pruning | After fine-tuning |" in card
    assert "split `test`, 450 images" in card
