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
* ``quality`` (``--quality``) — bench_quality's at-init recipe (digits, prune at
  init, train with masks fixed, top-1 on the test split) with 100-round PX,
  default ``refresh`` vs ``"every"``, per family × sparsity × seed.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import DIGITS as FULL  # noqa: E402
from bench_quality import accuracy, build, load_digits_data, train_recipe  # noqa: E402

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
    size = FULL["size"][family]
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
    model = build(family, FULL["size"][family], 0)
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
    model = build(family, FULL["size"][family], 0)
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
    model = build(family, FULL["size"][family], 0)
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
    size = FULL["size"][base]
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


def quality_rows(family, sparsities, seeds, rounds, refresh_values):
    from hf_px.training import finetune

    size = FULL["size"][family]
    train, test, calibration = load_digits_data(
        size, FULL["calibration_per_class"], FULL["batch_size"]
    )
    rows = []
    for seed in seeds:
        for s in sparsities:
            for refresh in refresh_values:
                model = build(family, size, seed)
                t0 = time.process_time()
                result = prune(
                    model, calibration, s, "px", rounds=rounds, seed=seed, refresh=refresh
                )
                prune_s = time.process_time() - t0
                finetune(model, result.masks, train, seed=seed, **train_recipe(FULL))
                rows.append(
                    {
                        "family": family,
                        "sparsity": s,
                        "seed": seed,
                        "refresh": refresh,
                        "rounds": rounds,
                        "accuracy": accuracy(model, test),
                        "prune_cpu_s": round(prune_s, 2),
                        "masks": {n: m.clone() for n, m in result.masks.items()},
                    }
                )
                print(
                    json.dumps({k: v for k, v in rows[-1].items() if k != "masks"}),
                    file=sys.stderr,
                    flush=True,
                )
    # kept-weight overlap of each row's masks with the full recompute's (same seed, sparsity)
    full = {(r["seed"], r["sparsity"]): r["masks"] for r in rows if r["refresh"] == "every"}
    for r in rows:
        ref = full.get((r["seed"], r["sparsity"]))
        r["overlap_vs_every"] = None if ref is None else round(_kept_overlap(ref, r["masks"]), 4)
        del r["masks"]
    return rows


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
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rounds = a.rounds or ([1, 2] if a.quick else [1, 10, 100])
    batches = a.batches or ([1, 2] if a.quick else [1, 2, 4])
    repeats = a.repeats or (1 if a.quick else 3)
    if a.cache or a.full_size is not None or a.quality:
        out: dict = {"threads": 1}
        if a.quality:
            out["quality"] = []
            for f in a.families:
                out["quality"] += quality_rows(
                    f, a.sparsities, a.seeds, max(rounds), ["every", a.refresh]
                )
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
