"""`scripts/bench_quality.py --quick` runs end to end on real digits and prints the
documented JSON; `--merge ... --write-docs` turns it into tables and a PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_quality.py"


def _run(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.ci
def test_quick_mode_json_and_docs(tmp_path):
    out = tmp_path / "quick.json"
    result = _run("--quick", "--threads", "1", "--out", str(out))
    assert result["mode"] == "quick"
    assert {"recipe", "at_init", "trained", "summary", "wall_s"} <= set(result)
    families = {r["family"] for r in result["at_init"]}
    assert families == {"resnet", "vit", "convnext"}
    methods = {(r["family"], r["method"]) for r in result["at_init"]}
    assert ("resnet", "px-rms") in methods and ("vit", "px-rms") not in methods
    assert {"dense", "snip", "px"} <= {m for _, m in methods}
    for r in result["at_init"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["revived"] == 0  # masks held through training
        assert (r["sparsity"] == 0.0) == (r["method"] == "dense")
    for r in result["trained"]:
        assert r["method"] != "dense" and r["sparsity"] == 0.9
        assert 0.0 <= r["after_prune"] <= 1.0 and 0.0 <= r["after_finetune"] <= 1.0
        # BatchNorm re-estimation only where there is BatchNorm (the ResNet)
        assert (r["after_bn_recalibration"] is None) == (r["family"] != "resnet")
    for s in result["summary"]:
        assert s["n"] == 1 and s["std"] == 0.0
    # every at-init run appears once in the summary
    assert len(result["summary"]) == len(result["at_init"])
    # the JSON file round-trips into docs: tables with the measured means, and a PNG
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("# Benchmarks\n\nhand-written text stays\n")
    _run("--merge", str(out), "--write-docs", "--docs-dir", str(docs))
    md = (docs / "benchmarks.md").read_text()
    assert "hand-written text stays" in md
    px = next(s for s in result["summary"] if s["family"] == "vit" and s["method"] == "px")
    assert f"{100 * px['mean']:.1f} ± 0.0" in md
    assert "**resnet**" in md and "Pruning a trained model" in md
    assert (docs / "bench_quality.png").read_bytes()[:4] == b"\x89PNG"
    # writing twice replaces the generated block instead of appending a second one
    _run("--merge", str(out), "--write-docs", "--docs-dir", str(docs))
    assert (docs / "benchmarks.md").read_text().count("bench_quality:begin") == 1


@pytest.mark.slow
def test_layer_densities_diagnostic():
    result = _run("--layer-densities", "vit", "0.9", "--methods", "snip", "px", "--rounds", "2")
    assert result["family"] == "vit" and result["sparsity"] == 0.9
    tensors = result["tensors"]
    total = sum(t["numel"] for t in tensors.values())
    for method in ("snip", "px"):
        kept = sum(t[method] * t["numel"] for t in tensors.values())
        assert kept / total == pytest.approx(0.1, abs=1e-3)  # exact global count
    # PX ties q/k to v's density (docs/method.md §4.4)
    q = next(t for n, t in tensors.items() if "q_proj" in n)
    v = next(t for n, t in tensors.items() if "v_proj" in n)
    assert q["px"] == pytest.approx(v["px"], abs=0.02)
