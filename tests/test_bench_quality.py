"""`scripts/bench_quality.py --quick` runs end to end on real digits and prints the
documented JSON; `--merge ... --write-docs` turns it into tables and a PNG."""

from __future__ import annotations

import importlib.util
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


def _module():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_spelling_passes_options_through():
    bq = _module()
    assert bq.parse_method("snip") == ("snip", {})
    assert bq.parse_method("px[bn=eval]") == ("px", {"bn": "eval"})
    assert bq.parse_method("px[norm=gate, keep_classifier=true]") == (
        "px",
        {"norm": "gate", "keep_classifier": True},
    )
    assert bq.parse_method("px-rms") == ("px", {"bn": "rms"})
    for bad in ("px[bn]", "nosuch", "px[bn=rms", "dense[x=1]"):
        with pytest.raises(SystemExit):
            bq.parse_method(bad)
    # BatchNorm options only where there is BatchNorm
    ms = ["dense", "px", "px[bn=rms]", "px[norm=gate]"]
    assert bq.methods_for("resnet", ms) == ms
    assert bq.methods_for("vit", ms) == ["dense", "px", "px[norm=gate]"]


def test_cache_keys_runs_by_recipe(tmp_path):
    bq = _module()
    cfg = bq.RECIPES["fashion-mnist"]
    rid = bq.recipe_id("fashion-mnist", "resnet", cfg)
    assert rid != bq.recipe_id("fashion-mnist", "vit", cfg)
    assert rid != bq.recipe_id("fashion-mnist", "resnet", {**cfg, "epochs": cfg["epochs"] + 1})
    assert rid == bq.recipe_id("fashion-mnist", "resnet", {**cfg, "sparsities": [0.5]})
    path = tmp_path / "runs.jsonl"
    row = {"data": "fashion-mnist", "family": "resnet", "method": "px[bn=rms]", "sparsity": 0.9}
    row = {**row, "seed": 1, "protocol": "trained", "recipe_id": rid, "accuracy": 0.5}
    cache = bq.Cache(path)
    cache.put(row)
    cache.put({**row, "seed": 2, "accuracy": 0.7})
    again = bq.Cache(path)
    assert again.get(("fashion-mnist", "resnet", "px[bn=rms]", 0.9, 1, "trained", rid)) == row
    assert again.get(("fashion-mnist", "resnet", "px[bn=rms]", 0.9, 1, "init", rid)) is None
    # tables come from the newest recipe of each data set / family only
    old = {**row, "recipe_id": "old", "accuracy": 0.1}
    kept = bq.select_recipe([old, row])
    assert kept == [row]


def test_density_table_lists_every_tensor_and_method():
    bq = _module()
    out = {
        "data": "fashion-mnist",
        "family": "resnet",
        "sparsity": 0.98,
        "protocol": "init",
        "tensors": {
            "resnet.embedder.weight": {"numel": 10, "snip": 0.5, "px[bn=eval]": 0.25},
            "classifier.1.weight": {"numel": 4, "snip": 0.125},
        },
    }
    table = bq.density_table(out).splitlines()
    assert table[2] == "| tensor (numel) | snip | px[bn=eval] |"
    assert table[4] == "| embedder (10) | 50 | 25 |"
    assert table[5] == "| classifier.1 (4) | 12 | – |"


@pytest.mark.slow
def test_quick_mode_json_and_docs(tmp_path):
    out = tmp_path / "quick.json"
    cache = tmp_path / "runs.jsonl"
    result = _run("--quick", "--threads", "1", "--out", str(out), "--cache", str(cache))
    n_runs = len(cache.read_text().splitlines())
    assert n_runs == len(result["at_init"]) + len(result["trained"])
    # a second call finds every run in the cache: nothing is run or appended again
    again = _run("--quick", "--threads", "1", "--cache", str(cache), "--families", "vit")
    assert len(cache.read_text().splitlines()) == n_runs
    vit = [r for r in result["at_init"] if r["family"] == "vit"]
    assert again["at_init"] == vit
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
