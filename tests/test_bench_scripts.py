"""Every benchmark script still imports and parses its arguments (they are not run
by the default tests; a renamed import once broke one silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "scripts").glob("bench_*.py"))

CHECK = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append(path)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


def test_every_bench_script_imports_and_answers_help():
    assert len(SCRIPTS) >= 6
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    for script in SCRIPTS:  # each printed its own usage line
        assert f"usage: {script.name}" in proc.stdout or f"usage: {script}" in proc.stdout, script


@pytest.mark.slow
def test_bench_speed_quick_mode():
    """`bench_speed.py --quick` (tiny configs): every variant is smaller, computes the
    masked function, gets timed, and loads from its saved checkpoint in a fresh process
    as the smaller model; one model keeps it to seconds."""
    import json

    proc = subprocess.run(
        [sys.executable, "scripts/bench_speed.py", "--quick", "--models", "vit-base"]
        + ["--batch", "4", "--b1-calls", "1", "--threads", "1", "--memory"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    rows = json.loads(proc.stdout)["results"]
    assert [r["variant"] for r in rows] == ["dense", "remove 0.25", "remove 0.5"]
    for r in rows[1:]:
        assert r["removed"]["macs"] >= r["remove"]
        assert r["macs"] < rows[0]["macs"] and r["max_logit_diff_vs_masked"] < 1e-5
        assert r["latency_b1_ms"] > 0 and r["throughput_b4_img_s"] > 0
    for r in rows:  # what from_pretrained built in the fresh process is the saved variant
        assert r["memory"]["params"] == r["params"] and r["memory"]["forward_b1_peak_mb"] > 0


def test_structured_quality_rows_with_a_width_multiple_get_their_own_table():
    """Rows run with --round-to N are a table of their own and stay out of the goals
    (which judge the defaults)."""
    from conftest import load_script

    bench = load_script("bench_structured_quality")
    row = {"family": "resnet", "method": "taylor", "remove": 0.5, "seed": 0}
    row |= {"structure": ["channels", "stream"], "accuracy_pruned": 0.8}
    plain = [{**row, "accuracy_finetuned": 0.88}, {**row, "method": "px[form=fisher]",
             "accuracy_finetuned": 0.87}]  # fmt: skip
    stepped = [{**r, "round_to": 8, "accuracy_finetuned": 0.5} for r in plain]
    assert bench.structure_of(stepped[0]) == "channels+stream, widths in multiples of 8"
    assert bench.run_key(plain[0]) != bench.run_key(stepped[0])
    text = bench.tables(plain + stepped)
    assert "units: channels+stream (dense" in text
    assert "units: channels+stream, widths in multiples of 8 (dense" in text
    goals = bench.goals_table(plain + stepped).splitlines()
    assert len(goals) == 3 and "| 87.00 | taylor 88.00 | -1.00 |" in goals[2]
