"""`scripts/gpu_check.py --dry-run`: the prepared GPU check runs its code on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHILD_THREADS, subprocess_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_step_on_cpu(tmp_path):
    env = subprocess_env(
        drop=("HF_", "ACCELERATE_"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        OMP_NUM_THREADS=CHILD_THREADS,
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["failed"] == []
    steps = report["steps"]
    assert set(steps) == {
        "full_size",
        "cpu_vs_device",
        "finetune_bf16",
        "bitmask_device_map",
        "torchrun",
    }
    for family in ("vit", "resnet"):
        assert abs(steps["full_size"][family]["sparsity"] - 0.9) < 1e-3
        assert steps["cpu_vs_device"][family]["differ"] == 0  # CPU against itself: deterministic
    assert steps["finetune_bf16"]["pruned_nonzero"] == 0
    assert "skipped" in steps["torchrun"]


def test_gpu_check_without_cuda_exits_non_zero_with_a_reason():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--steps", "torchrun"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(
            drop=("HF_",), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=""
        ),
    )
    assert proc.returncode == 1
    assert "no CUDA device" in json.loads(proc.stdout.strip().splitlines()[-1])["failed"][0]
