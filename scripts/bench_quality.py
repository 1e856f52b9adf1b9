"""Pruning quality on real data: Fashion-MNIST and scikit-learn's digits, small ResNet / ViT / ConvNeXt.

Two protocols, one recipe per data set (``RECIPES`` below, printed in the JSON):

* **init** — build the model from a config (seeded), prune it with each method on
  calibration batches (10 images per class of the training split), train it with
  the masks fixed (:func:`hf_px.training.finetune`), report top-1 test accuracy.
* **trained** — train the dense model (same seed), prune it, report accuracy right
  after pruning (and with BatchNorm statistics re-estimated) and after a short
  masked fine-tune.

Every method × sparsity × seed × protocol is one *run*. Methods are ``dense``, the
names of :mod:`hf_px.methods` (``random magnitude snip grasp synflow px``) and PX
variants spelled ``px[key=value,...]``: the options go to :func:`hf_px.prune` as
they are (``px[bn=rms]`` → ``prune(..., method="px", bn="rms")``), so a new PX
option needs no change here. Variants with a ``bn`` option run on BatchNorm
families only.

Data: ``fashion-mnist`` (the Debian package ``dataset-fashion-mnist``, read by
``scripts/fashion_mnist.py`` into a `datasets.Dataset`, then through
:mod:`hf_px.calibration` and a `transformers` image processor as a user's data
would be) or ``digits`` (1797 8×8 digits, stratified 75/25 split, upsampled).

Each finished run is appended to a JSONL cache (``--cache``, default
``docs/bench_quality_runs.jsonl`` for full runs) keyed by data / family / method /
sparsity / seed / protocol / recipe; a cached run is not run again, so rows can be
added later (a new PX variant) without rerunning the baselines.

    python scripts/bench_quality.py --quick                           # CI, < 60 s
    python scripts/bench_quality.py --data fashion-mnist --families resnet --threads 1
    python scripts/bench_quality.py --data fashion-mnist --families vit \\
        --methods 'px[norm=gate]'                                    # add one variant
    python scripts/bench_quality.py --merge --write-docs             # tables from the cache

Prints one JSON object. ``--write-docs`` rewrites the generated blocks of
docs/benchmarks.md and the PNGs from the results.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from hf_px import prune, training  # noqa: E402
from hf_px.methods import METHODS as REGISTRY  # noqa: E402
from hf_px.pruning import recalibrate_batchnorm  # noqa: E402

DATA = ("fashion-mnist", "digits")
FAMILIES = ("resnet", "vit", "convnext")
BN_FAMILIES = ("resnet",)
BASELINES = ("random", "magnitude", "snip", "grasp", "synflow")
# default methods; PX variants are spelled out so that a later change of px's defaults
# cannot relabel cached rows
DEFAULT_METHODS = ("dense", *BASELINES, "px[bn=reference]", "px[bn=rms]", "px")
ALIASES = {"px-rms": "px[bn=rms]"}
SEEDS = (0, 1, 2)
DEFAULT_CACHE = ROOT / "docs" / "bench_quality_runs.jsonl"

MODEL_CONFIGS = {
    "digits": {
        "resnet": {
            "embedding_size": 16,
            "hidden_sizes": [16, 32, 64],
            "depths": [1, 1, 1],
            "layer_type": "basic",
            "downsample_in_first_stage": False,
        },
        # the ViT reads the native 8×8 digits in 2×2 patches (16 tokens): at 16 px
        # with 4×4 patches it reached 41-46% dense with this recipe
        "vit": {
            "patch_size": 2,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        },
        "convnext": {"num_stages": 3, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1]},
    },
}
MODEL_CONFIGS["fashion-mnist"] = copy.deepcopy(MODEL_CONFIGS["digits"])
MODEL_CONFIGS["fashion-mnist"]["vit"]["patch_size"] = 7
MODEL_CONFIGS["fashion-mnist"]["convnext"]["patch_size"] = 4

DIGITS = {
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
    "test_limit": None,
    "sparsities": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99],
    "trained_sparsities": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99],
    # the training loop of the rows (part of the cache key): see `finetune` below
    "train_loop": "fixed-batches/batch-order-reshuffled",
}
FASHION = {
    **DIGITS,
    "size": {"resnet": 28, "vit": 28, "convnext": 28},
    "epochs": 4,
    "batch_size": 64,
    "train_limit": 3000,
    "test_limit": 2000,
    "finetune_epochs": 1,
    "finetune_lr": 1e-3,
    "sparsities": [0.9, 0.95, 0.98, 0.99],
    "trained_sparsities": [0.9, 0.95, 0.98, 0.99],
}
RECIPES = {"digits": DIGITS, "fashion-mnist": FASHION}
QUICK_METHODS = ("dense", "snip", "px", "px-rms")
QUICK = {
    **DIGITS,
    "epochs": 1,
    "rounds": 2,
    "calibration_per_class": 2,
    "train_limit": 128,
    "finetune_epochs": 1,
    "sparsities": [0.9],
    "trained_sparsities": [0.9],
}


# ---------------------------------------------------------------- methods


def parse_method(spec: str) -> tuple[str, dict]:
    """``"px[bn=rms,rounds_scale=2]"`` → ``("px", {"bn": "rms", "rounds_scale": 2})``."""
    spec = ALIASES.get(spec, spec)
    m = re.fullmatch(r"([a-z_]+)(?:\[([^\]]*)\])?", spec)
    if not m:
        raise SystemExit(f"error: bad method {spec!r}; spell it NAME or NAME[key=value,...]")
    name, body = m.group(1), m.group(2)
    if name != "dense" and name not in REGISTRY:
        raise SystemExit(f"error: unknown method {name!r}; choose dense, {', '.join(REGISTRY)}")
    opts: dict = {}
    for item in filter(None, (body or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"error: bad option {item!r} in {spec!r}; use key=value")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value.strip()
    if name == "dense" and opts:
        raise SystemExit("error: dense takes no options")
    return name, opts


def methods_for(family: str, methods) -> list[str]:
    """Drop ``bn`` variants on families without BatchNorm."""
    return [m for m in methods if "bn" not in parse_method(m)[1] or family in BN_FAMILIES]


def prune_with(model, method: str, sparsity: float, calibration, rounds: int, seed: int):
    name, opts = parse_method(method)
    r = rounds if name in ("px", "synflow") else 1
    t0 = time.perf_counter()
    result = prune(model, calibration, sparsity, name, rounds=r, seed=seed, **opts)
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------- data and models


def _batch_list(x, y, batch_size):
    return [
        {"pixel_values": x[i : i + batch_size], "labels": y[i : i + batch_size]}
        for i in range(0, len(y), batch_size)
    ]


def load_digits_data(size: int, per_class: int, batch_size: int, limit: int | None = None):
    """Train batches, test batches and calibration batches from sklearn's digits."""
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
    calibration = _batch_list(xtr[cal_idx], ytr[cal_idx], half)
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    return _batch_list(xtr, ytr, batch_size), _batch_list(xte, yte, 256), calibration


