"""Pruning quality on real data: scikit-learn's digits, small ResNet / ViT / ConvNeXt.

Two experiments, one recipe (``RECIPE`` below, printed in the JSON):

* **at init** — build the model from a config (seeded), prune it with each method
  on calibration batches (10 images per class of the training split), train it
  with the masks fixed (:func:`hf_px.training.finetune`), report top-1 test
  accuracy; every method × sparsity × seed.
* **trained** — train the dense model (seed 0), prune it with each method, report
  accuracy right after pruning and after a short masked fine-tune.

Data: 1797 8×8 digits, stratified 75/25 split (``random_state=0``), bilinearly
upsampled to ``--size`` px, grey copied to 3 channels, normalised to [−1, 1].

    python scripts/bench_quality.py --quick                      # CI, < 60 s
    python scripts/bench_quality.py --families resnet --out r.json   # full, one family
    python scripts/bench_quality.py --merge r.json v.json c.json --write-docs

Prints one JSON object. ``--write-docs`` rewrites the generated block of
docs/benchmarks.md and docs/bench_quality.png from the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hf_px import prune  # noqa: E402
from hf_px.pruning import recalibrate_batchnorm  # noqa: E402
from hf_px.training import finetune  # noqa: E402

FAMILIES = ("resnet", "vit", "convnext")
METHODS = ("dense", "random", "magnitude", "snip", "grasp", "synflow", "px", "px-rms")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
TRAINED_SPARSITIES = (0.5, 0.8, 0.9)
SEEDS = (0, 1, 2)

FULL = {
    # input size per family; the ViT reads the native 8×8 digits in 2×2 patches
    # (16 tokens): at 16 px with 4×4 patches it reached 41-46% dense with this recipe
    "size": {"resnet": 16, "vit": 8, "convnext": 16},
    "epochs": 6,
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "optimizer": "adamw",
    "schedule": "cosine",
    "max_grad_norm": 1.0,
    "rounds": 10,  # px and synflow; the one-shot methods take 1
    "calibration_per_class": 10,
    "finetune_epochs": 1,
    "finetune_lr": 5e-4,
    "train_limit": None,
}
QUICK_METHODS = ("dense", "snip", "px", "px-rms")
QUICK = {
    **FULL,
    "epochs": 1,
    "rounds": 2,
    "calibration_per_class": 2,
    "train_limit": 128,
    "finetune_epochs": 1,
}


def load_digits_data(size: int, per_class: int, batch_size: int, limit: int | None = None):
    """Train batches, test tensors and calibration batches from sklearn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=0.25, stratify=d.target, random_state=0
    )
    x = torch.nn.functional.interpolate(x[:, None], size=(size, size), mode="bilinear")
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    xtr, ytr = x[torch.as_tensor(idx_tr)], y[torch.as_tensor(idx_tr)]
    xte, yte = x[torch.as_tensor(idx_te)], y[torch.as_tensor(idx_te)]
    # calibration: the first `per_class` training images of each class (split order)
    cal_idx = torch.cat([torch.nonzero(ytr == c).squeeze(1)[:per_class] for c in range(10)])
    cal_idx = cal_idx[torch.randperm(len(cal_idx), generator=torch.Generator().manual_seed(0))]
    half = max(1, len(cal_idx) // 2)
    calibration = [
        {"pixel_values": xtr[cal_idx[i : i + half]], "labels": ytr[cal_idx[i : i + half]]}
        for i in range(0, len(cal_idx), half)
    ]
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    train = [
        {"pixel_values": xtr[i : i + batch_size], "labels": ytr[i : i + batch_size]}
        for i in range(0, len(ytr), batch_size)
    ]
    return train, (xte, yte), calibration


def build(family: str, size: int, seed: int):
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    if family == "resnet":
        cfg = ResNetConfig(
            embedding_size=16,
            hidden_sizes=[16, 32, 64],
            depths=[1, 1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            num_labels=10,
        )
        return ResNetForImageClassification(cfg).eval()
    if family == "vit":
        cfg = ViTConfig(
            image_size=size,
            patch_size=2,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=10,
        )
        return ViTForImageClassification(cfg).eval()
    if family == "convnext":
        cfg = ConvNextConfig(
            num_stages=3,
            hidden_sizes=[16, 32, 64],
            depths=[1, 1, 1],
            patch_size=2,
            image_size=size,
            num_labels=10,
        )
        return ConvNextForImageClassification(cfg).eval()
    raise ValueError(family)


@torch.no_grad()
def accuracy(model, test) -> float:
    model.eval()
    x, y = test
    correct = 0
    for i in range(0, len(y), 256):
        correct += int(
            (model(pixel_values=x[i : i + 256]).logits.argmax(-1) == y[i : i + 256]).sum()
        )
    return correct / len(y)


def parse_method(method: str) -> tuple[str, dict]:
    """``px-rms`` or ``name[key=value,...]`` (e.g. ``px[bn=eval,norm=gate]``) -> (name, options)."""
    if method == "px-rms":
        return "px", {"bn": "rms"}
    name, _, rest = method.partition("[")
    pairs = [kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv]
    if name not in METHODS or any(len(kv) != 2 for kv in pairs):
        raise argparse.ArgumentTypeError(f"unknown method {method!r}")
    return name, dict(pairs)


def prune_with(model, method: str, sparsity: float, calibration, rounds: int, seed: int):
    name, opts = parse_method(method)
    r = rounds if name in ("px", "synflow") else 1
    t0 = time.perf_counter()
    result = prune(model, calibration, sparsity, name, rounds=r, seed=seed, **opts)
    return result, time.perf_counter() - t0


def methods_for(family: str, methods) -> list[str]:
    return [m for m in methods if m != "px-rms" or family == "resnet"]


def train_recipe(cfg, epochs=None, lr=None) -> dict:
    return {
        "epochs": epochs or cfg["epochs"],
        "lr": lr or cfg["lr"],
        "optimizer": cfg["optimizer"],
        "weight_decay": cfg["weight_decay"],
        "schedule": cfg["schedule"],
        "max_grad_norm": cfg["max_grad_norm"],
    }


def run_family(family, cfg, methods, sparsities, seeds, trained_sparsities, log):
    size = cfg["size"][family]
    train, test, calibration = load_digits_data(
        size, cfg["calibration_per_class"], cfg["batch_size"], cfg["train_limit"]
    )
    at_init, trained = [], []
    dense_models = {}
    for seed in seeds:
        for method in methods_for(family, methods):
            if cfg.get("trained_only") and (method != "dense" or seed != seeds[0]):
                continue
            for s in [0.0] if method == "dense" else sparsities:
                model = build(family, size, seed)
                masks, prune_s = None, 0.0
                if method != "dense":
                    result, prune_s = prune_with(model, method, s, calibration, cfg["rounds"], seed)
                    masks = result.masks
                stats = finetune(model, masks, train, seed=seed, **train_recipe(cfg))
                row = {
                    "family": family,
                    "method": method,
                    "sparsity": s,
                    "seed": seed,
                    "accuracy": accuracy(model, test),
                    "final_loss": stats["final_loss"],
                    "revived": stats["pruned_weights_nonzero"],
                    "prune_s": round(prune_s, 3),
                    "train_s": round(stats["train_s"], 3),
                }
                at_init.append(row)
                log(row)
                if method == "dense":
                    dense_models[seed] = model
    # trained: prune the dense seed-0 model, then a short masked fine-tune
    base = dense_models.get(seeds[0])
    if base is not None:
        dense_acc = accuracy(base, test)
        for method in methods_for(family, methods):
            if method == "dense":
                continue
            for s in trained_sparsities:
                model = copy.deepcopy(base)
                result, prune_s = prune_with(model, method, s, calibration, cfg["rounds"], 0)
                after_prune = accuracy(model, test)
                # BatchNorm running statistics re-estimated on the calibration
                # batches (what `hf-px prune` does by default), on a copy
                recal = copy.deepcopy(model)
                n_bn = recalibrate_batchnorm(recal, calibration)
                after_recal = accuracy(recal, test) if n_bn else None
                recipe = train_recipe(cfg, cfg["finetune_epochs"], cfg["finetune_lr"])
                finetune(model, result.masks, train, seed=0, **recipe)
                row = {
                    "family": family,
                    "method": method,
                    "sparsity": s,
                    "dense_accuracy": dense_acc,
                    "after_prune": after_prune,
                    "after_bn_recalibration": after_recal,
                    "after_finetune": accuracy(model, test),
                    "prune_s": round(prune_s, 3),
                }
                trained.append(row)
                log(row)
    return at_init, trained


def layer_densities(family: str, sparsity: float, cfg, methods) -> dict:
    """Kept fraction per tensor after pruning (seed 0): where each method spends
    its budget — the diagnostic for layer collapse."""
    size = cfg["size"][family]
    _, _, calibration = load_digits_data(size, cfg["calibration_per_class"], cfg["batch_size"])
    out: dict = {}
    for method in methods_for(family, methods):
        if method == "dense":
            continue
        model = build(family, size, 0)
        result, _ = prune_with(model, method, sparsity, calibration, cfg["rounds"], 0)
        for name, mask in result.masks.items():
            row = out.setdefault(name, {"numel": mask.numel()})
            row[method] = round(float(mask.float().mean()), 5)
    return {"family": family, "sparsity": sparsity, "rounds": cfg["rounds"], "tensors": out}


# ---------------------------------------------------------------- reporting


def summarise(at_init):
    groups: dict[tuple, list[float]] = {}
    for r in at_init:
        groups.setdefault((r["family"], r["method"], r["sparsity"]), []).append(r["accuracy"])
    out = []
    for (f, m, s), accs in sorted(groups.items()):
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append(
            {
                "family": f,
                "method": m,
                "sparsity": s,
                "mean": statistics.fmean(accs),
                "std": sd,
                "n": len(accs),
            }
        )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _trained_cell(r) -> str:
    recal = r.get("after_bn_recalibration")
    mid = f" ({_pct(recal)})" if recal is not None else ""
    return f"{_pct(r['after_prune'])}{mid} → {_pct(r['after_finetune'])}"


def markdown_tables(result) -> str:
    summary = result["summary"]
    lines = []
    fams = [f for f in FAMILIES if any(r["family"] == f for r in summary)]
    sps = sorted({r["sparsity"] for r in summary if r["method"] != "dense"})
    by = {(r["family"], r["method"], r["sparsity"]): r for r in summary}
    for f in fams:
        lines += [f"**{f}** — top-1 test accuracy (%), mean ± std over seeds", ""]
        lines.append("| method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |")
        lines.append("|---|" + "---|" * len(sps))
        dense = by.get((f, "dense", 0.0))
        if dense:
            cell = f"{_pct(dense['mean'])} ± {_pct(dense['std'])}"
            lines.append("| dense (0%) | " + " | ".join([cell] * len(sps)) + " |")
        for m in METHODS[1:]:
            cells = []
            for s in sps:
                r = by.get((f, m, s))
                if r is None:
                    cells.append("–")
                    continue
                best = max(by[(f, mm, s)]["mean"] for mm in METHODS[1:] if (f, mm, s) in by)
                txt = f"{_pct(r['mean'])} ± {_pct(r['std'])}"
                cells.append(f"**{txt}**" if r["mean"] == best else txt)
            if any(c != "–" for c in cells):
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    trained = result.get("trained", [])
    if trained:
        tsp = sorted({r["sparsity"] for r in trained})
        lines += [
            "**Pruning a trained model** — accuracy (%) right after pruning (with "
            "BatchNorm statistics re-estimated on the calibration batches) → after the "
            "masked fine-tune",
            "",
        ]
        for f in fams:
            rows = [r for r in trained if r["family"] == f]
            if not rows:
                continue
            lines.append(f"*{f}* (dense: {_pct(rows[0]['dense_accuracy'])}%)")
            lines.append("")
            lines.append("| method | " + " | ".join(f"{100 * s:g}%" for s in tsp) + " |")
            lines.append("|---|" + "---|" * len(tsp))
            tb = {(r["method"], r["sparsity"]): r for r in rows}
            for m in METHODS[1:]:
                if not any((m, s) in tb for s in tsp):
                    continue
                cells = [_trained_cell(tb[(m, s)]) if (m, s) in tb else "–" for s in tsp]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in summary)]
    fig, axes = plt.subplots(1, len(fams), figsize=(5 * len(fams), 4), squeeze=False)
    for ax, f in zip(axes[0], fams, strict=True):
        for m in METHODS[1:]:
            rows = sorted(
                (r for r in summary if r["family"] == f and r["method"] == m),
                key=lambda r: r["sparsity"],
            )
            if not rows:
                continue
            xs = [-math.log10(1 - r["sparsity"]) for r in rows]
            ax.errorbar(
                xs,
                [100 * r["mean"] for r in rows],
                yerr=[100 * r["std"] for r in rows],
                label=m,
                marker="o",
                capsize=2,
                linewidth=2.2 if m.startswith("px") else 1.0,
            )
        dense = [r for r in summary if r["family"] == f and r["method"] == "dense"]
        if dense:
            ax.axhline(100 * dense[0]["mean"], color="k", linestyle="--", label="dense")
        ticks = sorted({r["sparsity"] for r in summary if r["method"] != "dense"})
        ax.set_xticks([-math.log10(1 - s) for s in ticks])
        ax.set_xticklabels([f"{100 * s:g}" for s in ticks])
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_title(f"digits, {f}, pruned at init")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN = "<!-- bench_quality:begin (generated by scripts/bench_quality.py --write-docs) -->"
END = "<!-- bench_quality:end -->"


