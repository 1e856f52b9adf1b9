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
def test_quickstart_prunes_evaluates_saves_and_reloads(tmp_path):
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
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the summary lines, then one JSON object
    text = proc.stdout
    assert "PX pruned 90.00%" in text and "plain from_pretrained" in text
    result = json.loads(text[text.index("{") :])
    assert result["method"] == "px" and result["requested_sparsity"] == 0.9
    assert result["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result["reloaded_sparsity"] == pytest.approx(result["achieved_sparsity"], abs=1e-9)
    assert result["calibration_images"] == 100  # the paper's 10 per class
    assert result["eval_images"] == 450  # the held-out digits
    assert result["accuracy_dense"] > 0.95
    assert 0.0 <= result["accuracy_pruned"] <= 1.0
    assert result["min_tensor_density"] > 0.0  # no layer collapsed
    assert 0 < result["size_on_disk_bytes"] < 5_000_000
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (out / name).is_file()
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card