def load_fashion_data(size: int, per_class: int, batch_size: int, train_limit, test_limit):
    """Fashion-MNIST as a user's dataset: a saved `datasets.DatasetDict` read back by
    :mod:`hf_px.calibration` with hf-px's default image processor (resize to `size`,
    grey → RGB, ImageNet mean/std)."""
    import datasets
    from fashion_mnist import FashionMnistMissing, fashion_mnist

    from hf_px.calibration import (
        default_image_processor,
        load_calibration_batches,
        load_labelled_batches,
    )

    try:
        dd = datasets.DatasetDict(
            train=fashion_mnist("train", train_limit), test=fashion_mnist("test", test_limit)
        )
    except FashionMnistMissing as err:
        raise SystemExit(f"error: {err}") from None
    proc = default_image_processor(image_size=size)
    with tempfile.TemporaryDirectory(prefix="bench-fashion-mnist-") as tmp:
        dd.save_to_disk(tmp)
        train = load_labelled_batches(tmp, image_processor=proc, batch_size=batch_size)
        test = load_labelled_batches(tmp, image_processor=proc, split="test", batch_size=256)
        calibration = load_calibration_batches(
            tmp,
            image_processor=proc,
            examples_per_class=per_class,
            batch_size=5 * per_class,  # two batches, as for digits
            seed=0,
        )
    return train, test, calibration


