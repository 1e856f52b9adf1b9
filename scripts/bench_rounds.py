"""How a PX prune run scales with rounds and calibration batches, and what each
method costs per batch relative to SNIP, on the small models of bench_quality.

    python scripts/bench_rounds.py [--quick] [--families resnet vit convnext]
        [--rounds 1 10 100] [--batches 1 2 4] [--batch-size 25] [--profile]

Digits calibration batches (``--batch-size`` images each) at the families'
bench_quality input sizes; one thread. Times are process CPU seconds
(``time.process_time``: on a shared machine wall time measures the neighbours),
best of ``--repeats``. Prints one JSON object:

* ``scaling`` — PX prune at 90% for every rounds × batches pair: total seconds
  and seconds per round per batch;
* ``per_batch`` — one `compute_scores` pass per method on the largest batch
  count, seconds per batch and the ratio to SNIP's in the same run;
* ``profile`` (``--profile``) — the functions with the most cumulative time in a
  10-round PX run, to spot work repeated every round.
* ``cache`` (``--cache``) — PX's data-side cache: a 100-round prune with the
  default ``refresh`` and with ``refresh="every"`` (the full recompute) in SNIP-pass
  equivalents (prune CPU seconds / one SNIP `compute_scores` on the same data,
  same run), per-phase seconds, data refreshes, and the kept-weight overlap
  |A∩B|/|A| of the two masks per sparsity; two yardsticks for that overlap: the
  full recompute on a second, disjoint calibration draw of the same size, and the
  full recompute with 2 threads (round-off only).
* ``full_size`` (``--full-size``) — the same cost figures on full-size configs
  (ResNet-50, ViT-base, ConvNeXt-tiny, 1000 classes, random init; by default the
  data a default `hf-px prune` uses: ``--images 100`` random images at
  ``--image-size 224`` in batches of 8), extrapolated: CPU seconds of a refreshed
  and of a reused round from the default prune's first ``--every-rounds`` rounds,
  of a full round from the full recompute's first round, times the schedule's
  counts; ``--complete`` also runs the whole default prune and measures it.
* ``quality`` (``--quality``) — bench_quality's at-init recipe for ``--data``
  (digits or fashion-mnist: prune at init, train with masks fixed, top-1 on the
  test split) with 100-round PX at the current default ``bn`` / ``norm``, for
  ``"every"`` and each of ``--refresh-values``, per family × sparsity × seed;
  each row has its data refreshes, prune CPU seconds and kept-weight overlap with
  the same seed's full recompute, the full-recompute rows two yardsticks: the
  overlap of a full recompute on a disjoint calibration draw of the same size, and
  of one with 2 threads (round-off only);
  ``quality_summary`` has mean ± sd over seeds. Runs are cached in
  ``--quality-cache`` (bench_quality's cache and run key), so an interrupted run
  resumes; ``--markdown`` prints the summary as a table.

    nice -n 10 python scripts/bench_rounds.py --quality --data fashion-mnist \\
        --rounds 100 --refresh-values every 0.3 0.5
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import (  # noqa: E402
    DIGITS,
    FAMILIES,
    RECIPES,
    Cache,
    accuracy,
    build,
    code_version,
    finetune,
    load_data,
    load_digits_data,
    parse_method,
    recipe_id,
    train_recipe,
)

from hf_px import compute_scores, prune  # noqa: E402
from hf_px.methods.px import DEFAULT_REFRESH  # noqa: E402

SCORING = {
    "snip": ("snip", {}),
    "grasp": ("grasp", {}),
    "synflow": ("synflow", {}),
    "px": ("px", {}),
    "px-rms": ("px", {"bn": "rms"}),
}


def calibration(family: str, n_batches: int, batch_size: int):
    size = DIGITS["size"][family]
    train, _, _ = load_digits_data(size, 1, batch_size)
    return train[:n_batches]


def cpu_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def variants(family: str) -> list[str]:
    return ["px", "px-rms"] if family == "resnet" else ["px"]


def scaling(family, rounds_list, batches_list, batch_size, repeats):
    rows = []
    model = build(family, DIGITS["size"][family], 0)
    for variant in variants(family):
        opts = SCORING[variant][1]
        for nb in batches_list:
            data = calibration(family, nb, batch_size)
            for r in rounds_list:
                reps = repeats if r < 100 else 1
                t = cpu_time(
                    lambda r=r, data=data, opts=opts: prune(
                        copy.deepcopy(model), data, 0.9, "px", rounds=r, **opts
                    ),
                    reps,
                )
                rows.append(
                    {
                        "family": family,
                        "method": variant,
                        "rounds": r,
                        "batches": nb,
                        "batch_size": batch_size,
                        "cpu_s": round(t, 4),
                        "cpu_s_per_round_batch": round(t / (r * nb), 5),
                    }
                )
    return rows


def per_batch(family, n_batches, batch_size, repeats):
    model = build(family, DIGITS["size"][family], 0)
    data = calibration(family, n_batches, batch_size)
    names = [m for m in SCORING if m != "px-rms" or family == "resnet"]
    out = {}
    for name in names:
        method, opts = SCORING[name]
        compute_scores(model, data[:1], method=method, **opts)  # warm-up
        t = cpu_time(lambda m=method, o=opts: compute_scores(model, data, method=m, **o), repeats)
        out[name] = t / n_batches
    snip = out["snip"]
    return [
        {
            "family": family,
            "method": m,
            "cpu_s_per_batch": round(t, 5),
            "ratio_to_snip": round(t / snip, 2),
        }
        for m, t in out.items()
    ]


def profile(family, batch_size, rounds=10, n_batches=2, **opts):
    model = build(family, DIGITS["size"][family], 0)
    data = calibration(family, n_batches, batch_size)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    prune(model, data, 0.9, "px", rounds=rounds, **opts)
    prof.disable()
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "hf_px" in file or "torch/nn/modules/module.py" in file and fn == "_call_impl":
            rows.append(
                {
                    "function": f"{Path(file).name}:{line}:{fn}",
                    "calls": nc,
                    "cumulative_s": round(ct, 4),
                    "share": round(ct / total, 3) if total else 0.0,
                }
            )
    rows.sort(key=lambda r: -r["cumulative_s"])
    return {
        "family": family,
        "rounds": rounds,
        "batches": n_batches,
        "total_s": total,
        "top": rows[:25],
    }


def _kept_overlap(a, b) -> float:
    kept = sum(int(a[n].sum()) for n in a)
    return sum(int((a[n] & b[n]).sum()) for n in a) / max(1, kept)


def _timed_prune(model, data, sparsity, rounds, **opts):
    t0 = time.process_time()
    result = prune(copy.deepcopy(model), data, sparsity, "px", rounds=rounds, **opts)
    return result, time.process_time() - t0


def _snip_s(model, data, repeats):
    compute_scores(model, data[:1], method="snip")  # warm-up
    return cpu_time(lambda: compute_scores(model, data, method="snip"), repeats)


def _phases(result) -> dict:
    return {k: round(v, 3) for k, v in result.timings.items()}


def cache_rows(family, sparsities, batch_size, n_batches, repeats, rounds, refresh):
    """Default vs full recompute on the bench_quality models (digits)."""
    base = family.removesuffix("-rms")  # resnet-rms: the ResNet with bn="rms"
    size = DIGITS["size"][base]
    train, _, _ = load_digits_data(size, 1, batch_size)
    data = train[:n_batches]
    other = train[n_batches : 2 * n_batches]  # disjoint draw, same size
    model = build(base, size, 0)
    opts = {"bn": "rms"} if family == "resnet-rms" else {}
    snip = _snip_s(model, data, repeats)
    rows = []
    for s in sparsities:
        full, t_full = _timed_prune(model, data, s, rounds, refresh="every", **opts)
        fast, t_fast = _timed_prune(model, data, s, rounds, refresh=refresh, **opts)
        other_full, _ = _timed_prune(model, other, s, rounds, refresh="every", **opts)
        torch.set_num_threads(2)
        threads2, _ = _timed_prune(model, data, s, rounds, refresh="every", **opts)
        torch.set_num_threads(1)
        rows.append(
            {
                "family": family,
                "sparsity": s,
                "rounds": rounds,
                "refresh": refresh,
                "images": sum(len(b["pixel_values"]) for b in data),
                "snip_cpu_s": round(snip, 4),
                "every_cpu_s": round(t_full, 3),
                "default_cpu_s": round(t_fast, 3),
                "every_snip_passes": round(t_full / snip, 1),
                "default_snip_passes": round(t_fast / snip, 1),
                "data_refreshes": sum(1 for h in fast.history if h.get("data_refreshed")),
                "max_data_drift": max(
                    (h["data_drift"] for h in fast.history if "data_drift" in h), default=0.0
                ),
                "overlap_default_vs_every": round(_kept_overlap(full.masks, fast.masks), 4),
                "overlap_other_data_vs_every": round(
                    _kept_overlap(full.masks, other_full.masks), 4
                ),
                "overlap_2threads_vs_every": round(_kept_overlap(full.masks, threads2.masks), 4),
                "every_phases": _phases(full),
                "default_phases": _phases(fast),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def refresh_value(text: str):
    """``--refresh-values`` item: ``every`` or a fraction."""
    return text if text == "every" else float(text)


def quality_method(family: str, refresh) -> str:
    """bench_quality's spelling of PX with the current default bn / norm written out, so
    that a later change of px's defaults cannot relabel cached rows."""
    from hf_px.methods.px import DEFAULTS

    mode = f"bn={DEFAULTS['bn']}" if family == "resnet" else f"norm={DEFAULTS['norm']}"
    return f"px[{mode},refresh={refresh}]"


