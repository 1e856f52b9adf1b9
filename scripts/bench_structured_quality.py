"""Structured pruning of trained Fashion-MNIST models: structured PX vs L1 / Taylor / random.

    python scripts/bench_structured_quality.py [--models-dir ~/.cache/hf-px/fmnist-models]
        [--families resnet convnext vit] [--methods px l1 taylor random]
        [--remove 0.25 0.5 0.75] [--seeds 0] [--train-limit 10000] [--threads 2]
        [--round-to 1]

The dense models are ``save_pretrained`` directories ``<models-dir>/<family>/`` (made by
``scripts/train_fmnist_models.py``), loaded by path with their own image
processor. Per family × method × fraction × seed: prune the units (every kind of the
family, ``--remove`` of the MACs per image), re-estimate BatchNorm statistics on the
calibration images, remove the units physically, measure top-1 on the test split; then
fine-tune the smaller model for one epoch (AdamW, lr 1e-3 cosine, batch 128, on the
first ``--train-limit`` training images, shuffled by the seed) and measure again.
Calibration: 10 training images per class (two batches). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from hf_px import HfPxError, recalibrate_batchnorm  # noqa: E402
from hf_px.loading import load_model  # noqa: E402
from hf_px.structured import prune_structured, resolve_kinds, shrink  # noqa: E402
from hf_px.training import finetune  # noqa: E402

DEFAULT_DIR = Path("~/.cache/hf-px/fmnist-models").expanduser()


def load_data(processor, train_limit: int, test_limit: int | None):
    import datasets
    from fashion_mnist import FashionMnistMissing, fashion_mnist

    from hf_px.calibration import load_calibration_batches, load_labelled_batches

    try:
        dd = datasets.DatasetDict(
            train=fashion_mnist("train", train_limit), test=fashion_mnist("test", test_limit)
        )
    except FashionMnistMissing as err:
        raise SystemExit(f"error: {err}") from None
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as tmp:
        dd.save_to_disk(tmp)
        train = load_labelled_batches(tmp, image_processor=processor, batch_size=128)
        test = load_labelled_batches(tmp, image_processor=processor, split="test", batch_size=256)
        calibration = load_calibration_batches(
            tmp, image_processor=processor, examples_per_class=10, batch_size=50, seed=0
        )
    return train, test, calibration


@torch.no_grad()
def accuracy(model, test) -> float:
    model.eval()
    correct = total = 0
    for b in test:
        pred = model(pixel_values=b["pixel_values"]).logits.argmax(-1)
        correct += int((pred == b["labels"]).sum())
        total += len(b["labels"])
    return correct / total


def finetune_epoch(model, train, seed: int, lr: float = 1e-3) -> None:
    """One epoch of the library's fine-tuning loop on the smaller model (no masks: the
    removed units are gone): AdamW, weight decay 0.01, cosine to 0, images reshuffled
    into batches of 128 by the seed, no clipping."""
    finetune(model, None, train, epochs=1, lr=lr, optimizer="adamw", weight_decay=0.01,
             seed=seed, schedule="cosine", max_grad_norm=None, shuffle="images")  # fmt: skip


#: what ``auto`` meant for rows written before they recorded their unit kinds
OLD_AUTO = {"resnet": "channels", "convnext": "channels", "vit": "neurons+heads"}


def structure_of(row: dict) -> str:
    """The unit kinds, and the width multiple when it is not 1 (its own table)."""
    kinds = "+".join(row["structure"]) if "structure" in row else OLD_AUTO[row["family"]]
    step = int(row.get("round_to", 1))
    return kinds if step == 1 else f"{kinds}, widths in multiples of {step}"


def run_key(row: dict) -> tuple:
    return (row["family"], row["method"], float(row["remove"]), int(row["seed"]), structure_of(row))


def read_runs(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("method") != "dense"]


def append_run(path: Path | None, row: dict) -> None:
    """One JSON line, under a lock: several processes (one per seed) share the file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)


METHOD_LABELS = {
    "px[form=fisher]": "structured PX (fisher, default for trained weights)",
    "px[form=bound]": "structured PX (bound)",
    "l1": "L1 (Li et al.)",
    "taylor": "Taylor (Molchanov et al.)",
    "random": "random",
}
BASELINES = ("l1", "taylor", "random")
DENSE = {"resnet": 90.06, "convnext": 88.26, "vit": 82.84}  # train_fmnist_models.py's cache


