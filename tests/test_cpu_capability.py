"""Default-PX masks do not depend on the CPU's vector capability.

The flagship families are pruned (20 rounds, 90%) in a child process under
``ATEN_CPU_CAPABILITY=default`` (no SIMD kernels) and in this process on the native
capability (AVX2 / AVX-512 / NEON ...). Scores then differ by round-off only, and
the masks must agree: at most a near-tie or two may flip, never a structural choice.
Donut-Swin and Swin v2, whose inline query/key score zero in exact arithmetic, are
pruned the same way on both (those tensors are kept dense by structure).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tiny_families as tf
import torch
from conftest import make_batches, subprocess_env, tiny_convnext, tiny_resnet, tiny_vit

from hf_px import prune

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"resnet": tiny_resnet, "vit": tiny_vit, "convnext": tiny_convnext}
#: inline-attention types whose query/key scores are zero in exact arithmetic (method.md §4.4)
INLINE = ("donut-swin", "swinv2")
#: near-ties may flip between capabilities; measured: 0 entries on every family
MAX_FLIPPED = 1e-4

CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from conftest import make_batches, tiny_convnext, tiny_resnet, tiny_vit
from hf_px import prune
out = {{}}
for name, build in (("resnet", tiny_resnet), ("vit", tiny_vit), ("convnext", tiny_convnext)):
    out[name] = prune(build(), make_batches(2, 4), 0.9, "px", rounds=20).masks
import tiny_families as tf
for name in {inline!r}:
    out[name] = prune(tf.build(name), tf.batches(name), 0.9, "px", rounds=5).masks
out["capability"] = torch.backends.cpu.get_cpu_capability()
torch.save(out, {path!r})
"""


def test_default_px_masks_agree_across_cpu_capabilities(tmp_path):
    path = tmp_path / "masks.pt"
    code = CHILD.format(tests=str(ROOT / "tests"), path=str(path), inline=INLINE)
    env = subprocess_env(drop=("HF_",), HF_HUB_OFFLINE="1", ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = torch.load(path)
    assert other.pop("capability") == "DEFAULT"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {
            name: lambda b=build: prune(b(), make_batches(2, 4), 0.9, "px", rounds=20)
            for name, build in FAMILIES.items()
        }
        runs.update(
            {
                name: lambda t=name: prune(tf.build(t), tf.batches(t), 0.9, "px", rounds=5)
                for name in INLINE
            }
        )
        for name, run in runs.items():
            here = run().masks
            there = other[name]
            assert set(here) == set(there), name
            total = sum(m.numel() for m in here.values())
            flipped = sum(int((here[n] != there[n]).sum()) for n in here)
            assert flipped <= MAX_FLIPPED * total, (
                f"{name}: {flipped} of {total} mask entries differ"
            )
    finally:
        torch.set_num_threads(threads)