def load_data(data: str, family: str, cfg):
    size = cfg["size"][family]
    if data == "digits":
        return load_digits_data(
            size, cfg["calibration_per_class"], cfg["batch_size"], cfg["train_limit"]
        )
    return load_fashion_data(
        size, cfg["calibration_per_class"], cfg["batch_size"], cfg["train_limit"], cfg["test_limit"]
    )


def build(family: str, size: int, seed: int, data: str = "digits"):
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    kw = dict(MODEL_CONFIGS[data][family], num_labels=10)
    if family == "resnet":
        return ResNetForImageClassification(ResNetConfig(**kw)).eval()
    if family == "vit":
        return ViTForImageClassification(ViTConfig(image_size=size, **kw)).eval()
    if family == "convnext":
        kw.setdefault("patch_size", 2)
        return ConvNextForImageClassification(ConvNextConfig(image_size=size, **kw)).eval()
    raise ValueError(family)


@torch.no_grad()
def accuracy(model, test) -> float:
    model.eval()
    correct = total = 0
    for b in test:
        correct += int(
            (model(pixel_values=b["pixel_values"]).logits.argmax(-1) == b["labels"]).sum()
        )
        total += len(b["labels"])
    return correct / total


def finetune(
    model, masks, batches, *, epochs, lr, optimizer, weight_decay, seed, schedule, max_grad_norm
) -> dict:
    """The library's masked fine-tune (:func:`hf_px.training.finetune`) on fixed batches,
    their order reshuffled each epoch (``shuffle="batches"``): rows measured before the
    library reshuffled images stay comparable (the batches here are already class-mixed)."""
    return training.finetune(
        model,
        masks or None,
        batches,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        seed=seed,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
        shuffle="batches",
    )


def train_recipe(cfg, epochs=None, lr=None) -> dict:
    return {
        "epochs": epochs or cfg["epochs"],
        "lr": lr or cfg["lr"],
        "optimizer": cfg["optimizer"],
        "weight_decay": cfg["weight_decay"],
        "schedule": cfg["schedule"],
        "max_grad_norm": cfg["max_grad_norm"],
    }


# ---------------------------------------------------------------- cache


RESULT_KEYS = (
    "size",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "schedule",
    "max_grad_norm",
    "rounds",
    "calibration_per_class",
    "finetune_epochs",
    "finetune_lr",
    "train_limit",
    "test_limit",
    "train_loop",
)