def _cells(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        key = ((r["family"], structure_of(r)), float(r["remove"]), r["method"])
        out.setdefault(key, []).append(r)
    return out


def _mean(rows: list[dict], key: str) -> float:
    return 100 * sum(r[key] for r in rows) / len(rows)


def _family_order(key: tuple[str, str]) -> tuple[int, str]:
    return (("resnet", "convnext", "vit").index(key[0]), key[1])


def tables(rows: list[dict]) -> str:
    """Markdown: per family, MACs removed × method, mean over seeds of top-1 right after
    pruning → after the epoch (seed count in the cell when not 3), best after in bold."""
    cells = _cells(rows)
    methods = [m for m in METHOD_LABELS if any(k[2] == m for k in cells)]
    parts = []
    for family in sorted({k[0] for k in cells}, key=_family_order):
        removes = sorted({k[1] for k in cells if k[0] == family})
        head = f"| MACs removed | {' | '.join(METHOD_LABELS[m] for m in methods)} |"
        lines = [
            f"**{family[0]}**, units: {family[1]} (dense {DENSE[family[0]]:.2f}%; cell: mean top-1 % right after "
            "pruning → after one epoch over the seeds run (3 unless the cell says), best "
            "after the epoch in bold)",
            "",
            head,
            "|---|" + "---|" * len(methods),
        ]
        for remove in removes:
            got = {m: cells.get((family, remove, m), []) for m in methods}
            reach = [r for rs in got.values() for r in rs if "out_of_reach" in r]
            if reach:
                why = reach[0]["out_of_reach"].split(": ", 1)[-1].split(" (")[0]
                lines.append(f"| {remove:.0%} | out of reach: {why} |" + " |" * (len(methods) - 1))
                continue
            after = {m: _mean(rs, "accuracy_finetuned") for m, rs in got.items() if rs}
            best = max(after.values())
            row = []
            for m in methods:
                rs = got[m]
                if not rs:
                    row.append("–")
                    continue
                a, f = _mean(rs, "accuracy_pruned"), after[m]
                fin = f"**{f:.2f}**" if f == best else f"{f:.2f}"
                n = "" if len(rs) == 3 else f" ({len(rs)} seed{'s' if len(rs) > 1 else ''})"
                row.append(f"{a:.2f} → {fin}{n}")
            lines.append(f"| {remove:.0%} | {' | '.join(row)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def goals_table(rows: list[dict], default: str = "px[form=fisher]") -> str:
    """The default structured PX against the best baseline after the epoch, per cell (the
    default settings only: rows with a width multiple are left out)."""
    cells = _cells([r for r in rows if int(r.get("round_to", 1)) == 1])
    lines = [
        "| family | MACs removed | structured PX (default) | best baseline | difference | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for family in sorted({k[0] for k in cells}, key=_family_order):
        for remove in sorted({k[1] for k in cells if k[0] == family}):
            px = [r for r in cells.get((family, remove, default), []) if "out_of_reach" not in r]
            base = {
                m: rs
                for m in BASELINES
                if (
                    rs := [r for r in cells.get((family, remove, m), []) if "out_of_reach" not in r]
                )
            }
            if not px or not base:
                continue
            m, rs = max(base.items(), key=lambda kv: _mean(kv[1], "accuracy_finetuned"))
            a, b = _mean(px, "accuracy_finetuned"), _mean(rs, "accuracy_finetuned")
            lines.append(
                f"| {family[0]} ({family[1]}) | {remove:.0%} | {a:.2f} | {m} {b:.2f} | {a - b:+.2f} | "
                f"{len(px)} / {len(rs)} |"
            )
    return "\n".join(lines)


def replace_block(path: Path, name: str, body: str) -> None:
    """Swap the text between ``<!-- bench_structured:NAME:begin/end -->`` markers."""
    begin, end = f"<!-- bench_structured:{name}:begin -->", f"<!-- bench_structured:{name}:end -->"
    text = path.read_text()
    if begin not in text:
        raise SystemExit(f"error: {path} has no {begin} marker")
    start, stop = text.index(begin), text.index(end) + len(end)
    path.write_text(text[:start] + f"{begin}\n\n{body}\n\n{end}" + text[stop:])


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    """``px[form=fisher]`` → ("px", {"form": "fisher"}); a bare name has no options."""
    name, _, rest = spec.partition("[")
    pairs = [kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv]
    return name, {k: v for k, v in pairs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--families", nargs="+", default=["resnet", "convnext", "vit"])
    p.add_argument("--methods", nargs="+", default=["px", "l1", "taylor", "random"])
    p.add_argument("--remove", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--rounds", type=int, default=None, help="default: the method's own")
    p.add_argument("--structure", default="auto", help="unit kinds (auto: all of the family)")
    p.add_argument("--round-to", type=int, default=1, help="widths in multiples of N")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--runs", type=Path, default=None,
        help="JSONL cache: each finished cell is appended; cells already there are skipped",
    )  # fmt: skip
    p.add_argument(
        "--write-docs", action="store_true",
        help="only write the tables of --runs into docs/benchmarks.md and docs/method.md",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.write_docs:
        rows = read_runs(a.runs or ROOT / "docs" / "bench_structured_runs.jsonl")
        replace_block(ROOT / "docs" / "benchmarks.md", "tables", tables(rows))
        replace_block(ROOT / "docs" / "method.md", "goals", goals_table(rows))
        return 0
    done = {run_key(r) for r in read_runs(a.runs)} if a.runs else set()
    missing = [f for f in a.families if not (a.models_dir / f / "config.json").is_file()]
    if missing:
        raise SystemExit(
            f"error: no trained model for {', '.join(missing)} under {a.models_dir} "
            "(expected <models-dir>/<family>/config.json); train them with "
            "scripts/train_fmnist_models.py or pass --models-dir"
        )
    torch.set_num_threads(a.threads)
    out = {"settings": {k: str(v) for k, v in vars(a).items()}, "results": []}
    for family in a.families:
        dense, processor = load_model(str(a.models_dir / family))
        dense.eval()
        train, test, calibration = load_data(processor, a.train_limit, a.test_limit)
        base = accuracy(dense, test)
        kinds = resolve_kinds(dense, a.structure)
        out["results"].append({"family": family, "method": "dense", "accuracy": base})
        print(f"{family}: dense {base:.4f}", file=sys.stderr, flush=True)
        for remove in a.remove:
            for method in a.methods:
                for seed in a.seeds:
                    step = {"round_to": a.round_to} if a.round_to != 1 else {}
                    key = run_key({"family": family, "method": method, "remove": remove,
                                   "seed": seed, "structure": kinds, **step})  # fmt: skip
                    if key in done:
                        continue
                    model = copy.deepcopy(dense)
                    name, options = parse_method(method)
                    t0 = time.perf_counter()
                    try:
                        res = prune_structured(
                            model, calibration, remove, method=name, rounds=a.rounds, seed=seed,
                            structure=kinds, round_to=a.round_to, **options,
                        )  # fmt: skip
                    except HfPxError as err:  # e.g. more MACs than the unit kinds hold
                        row = {"family": family, "method": method, "remove": remove}
                        row["structure"] = kinds
                        row = {**row, "seed": seed, **step, "out_of_reach": str(err)}
                        out["results"].append(row)
                        append_run(a.runs, row)
                        print(f"{family} {method} {remove}: {err}", file=sys.stderr, flush=True)
                        continue
                    recalibrate_batchnorm(model, calibration)
                    shrink(model, res.groups, res.kept)
                    pruned = accuracy(model, test)
                    prune_s = time.perf_counter() - t0
                    finetune_epoch(model, train, seed)
                    row = {
                        "family": family,
                        "method": method,
                        "remove": remove,
                        "seed": seed,
                        "structure": kinds,
                        **step,
                        "removed_macs": res.removed["macs"],
                        "accuracy_pruned": pruned,
                        "accuracy_finetuned": accuracy(model, test),
                        "prune_s": round(prune_s, 1),
                    }
                    out["results"].append(row)
                    append_run(a.runs, row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