def write_docs(result, docs: Path) -> None:
    """Replace the generated block of docs/benchmarks.md; write the PNG."""
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / "bench_quality.png"
    plot(result, png)
    block = "\n".join(
        [
            BEGIN,
            "",
            *[
                f"Recipe ({f}): `" + json.dumps(r, sort_keys=True) + "`\n"
                for f, r in result.get("recipes", {"all": result["recipe"]}).items()
            ],
            markdown_tables(result),
            f"![accuracy vs sparsity]({png.name})",
            "",
            END,
        ]
    )
    md = docs / "benchmarks.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a CI-sized run (< 60 s)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument(
        "--methods", nargs="+", default=None, type=lambda m: parse_method(m) and m, metavar="M"
    )
    p.add_argument("--sparsities", nargs="+", type=float, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None, help="px/synflow rounds")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--trained-only",
        action="store_true",
        help="only the trained-model experiment (dense seed 0, then prune + fine-tune)",
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument(
        "--layer-densities",
        nargs=2,
        metavar=("FAMILY", "SPARSITY"),
        help="only prune (seed 0) and print each tensor's kept fraction per method",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--merge", nargs="+", type=Path, help="combine earlier --out files")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md + PNG")
    p.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    p.add_argument("--progress", action="store_true", help="one JSON line per run on stderr")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    if a.layer_densities:
        family, sparsity = a.layer_densities[0], float(a.layer_densities[1])
        cfg = dict(FULL, rounds=a.rounds or FULL["rounds"])
        print(json.dumps(layer_densities(family, sparsity, cfg, a.methods or METHODS), indent=1))
        return 0
    if a.merge:
        parts = [json.loads(f.read_text()) for f in a.merge]
        result = {
            "mode": parts[0]["mode"],
            "recipe": parts[0]["recipe"],
            "recipes": {r["family"]: q["recipe"] for q in parts for r in q["at_init"][:1]},
            "at_init": [r for q in parts for r in q["at_init"]],
            "trained": [r for q in parts for r in q["trained"]],
            "wall_s": sum(q["wall_s"] for q in parts),
        }
    else:
        cfg = dict(QUICK if a.quick else FULL)
        if a.rounds:
            cfg["rounds"] = a.rounds
        if a.epochs:
            cfg["epochs"] = a.epochs
        methods = a.methods or list(QUICK_METHODS if a.quick else METHODS)
        if a.trained_only:
            cfg["trained_only"] = True
        sparsities = a.sparsities or ([0.9] if a.quick else list(SPARSITIES))
        seeds = a.seeds or ([0] if a.quick else list(SEEDS))
        trained_sp = [0.9] if a.quick else list(TRAINED_SPARSITIES)

        def log(row):
            if a.progress:
                print(json.dumps(row), file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        at_init, trained = [], []
        for f in a.families:
            x, y = run_family(f, cfg, methods, sparsities, seeds, trained_sp, log)
            at_init += x
            trained += y
        result = {
            "mode": "quick" if a.quick else "full",
            "recipe": {**cfg, "threads": a.threads, "seeds": seeds, "sparsities": sparsities},
            "at_init": at_init,
            "trained": trained,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    result["summary"] = summarise(result["at_init"])
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    if a.write_docs:
        write_docs(result, a.docs_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