def disjoint_calibration(train, calibration):
    """A second calibration draw from the training batches: as many images per class,
    in batches of the same size, none of them an image of `calibration`."""
    taken = {x.numpy().tobytes() for b in calibration for x in b["pixel_values"]}
    labels = torch.cat([b["labels"] for b in calibration])
    want = {int(c): int((labels == c).sum()) for c in labels.unique()}
    picked: dict[int, list] = {c: [] for c in want}
    found = 0
    for b in train:
        for x, y in zip(b["pixel_values"], b["labels"], strict=True):
            c, key = int(y), x.numpy().tobytes()
            if key in taken:
                found += 1
            elif c in picked and len(picked[c]) < want[c]:
                picked[c].append(x)
    if found < len(taken) or any(len(picked[c]) < want[c] for c in want):
        raise SystemExit("error: cannot draw a disjoint calibration set from the train split")
    xs = torch.stack([x for c in sorted(picked) for x in picked[c]])
    ys = torch.tensor([c for c in sorted(picked) for _ in picked[c]])
    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))
    size = len(calibration[0]["labels"])
    return [
        {"pixel_values": xs[order[i : i + size]], "labels": ys[order[i : i + size]]}
        for i in range(0, len(ys), size)
    ]


def quality_rows(data, family, sparsities, seeds, rounds, refresh_values, cache):
    """bench_quality's at-init runs (its recipe for `data`, `rounds`-round PX) per
    refresh value × sparsity × seed, cached by bench_quality's run key. Each row has
    its kept-weight overlap with the same seed's full recompute; the full-recompute
    rows the overlaps of a full recompute on a disjoint calibration draw and of one
    with 2 threads (the yardsticks)."""
    cfg = {**RECIPES[data], "rounds": rounds}
    size = cfg["size"][family]
    common = {"data": data, "family": family, "recipe_id": recipe_id(data, family, cfg)}
    code = code_version()
    loaded: list = []

    def get():
        if not loaded:
            train, test, calibration = load_data(data, family, cfg)
            loaded.extend([train, test, calibration, disjoint_calibration(train, calibration)])
        return loaded

    def px(model, batches, s, seed, refresh):
        t0 = time.process_time()
        m = quality_method(family, refresh)
        opts = parse_method(m)[1]
        result = prune(model, batches, s, "px", rounds=rounds, seed=seed, **opts)
        return result, time.process_time() - t0

    rows = []
    order = ["every", *(v for v in dict.fromkeys(refresh_values) if v != "every")]
    for seed in seeds:
        for s in sparsities:
            every_masks = None
            for refresh in order:
                method = quality_method(family, refresh)
                key = (data, family, method, float(s), seed, "init", common["recipe_id"])
                row = cache.get(key)
                if row is not None:
                    rows.append(row)
                    continue
                train, test, calibration, other = get()
                model = build(family, size, seed, data)
                result, prune_s = px(model, calibration, s, seed, refresh)
                if refresh == "every":
                    every_masks = {n: m.clone() for n, m in result.masks.items()}
                    yard, _ = px(build(family, size, seed, data), other, s, seed, "every")
                    torch.set_num_threads(2)
                    two, _ = px(build(family, size, seed, data), calibration, s, seed, "every")
                    torch.set_num_threads(1)
                    extra = {
                        "overlap_other_data_vs_every": _kept_overlap(every_masks, yard.masks),
                        "overlap_2threads_vs_every": _kept_overlap(every_masks, two.masks),
                    }
                else:
                    if every_masks is None:  # cached full-recompute row: masks re-pruned
                        ref, _ = px(build(family, size, seed, data), calibration, s, seed, "every")
                        every_masks = ref.masks
                    extra = {"overlap_vs_every": _kept_overlap(every_masks, result.masks)}
                stats = finetune(model, result.masks, train, seed=seed, **train_recipe(cfg))
                row = {
                    **common,
                    "protocol": "init",
                    "method": method,
                    "refresh": refresh,
                    "sparsity": s,
                    "seed": seed,
                    "rounds": rounds,
                    "accuracy": accuracy(model, test),
                    "final_loss": stats["final_loss"],
                    "revived": stats["pruned_weights_nonzero"],
                    "prune_cpu_s": round(prune_s, 3),
                    "train_s": round(stats["train_s"], 3),
                    "data_refreshes": sum(1 for h in result.history if h.get("data_refreshed")),
                    "threads": torch.get_num_threads(),
                    "code": code,
                    **{k: round(v, 4) for k, v in extra.items()},
                }
                cache.put(row)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def quality_summary(rows) -> list[dict]:
    """Per data × family × sparsity × refresh: accuracy mean ± sd over seeds, the mean
    paired difference to the full recompute (same seed), overlaps, refreshes, CPU."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["family"], r["sparsity"], str(r["refresh"])), []).append(r)

    def mean_sd(xs):
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    out = []
    for (d, f, s, refresh), rs in sorted(groups.items()):
        full = {r["seed"]: r for r in groups.get((d, f, s, "every"), [])}
        acc, sd = mean_sd([r["accuracy"] for r in rs])
        row = {
            "data": d,
            "family": f,
            "sparsity": s,
            "refresh": refresh,
            "seeds": sorted(r["seed"] for r in rs),
            "accuracy_mean": round(acc, 4),
            "accuracy_sd": round(sd, 4),
            "data_refreshes": statistics.fmean(r["data_refreshes"] for r in rs),
            "prune_cpu_s": round(statistics.fmean(r["prune_cpu_s"] for r in rs), 2),
        }
        for field in (
            "overlap_vs_every",
            "overlap_other_data_vs_every",
            "overlap_2threads_vs_every",
        ):
            vals = [r[field] for r in rs if r.get(field) is not None]
            if vals:
                row[field] = round(statistics.fmean(vals), 4)
        paired = [r["accuracy"] - full[r["seed"]]["accuracy"] for r in rs if r["seed"] in full]
        if refresh != "every" and paired:
            diff, dsd = mean_sd(paired)
            every_sd = mean_sd([r["accuracy"] for r in full.values()])[1]
            row.update(
                paired_diff_mean=round(diff, 4),
                paired_diff_sd=round(dsd, 4),
                within_every_sd=abs(acc - mean_sd([r["accuracy"] for r in full.values()])[0])
                <= every_sd,
            )
        out.append(row)
    return out


def quality_markdown(summary) -> str:
    """The summary as docs/benchmarks.md's tables: accuracy (mean ± sd over seeds, with
    the mean paired difference to the full recompute), mask overlaps, cost."""
    cells = {(r["data"], r["family"], r["sparsity"], r["refresh"]): r for r in summary}
    keys = sorted({k[:3] for k in cells}, key=lambda k: (k[0], FAMILIES.index(k[1]), k[2]))
    values = sorted({k[3] for k in cells}, key=lambda v: (v != "every", v))
    others = [v for v in values if v != "every"]

    def acc(r):
        txt = f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_sd']:.1f}"
        if "paired_diff_mean" in r:
            txt += f" ({100 * r['paired_diff_mean']:+.1f})"
        return txt

    def fmt(r, field, spec):
        return "–" if r is None or r.get(field) is None else format(r[field], spec)

    head = "| data, family | sparsity | "
    tables = [
        [head + " | ".join(f"refresh {v}" for v in values) + " |"],
        [
            head
            + " | ".join(f"{v} vs every" for v in others)
            + " | other data vs every | 2 threads vs every |"
        ],
        [
            head
            + " | ".join(f"passes {v}" for v in values)
            + " | "
            + " | ".join(f"CPU s {v}" for v in values)
            + " |"
        ],
    ]
    for lines in tables:
        lines.append("|---|---|" + "---|" * (lines[0].count("|") - 3))
    for d, f, s in keys:
        rs = [cells.get((d, f, s, v)) for v in values]
        every = cells.get((d, f, s, "every"))
        lead = f"| {d}, {f} | {100 * s:g}% | "
        tables[0].append(lead + " | ".join("–" if r is None else acc(r) for r in rs) + " |")
        tables[1].append(
            lead
            + " | ".join(fmt(cells.get((d, f, s, v)), "overlap_vs_every", ".2f") for v in others)
            + (" | " if others else "")
            + fmt(every, "overlap_other_data_vs_every", ".2f")
            + " | "
            + fmt(every, "overlap_2threads_vs_every", ".2f")
            + " |"
        )
        tables[2].append(
            lead
            + " | ".join(fmt(r, "data_refreshes", "g") for r in rs)
            + " | "
            + " | ".join(fmt(r, "prune_cpu_s", ".1f") for r in rs)
            + " |"
        )
    return "\n\n".join("\n".join(lines) for lines in tables)


class _Stop(Exception):
    pass


def _refreshes(sparsity, rounds, refresh) -> int:
    """Data-side computations of a `rounds`-round prune under `refresh` (schedule only)."""
    from hf_px.masks.schedule import densities

    f = float(refresh)
    last, n = None, 0
    for d in [1.0, *densities(sparsity, rounds)[:-1]]:  # density of the masks scored
        if last is None or d <= (1 - f) * last:
            n, last = n + 1, d
    return n


def _full_size_data(image_size, n_images, batch_size):
    from _bench_models import batches

    data = batches(n_images // batch_size, batch_size, image_size, FULL_SIZE_LABELS)
    if n_images % batch_size:  # the remainder as a last, smaller batch (as a data loader gives)
        data += batches(1, n_images % batch_size, image_size, FULL_SIZE_LABELS, seed=1)
    return data


#: full-size configs are ImageNet classifiers
FULL_SIZE_LABELS = 1000


def full_size_row(name, image_size, n_images, batch_size, rounds, stop_after, refresh, complete):
    """Per-round CPU seconds of the default prune's first `stop_after` rounds (refreshed
    and reused rounds apart) and of the full recompute's first round, extrapolated to
    `rounds` rounds with the schedule's refresh count; with `complete`, the whole
    default prune is run and measured as well."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from _bench_models import build as build_full

    model = build_full(name, image_size, FULL_SIZE_LABELS)
    data = _full_size_data(image_size, n_images, batch_size)
    snip = _snip_s(model, data, 1)

    def first_rounds(n, **opts):
        ticks, kinds = [time.process_time()], []

        def stop(info):
            ticks.append(time.process_time())
            kinds.append(bool(info.get("data_refreshed")))
            if info["round"] >= n:
                raise _Stop

        try:
            prune(copy.deepcopy(model), data, 0.9, "px", rounds=rounds, callback=stop, **opts)
        except _Stop:
            pass
        dts = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        ref = [t for t, k in zip(dts, kinds, strict=True) if k]
        reused = [t for t, k in zip(dts, kinds, strict=True) if not k]
        return ref, reused

    ref, reused = first_rounds(stop_after, refresh=refresh)
    every, _ = first_rounds(1, refresh="every")
    n_ref = _refreshes(0.9, rounds, refresh)
    t_ref = sum(ref) / len(ref)
    t_reused = sum(reused) / max(1, len(reused))
    t_every = sum(every) / len(every)
    default_total = n_ref * t_ref + (rounds - n_ref) * t_reused
    row = {
        "model": name,
        "image_size": image_size,
        "images": sum(len(b["pixel_values"]) for b in data),
        "batch_size": batch_size,
        "rounds": rounds,
        "refresh": refresh,
        "snip_cpu_s": round(snip, 3),
        "measured_rounds": {"refreshed": len(ref), "reused": len(reused), "every": len(every)},
        "refreshed_round_cpu_s": round(t_ref, 3),
        "reused_round_cpu_s": round(t_reused, 3),
        "every_round_cpu_s": round(t_every, 3),
        "data_refreshes": n_ref,
        "default_snip_passes_extrapolated": round(default_total / snip, 1),
        "every_snip_passes_extrapolated": round(t_every * rounds / snip, 1),
        "refreshed_round_in_snip_passes": round(t_ref / snip, 3),
        "reused_round_in_snip_passes": round(t_reused / snip, 3),
    }
    if complete:
        result, t_all = _timed_prune(model, data, 0.9, rounds, refresh=refresh)
        row["complete_default_cpu_s"] = round(t_all, 1)
        row["complete_default_snip_passes"] = round(t_all / snip, 1)
        row["complete_data_refreshes"] = sum(1 for h in result.history if h.get("data_refreshed"))
        row["complete_phases"] = _phases(result)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--families", nargs="+", default=["resnet", "vit", "convnext"])
    p.add_argument("--rounds", nargs="+", type=int, default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cache", action="store_true", help="only the data-side cache figures")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98])
    p.add_argument("--refresh", default=DEFAULT_REFRESH)
    p.add_argument("--full-size", nargs="*", default=None, metavar="MODEL")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=100, help="the CLI's default calibration size")
    p.add_argument("--every-rounds", type=int, default=4, help="default-prune rounds measured")
    p.add_argument("--complete", action="store_true", help="also run the whole default prune")
    p.add_argument("--quality", action="store_true")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data", choices=tuple(RECIPES), default="digits", help="with --quality")
    p.add_argument(
        "--refresh-values",
        nargs="+",
        type=refresh_value,
        default=["every", DEFAULT_REFRESH],
        help="with --quality: px refresh values compared with 'every' (always run)",
    )
    p.add_argument(
        "--quality-cache",
        type=Path,
        default=ROOT / "docs" / "bench_rounds_quality_runs.jsonl",
        help="with --quality: JSONL of finished runs (a cached run is not run again)",
    )
    p.add_argument("--no-cache", action="store_true", help="with --quality: store nothing")
    p.add_argument("--markdown", action="store_true", help="with --quality: a markdown table")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rounds = a.rounds or ([1, 2] if a.quick else [1, 10, 100])
    batches = a.batches or ([1, 2] if a.quick else [1, 2, 4])
    repeats = a.repeats or (1 if a.quick else 3)
    if a.cache or a.full_size is not None or a.quality:
        out: dict = {"threads": 1}
        if a.quality:
            cache = Cache(None if a.no_cache else a.quality_cache)
            t0 = time.perf_counter()
            rows = []
            for f in a.families:
                rows += quality_rows(
                    a.data, f, a.sparsities, a.seeds, max(rounds), a.refresh_values, cache
                )
            out.update(
                data=a.data,
                quality_wall_s=round(time.perf_counter() - t0, 1),
                quality=rows,
                quality_summary=quality_summary(rows),
            )
            if a.markdown:
                print(quality_markdown(out["quality_summary"]))
                return 0
        if a.cache:
            out["cache"] = []
            for f in a.families:
                out["cache"] += cache_rows(
                    f,
                    a.sparsities,
                    a.batch_size,
                    max(batches),
                    repeats,
                    max(rounds),
                    a.refresh,
                )
        if a.full_size is not None:
            out["full_size"] = [
                full_size_row(
                    m,
                    a.image_size,
                    a.images,
                    8,
                    max(rounds),
                    a.every_rounds,
                    a.refresh,
                    a.complete,
                )
                for m in (a.full_size or ["resnet50", "vit-base", "convnext-tiny"])
            ]
        print(json.dumps(out, indent=1))
        return 0
    result = {"threads": 1, "sparsity": 0.9, "scaling": [], "per_batch": []}
    for f in a.families:
        result["scaling"] += scaling(f, rounds, batches, a.batch_size, repeats)
        result["per_batch"] += per_batch(f, max(batches), a.batch_size, repeats)
        if a.profile:
            result.setdefault("profile", []).append(profile(f, a.batch_size))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