def recipe_id(data: str, family: str, cfg) -> str:
    """Short hash of everything in the recipe that changes a run's result."""
    blob = {k: cfg[k] for k in RESULT_KEYS}
    blob["size"] = cfg["size"][family]
    blob["model"] = MODEL_CONFIGS[data][family]
    text = json.dumps([data, family, blob], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def code_version() -> str:
    """Hash of the scoring/pruning code, stored with each run (not part of the key)."""
    h = hashlib.sha1()
    files = sorted((ROOT / "hf_px" / "methods").glob("*.py")) + [ROOT / "hf_px" / "pruning.py"]
    for f in files + sorted((ROOT / "hf_px" / "masks").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


def run_key(row) -> tuple:
    return (
        row.get("data", "digits"),
        row["family"],
        row["method"],
        float(row["sparsity"]),
        int(row.get("seed", 0)),
        row.get("protocol", "init"),
        row.get("recipe_id"),
    )


class Cache:
    """Append-only JSONL of finished runs; safe for several processes appending."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: dict[tuple, dict] = {}
        if path is not None and path.exists():
            for row in read_rows(path):
                self.rows[run_key(row)] = row

    def get(self, key):
        return self.rows.get(key)

    def put(self, row) -> None:
        self.rows[run_key(row)] = row
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_rows(path: Path) -> list[dict]:
    """Runs from a JSONL cache, or from the JSON a run printed (``--out``)."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    obj = json.loads(text)
    rows = []
    for protocol in ("init", "trained"):
        for r in obj.get("at_init" if protocol == "init" else "trained", []):
            rows.append({"protocol": protocol, "data": "digits", "seed": 0, **r})
    return rows


# ---------------------------------------------------------------- runs


def run_family(data, family, cfg, methods, seeds, protocols, cache, log):
    """Every missing run of one family; returns all rows (cached and new)."""
    size = cfg["size"][family]
    rid = recipe_id(data, family, cfg)
    code = code_version()
    methods = methods_for(family, methods)
    pruned = [m for m in methods if m != "dense"]
    common = {"data": data, "family": family, "recipe_id": rid}

    def key(method, s, seed, protocol):
        return (data, family, method, float(s), seed, protocol, rid)

    loaded = None

    def get_data():
        nonlocal loaded
        if loaded is None:
            loaded = load_data(data, family, cfg)
        return loaded

    rows = []
    for seed in seeds:
        want_init = [
            (m, s)
            for m in pruned
            for s in cfg["sparsities"]
            if "init" in protocols and not cache.get(key(m, s, seed, "init"))
        ]
        want_trained = [
            (m, s)
            for m in pruned
            for s in cfg["trained_sparsities"]
            if "trained" in protocols and not cache.get(key(m, s, seed, "trained"))
        ]
        dense_row = cache.get(key("dense", 0.0, seed, "init"))
        need_dense = "dense" in methods and dense_row is None
        base = None
        if need_dense or want_trained:
            train, test, calibration = get_data()
            base = build(family, size, seed, data)
            stats = finetune(base, None, train, seed=seed, **train_recipe(cfg))
            acc = accuracy(base, test)
            if dense_row is not None and dense_row["accuracy"] != acc:
                log({"warning": "retrained dense model differs from the cached one", **common})
            if dense_row is None:
                dense_row = {
                    **common,
                    "protocol": "init",
                    "method": "dense",
                    "sparsity": 0.0,
                    "seed": seed,
                    "accuracy": acc,
                    "final_loss": stats["final_loss"],
                    "revived": 0,
                    "prune_s": 0.0,
                    "train_s": round(stats["train_s"], 3),
                    "code": code,
                }
                if "dense" in methods:
                    cache.put(dense_row)
                    log(dense_row)
        for method, s in want_init:
            train, test, calibration = get_data()
            model = build(family, size, seed, data)
            result, prune_s = prune_with(model, method, s, calibration, cfg["rounds"], seed)
            stats = finetune(model, result.masks, train, seed=seed, **train_recipe(cfg))
            row = {
                **common,
                "protocol": "init",
                "method": method,
                "sparsity": s,
                "seed": seed,
                "accuracy": accuracy(model, test),
                "final_loss": stats["final_loss"],
                "revived": stats["pruned_weights_nonzero"],
                "prune_s": round(prune_s, 3),
                "train_s": round(stats["train_s"], 3),
                "code": code,
            }
            cache.put(row)
            log(row)
        for method, s in want_trained:
            train, test, calibration = get_data()
            model = copy.deepcopy(base)
            result, prune_s = prune_with(model, method, s, calibration, cfg["rounds"], seed)
            after_prune = accuracy(model, test)
            # BatchNorm running statistics re-estimated on the calibration batches
            # (what `hf-px prune` does by default), on a copy
            recal = copy.deepcopy(model)
            n_bn = recalibrate_batchnorm(recal, calibration)
            after_recal = accuracy(recal, test) if n_bn else None
            recipe = train_recipe(cfg, cfg["finetune_epochs"], cfg["finetune_lr"])
            stats = finetune(model, result.masks, train, seed=seed, **recipe)
            acc = accuracy(model, test)
            row = {
                **common,
                "protocol": "trained",
                "method": method,
                "sparsity": s,
                "seed": seed,
                "dense_accuracy": dense_row["accuracy"],
                "after_prune": after_prune,
                "after_bn_recalibration": after_recal,
                "after_finetune": acc,
                "accuracy": acc,
                "revived": stats["pruned_weights_nonzero"],
                "prune_s": round(prune_s, 3),
                "train_s": round(stats["train_s"], 3),
                "code": code,
            }
            cache.put(row)
            log(row)
        for method in methods:
            for protocol in protocols:
                if method == "dense":
                    sps = [0.0] if protocol == "init" else []
                else:
                    sps = cfg["sparsities" if protocol == "init" else "trained_sparsities"]
                for s in sps:
                    row = cache.get(key(method, s, seed, protocol))
                    if row is not None:
                        rows.append(row)
    return rows


def layer_densities(data, family, sparsity, cfg, methods, protocol="init") -> dict:
    """Kept fraction per tensor after pruning (seed 0): where each method spends
    its budget — the diagnostic for layer collapse. ``protocol="trained"`` prunes
    the dense model trained with the recipe instead of the initialisation."""
    size = cfg["size"][family]
    train, _, calibration = load_data(data, family, cfg)
    base = build(family, size, 0, data)
    if protocol == "trained":
        finetune(base, None, train, seed=0, **train_recipe(cfg))
    out: dict = {}
    for method in methods_for(family, methods):
        if method == "dense":
            continue
        model = copy.deepcopy(base)
        result, _ = prune_with(model, method, sparsity, calibration, cfg["rounds"], 0)
        for name, mask in result.masks.items():
            row = out.setdefault(name, {"numel": mask.numel()})
            row[method] = round(float(mask.float().mean()), 5)
    return {
        "data": data,
        "family": family,
        "sparsity": sparsity,
        "protocol": protocol,
        "rounds": cfg["rounds"],
        "tensors": out,
    }


# ---------------------------------------------------------------- reporting


def density_table(out) -> str:
    """``layer_densities`` as a markdown table: kept % of each tensor per method."""
    tensors = out["tensors"]
    methods = method_order({m for t in tensors.values() for m in t if m != "numel"})
    lines = [
        f"{out['data']}, {out['family']}, {100 * out['sparsity']:g}% sparsity, "
        f"pruned {'at init' if out['protocol'] == 'init' else 'after training'} (seed 0): "
        "kept % of each tensor",
        "",
        "| tensor (numel) | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, t in tensors.items():
        short = re.sub(r"^(resnet|vit|convnext)\.", "", name).replace(".weight", "")
        cells = [f"{100 * t[m]:.2g}" if m in t else "–" for m in methods]
        lines.append(f"| {short} ({t['numel']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows, field="accuracy"):
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r.get("data", "digits"), r["family"], r["method"], r["sparsity"])
        groups.setdefault(k, []).append(r[field])
    out = []
    for (d, f, m, s), accs in sorted(groups.items()):
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append(
            {
                "data": d,
                "family": f,
                "method": m,
                "sparsity": s,
                "mean": statistics.fmean(accs),
                "std": sd,
                "n": len(accs),
            }
        )
    return out


def method_order(methods) -> list[str]:
    """Baselines in a fixed order, then PX variants alphabetically."""
    known = ["dense", *BASELINES]
    return [m for m in known if m in methods] + sorted(m for m in methods if m not in known)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _mean_std_table(summary, family, sps, methods, dense=None) -> list[str]:
    by = {(r["method"], r["sparsity"]): r for r in summary if r["family"] == family}
    lines = ["| method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |"]
    lines.append("|---|" + "---|" * len(sps))
    if dense:
        cell = f"{_pct(dense['mean'])} ± {_pct(dense['std'])}"
        lines.append("| dense (0%) | " + " | ".join([cell] * len(sps)) + " |")
    for m in methods:
        if m == "dense" or not any((m, s) in by for s in sps):
            continue
        cells = []
        for s in sps:
            r = by.get((m, s))
            if r is None:
                cells.append("–")
                continue
            best = max(by[(mm, s)]["mean"] for mm in methods if (mm, s) in by and mm != "dense")
            txt = f"{_pct(r['mean'])} ± {_pct(r['std'])}"
            cells.append(f"**{txt}**" if r["mean"] == best else txt)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def goal_table(rows, data="digits") -> list[str]:
    """Each PX variant's mean minus the best baseline mean, per family × protocol × sparsity."""
    lines = [
        f"**PX vs the best baseline** ({data}) — mean top-1 (%) of each PX variant, and in "
        "brackets its difference to the best of "
        + ", ".join(BASELINES)
        + " in the same cell (≥ 0: the variant matches or beats every baseline)",
        "",
    ]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    for protocol, field in (("init", "accuracy"), ("trained", "after_finetune")):
        prows = [r for r in rows if r.get("protocol", "init") == protocol]
        if not prows:
            continue
        summary = summarise(prows, field)
        sps = sorted({r["sparsity"] for r in summary if r["method"] != "dense"})
        lines.append(
            f"| {protocol}: family, method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |"
        )
        lines.append("|---|" + "---|" * len(sps))
        for f in fams:
            by = {(r["method"], r["sparsity"]): r["mean"] for r in summary if r["family"] == f}
            best = {}
            for s in sps:
                cands = [(by[(m, s)], m) for m in BASELINES if (m, s) in by]
                best[s] = max(cands) if cands else None
            lines.append(
                f"| {f}, best baseline | "
                + " | ".join(f"{_pct(best[s][0])} ({best[s][1]})" if best[s] else "–" for s in sps)
                + " |"
            )
            pxs = sorted({m for m, _ in by if m.startswith("px")})
            for m in pxs:
                cells = []
                for s in sps:
                    if (m, s) not in by or best[s] is None:
                        cells.append("–")
                        continue
                    d = 100 * (by[(m, s)] - best[s][0])
                    cells.append(f"{_pct(by[(m, s)])} ({d:+.1f})")
                lines.append(f"| {f}, {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def markdown_tables(rows, data="digits") -> str:
    init = [r for r in rows if r.get("protocol", "init") == "init"]
    trained = [r for r in rows if r.get("protocol") == "trained"]
    summary = summarise(init)
    lines = goal_table(rows, data) if data != "digits" or len(rows) > 60 else []
    fams = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    methods = method_order({r["method"] for r in rows})
    for f in fams:
        fs = [r for r in summary if r["family"] == f]
        if not fs:
            continue
        sps = sorted({r["sparsity"] for r in fs if r["method"] != "dense"})
        seeds = max(r["n"] for r in fs)
        dense = next((r for r in fs if r["method"] == "dense"), None)
        lines += [
            f"**{f}** ({data}, pruned at init, {seeds} seed(s)) — top-1 test accuracy (%), "
            "mean ± std over seeds",
            "",
            *_mean_std_table(fs, f, sps, methods, dense),
            "",
        ]
    if trained:
        lines += [
            "**Pruning a trained model** — top-1 (%) after the masked fine-tune, mean ± std "
            "over seeds (each seed: its own dense model, pruned and fine-tuned with that seed); "
            "below it, the mean right after pruning, with BatchNorm statistics re-estimated "
            "on the calibration batches in brackets",
            "",
        ]
        for f in fams:
            ft = [r for r in trained if r["family"] == f]
            if not ft:
                continue
            tsp = sorted({r["sparsity"] for r in ft})
            fsum = summarise(ft, "after_finetune")
            dense = statistics.fmean(dict((r["seed"], r["dense_accuracy"]) for r in ft).values())
            lines += [
                f"*{f}* ({data}; dense models: {_pct(dense)}%)",
                "",
                *_mean_std_table(fsum, f, tsp, methods),
                "",
            ]
            after = {(r["method"], r["sparsity"]): r for r in summarise(ft, "after_prune")}
            has_bn = any(r.get("after_bn_recalibration") is not None for r in ft)
            recal = (
                {
                    (r["method"], r["sparsity"]): r
                    for r in summarise(
                        [r for r in ft if r.get("after_bn_recalibration") is not None],
                        "after_bn_recalibration",
                    )
                }
                if has_bn
                else {}
            )
            lines.append(
                "| right after pruning | " + " | ".join(f"{100 * s:g}%" for s in tsp) + " |"
            )
            lines.append("|---|" + "---|" * len(tsp))
            for m in methods:
                if not any((m, s) in after for s in tsp):
                    continue
                cells = []
                for s in tsp:
                    a = after.get((m, s))
                    c = recal.get((m, s))
                    cell = "–" if a is None else _pct(a["mean"])
                    if c is not None:
                        cell += f" ({_pct(c['mean'])})"
                    cells.append(cell)
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(rows, path: Path, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [
        p for p in ("init", "trained") if any(r.get("protocol", "init") == p for r in rows)
    ]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    methods = method_order({r["method"] for r in rows})
    fig, axes = plt.subplots(
        len(protocols), len(fams), figsize=(5 * len(fams), 4 * len(protocols)), squeeze=False
    )
    # one colour per method across panels (families run different PX variants)
    palette = plt.get_cmap("tab20").colors
    colour = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    for i, protocol in enumerate(protocols):
        prows = [r for r in rows if r.get("protocol", "init") == protocol]
        field = "accuracy" if protocol == "init" else "after_finetune"
        summary = summarise(prows, field)
        for ax, f in zip(axes[i], fams, strict=True):
            for m in methods:
                if m == "dense":
                    continue
                srows = sorted(
                    (r for r in summary if r["family"] == f and r["method"] == m),
                    key=lambda r: r["sparsity"],
                )
                if not srows:
                    continue
                ax.errorbar(
                    [-math.log10(1 - r["sparsity"]) for r in srows],
                    [100 * r["mean"] for r in srows],
                    yerr=[100 * r["std"] for r in srows],
                    label=m,
                    color=colour[m],
                    marker="o",
                    capsize=2,
                    linewidth=2.2 if m.startswith("px") else 1.0,
                )
            dense = [r for r in summarise(rows) if r["family"] == f and r["method"] == "dense"]
            if dense:
                ax.axhline(100 * dense[0]["mean"], color="k", linestyle="--", label="dense")
            ticks = sorted({r["sparsity"] for r in summary if r["method"] != "dense"})
            ax.set_xticks([-math.log10(1 - s) for s in ticks])
            ax.set_xticklabels([f"{100 * s:g}" for s in ticks])
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("top-1 test accuracy (%)")
            what = "pruned at init" if protocol == "init" else "trained, pruned, fine-tuned"
            ax.set_title(f"{data}, {f}, {what}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


BEGIN = "<!-- bench_quality:begin (generated by scripts/bench_quality.py --write-docs) -->"
END = "<!-- bench_quality:end -->"


def markers(data: str) -> tuple[str, str]:
    if data == "digits":
        return BEGIN, END
    return (
        f"<!-- bench_quality:begin {data} (generated by scripts/bench_quality.py --write-docs) -->",
        f"<!-- bench_quality:end {data} -->",
    )


def select_recipe(rows: list[dict]) -> list[dict]:
    """Per data set and family, the rows of the recipe with the most recent run."""
    last: dict[tuple, str] = {}
    for r in rows:
        last[(r.get("data", "digits"), r["family"])] = r.get("recipe_id")
    return [r for r in rows if r.get("recipe_id") == last[(r.get("data", "digits"), r["family"])]]


def write_docs(rows, docs: Path, recipes: dict) -> None:
    """Replace each data set's generated block of docs/benchmarks.md; write the PNGs."""
    docs.mkdir(parents=True, exist_ok=True)
    md = docs / "benchmarks.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n\n"
    for data in DATA:
        drows = [r for r in rows if r.get("data", "digits") == data]
        if not drows:
            continue
        png = docs / ("bench_quality.png" if data == "digits" else f"bench_quality_{data}.png")
        plot(drows, png, data)
        begin, end = markers(data)
        codes = sorted({r.get("code") for r in drows if r.get("code")})
        block = "\n".join(
            [
                begin,
                "",
                f"Recipe ({data}): `" + json.dumps(recipes.get(data), sort_keys=True) + "`",
                "",
                f"{len(drows)} runs; scoring-code versions in these rows: "
                + (", ".join(codes) if codes else "not recorded"),
                "",
                markdown_tables(drows, data),
                f"![accuracy vs sparsity]({png.name})",
                "",
                end,
            ]
        )
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)


def legacy_result(rows, mode, recipe, wall_s) -> dict:
    """The printed JSON: the runs split by protocol, with a summary of the at-init runs."""
    at_init = [r for r in rows if r.get("protocol", "init") == "init"]
    trained = [r for r in rows if r.get("protocol") == "trained"]
    return {
        "mode": mode,
        "recipe": recipe,
        "at_init": at_init,
        "trained": trained,
        "summary": summarise(at_init),
        "trained_summary": summarise(trained, "after_finetune") if trained else [],
        "wall_s": wall_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a CI-sized run on digits (< 60 s)")
    p.add_argument("--data", choices=DATA, default="digits")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--methods", nargs="+", default=None, help="NAME or px[key=value,...]")
    p.add_argument("--sparsities", nargs="+", type=float, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument(
        "--protocols", nargs="+", choices=("init", "trained"), default=["init", "trained"]
    )
    p.add_argument("--rounds", type=int, default=None, help="px/synflow rounds")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument(
        "--layer-densities",
        nargs=2,
        metavar=("FAMILY", "SPARSITY"),
        help="only prune (seed 0) and print each tensor's kept fraction per method",
    )
    p.add_argument(
        "--markdown", action="store_true", help="with --layer-densities: a markdown table"
    )
    p.add_argument("--cache", type=Path, default=None, help="JSONL of finished runs")
    p.add_argument("--no-cache", action="store_true", help="run everything, store nothing")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--merge",
        nargs="*",
        type=Path,
        help="tables from these JSONL caches / --out files (none: the default cache)",
    )
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md + PNGs")
    p.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    p.add_argument("--progress", action="store_true", help="one JSON line per run on stderr")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    cfg = dict(QUICK if a.quick else RECIPES[a.data])
    data = "digits" if a.quick else a.data
    for k, v in (("rounds", a.rounds), ("epochs", a.epochs), ("train_limit", a.train_limit)):
        if v:
            cfg[k] = v
    if a.sparsities:
        cfg["sparsities"] = a.sparsities
        cfg["trained_sparsities"] = [s for s in a.sparsities if s in cfg["trained_sparsities"]]
    methods = a.methods or list(QUICK_METHODS if a.quick else DEFAULT_METHODS)
    for m in methods:
        parse_method(m)

    if a.layer_densities:
        family, sparsity = a.layer_densities[0], float(a.layer_densities[1])
        proto = "trained" if a.protocols == ["trained"] else "init"
        out = layer_densities(data, family, sparsity, cfg, methods, proto)
        print(density_table(out) if a.markdown else json.dumps(out, indent=1))
        return 0
    if a.merge is not None:
        paths = a.merge or [DEFAULT_CACHE]
        rows = select_recipe([r for path in paths for r in read_rows(path)])
        recipes = dict(RECIPES)
        for path in paths:  # an --out file carries its own recipe
            if path.suffix == ".json":
                recipes["digits"] = json.loads(path.read_text())["recipe"]
        result = legacy_result(rows, "merged", recipes, None)
    else:
        cache_path = None if a.no_cache else (a.cache or (None if a.quick else DEFAULT_CACHE))
        cache = Cache(cache_path)
        seeds = a.seeds or ([0] if a.quick else list(SEEDS))

        def log(row):
            if a.progress:
                print(json.dumps(row), file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        rows = []
        for f in a.families:
            rows += run_family(data, f, cfg, methods, seeds, a.protocols, cache, log)
        recipe = {**cfg, "threads": a.threads, "seeds": seeds, "data": data}
        result = legacy_result(
            rows, "quick" if a.quick else "full", recipe, round(time.perf_counter() - t0, 1)
        )
        recipes = {data: recipe}
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    if a.write_docs:
        write_docs(rows, a.docs_dir, recipes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
