"""`hf-px env`: what a bug report needs, offline, one JSON object with `--json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def _env_cmd(*args: str, **env: str) -> subprocess.CompletedProcess:
    values = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "hf_px", "env", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(drop=("HF_", "ACCELERATE_"), **values),
    )


def test_env_json_is_one_object_with_versions_capability_and_settings():
    out = _env_cmd(
        "--json",
        ATEN_CPU_CAPABILITY="default",
        HF_PX_DISABLE_PROGRESS_BARS="1",
        HF_HUB_TOKEN="hf_s3cret",
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)  # the whole stdout is the one object
    assert info["versions"]["torch"] == torch.__version__
    for package in ("hf-px", "transformers", "accelerate", "datasets", "huggingface_hub"):
        assert info["versions"][package], package
    # the capability the child's torch really dispatched to, forced by the variable
    assert info["cpu_capability"] == "DEFAULT" and info["aten_cpu_capability_env"] == "default"
    assert info["threads"] >= 1 and isinstance(info["native_bitmask_decoder"], bool)
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["settings"]["HF_PX_DISABLE_PROGRESS_BARS"] == "1"
    assert info["settings"]["HF_HUB_OFFLINE"] == "1"
    assert "hf_s3cret" not in out.stdout + out.stderr  # a token is named, never shown


def test_env_human_output_names_the_capability_and_packages(cli, tmp_path):
    out = cli("env", cwd=tmp_path)  # this process: the capability forced above needs its own
    assert out.returncode == 0, out.stderr
    assert "bug report" in out.stdout
    native = torch.backends.cpu.get_cpu_capability()
    assert f"CPU capability used by torch: {native}" in out.stdout
    for package in ("hf-px", "torch", "transformers", "accelerate", "datasets", "huggingface_hub"):
        assert f"- {package}: " in out.stdout
