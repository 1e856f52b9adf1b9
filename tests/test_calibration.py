"""Calibration data from every source: digits default, image folder, save_to_disk, Hub id."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_px import HfPxError, compute_scores
from hf_px.calibration import (
    dataset_label_names,
    default_image_processor,
    digits_dataset,
    load_calibration_batches,
    load_image_processor,
    load_labelled_batches,
    to_rgb,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def proc():
    return default_image_processor(image_size=16)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def _save(img: Image.Image, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def folder(tmp_path):
    """Three classes, 3 images each (RGB, grey, palette), plus an RGBA PNG and a JPEG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("ant", "bee", "cat"):
        rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        _save(rgb, root / c / "rgb.png")
        _save(rgb.convert("L"), root / c / "grey.png")
        _save(rgb.convert("P"), root / c / "palette.png")
    _save(
        Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8), "RGBA"),
        root / "bee" / "x.png",
    )
    _save(Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)), root / "cat" / "y.jpg")
    return root


# -- the built-in default ------------------------------------------------------------------------
def test_digits_default_is_class_balanced_rgb(proc):
    batches = load_calibration_batches(image_processor=proc, batch_size=32)
    assert isinstance(batches, list) and [len(b["labels"]) for b in batches] == [32, 32, 32, 4]
    x = torch.cat([b["pixel_values"] for b in batches])
    y = torch.cat([b["labels"] for b in batches])
    assert x.shape == (100, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(torch.bincount(y), torch.full((10,), 10))  # the paper: 10 per class
    raw = _unnormalise(x)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5)  # grey presented as RGB
    assert float(raw.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(raw.max()) == pytest.approx(1.0, abs=1e-5)
    assert len(digits_dataset()) == 1797 and dataset_label_names() == [str(i) for i in range(10)]


def test_sampling_is_seeded_and_without_repeats(proc):
    a = load_calibration_batches(image_processor=proc, num_samples=40, batch_size=16, seed=1)
    b = load_calibration_batches(image_processor=proc, num_samples=40, batch_size=16, seed=1)
    c = load_calibration_batches(image_processor=proc, num_samples=40, batch_size=16, seed=2)
    xa = torch.cat([t["pixel_values"] for t in a])
    assert [len(t["labels"]) for t in a] == [16, 16, 8]
    assert torch.equal(xa, torch.cat([t["pixel_values"] for t in b]))
    assert not torch.equal(xa, torch.cat([t["pixel_values"] for t in c]))
    # 40 distinct images: digits has ~no duplicates, so rows are not repeated
    assert len({tuple(v.flatten().tolist()) for v in xa}) == 40


def test_evaluation_batches_cover_the_split_in_order():
    proc8 = default_image_processor(image_size=8)
    batches = load_labelled_batches(image_processor=proc8, batch_size=500)
    y = torch.cat([b["labels"] for b in batches])
    assert [len(b["labels"]) for b in batches] == [500, 500, 500, 297]
    assert torch.equal(y, torch.tensor(digits_dataset()["label"]))
    some = load_labelled_batches(image_processor=proc8, num_samples=50, seed=3)
    assert sum(len(b["labels"]) for b in some) == 50


def test_calibration_batches_feed_compute_scores():
    from conftest import tiny_vit

    batches = load_calibration_batches(
        image_processor=default_image_processor(tiny_vit().config), num_samples=8, batch_size=4
    )
    assert batches[0]["pixel_values"].shape == (4, 3, 32, 32)
    scores = compute_scores(tiny_vit(num_labels=10), batches, method="snip")
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert any(float(s.max()) > 0 for s in scores.values())


# -- image folders ----------------------------------------------------------------------------------
def test_image_folder_all_modes(folder, proc):
    batches = load_calibration_batches(folder, image_processor=proc, examples_per_class=3)
    y = torch.cat([b["labels"] for b in batches])
    assert torch.equal(torch.bincount(y), torch.tensor([3, 3, 3]))
    assert batches[0]["pixel_values"].shape[1:] == (3, 16, 16)
    assert dataset_label_names(folder) == ["ant", "bee", "cat"]
    # default: 10 per class, but the folder holds 3-4 per class
    with pytest.raises(
        HfPxError, match=r"class 'ant' has only 3 image\(s\), fewer than examples_per_class=10"
    ):
        load_calibration_batches(folder, image_processor=proc)
    with pytest.raises(
        HfPxError, match="only 11 images, fewer than num_samples=12; lower --num-samples"
    ):
        load_calibration_batches(folder, image_processor=proc, num_samples=12)


def test_image_folder_streamed(folder, proc):
    batches = load_calibration_batches(
        folder, image_processor=proc, examples_per_class=2, streaming=True, batch_size=4
    )
    y = torch.cat([b["labels"] for b in batches])
    assert torch.equal(torch.bincount(y), torch.tensor([2, 2, 2]))
    some = load_calibration_batches(folder, image_processor=proc, num_samples=5, streaming=True)
    assert sum(len(b["pixel_values"]) for b in some) == 5


def test_corrupt_image_is_named(folder, proc):
    (folder / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(HfPxError, match=r"cannot read image .*cat/broken\.jpg .*remove or replace"):
        load_calibration_batches(folder, image_processor=proc, num_samples=12)


def test_one_class_folder_and_empty_folder(tmp_path, proc):
    _save(Image.new("RGB", (4, 4)), tmp_path / "one" / "cat" / "a.png")
    _save(Image.new("RGB", (4, 4)), tmp_path / "one" / "cat" / "b.png")
    with pytest.raises(HfPxError, match="single class folder 'cat'; put each class in its own"):
        load_calibration_batches(tmp_path / "one", image_processor=proc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfPxError, match="no images"):
        load_calibration_batches(tmp_path / "empty", image_processor=proc)


def test_unlabelled_folder(tmp_path, proc):
    for i in range(3):
        _save(Image.new("RGB", (5, 5), (i, 0, 0)), tmp_path / "flat" / f"{i}.png")
    batches = load_calibration_batches(tmp_path / "flat", image_processor=proc, num_samples=3)
    assert "labels" not in batches[0] and len(batches[0]["pixel_values"]) == 3
    with pytest.raises(HfPxError, match="needs labels.*--label-column"):
        load_calibration_batches(tmp_path / "flat", image_processor=proc, need_labels=True)
    with pytest.raises(HfPxError, match="class-balanced sampling .* needs a label column"):
        load_calibration_batches(tmp_path / "flat", image_processor=proc, examples_per_class=1)
    with pytest.raises(HfPxError, match="evaluation needs labels"):
        load_labelled_batches(tmp_path / "flat", image_processor=proc)


def test_to_rgb_conversions():
    grey = Image.new("L", (2, 2), 100)
    assert to_rgb(grey).mode == "RGB" and to_rgb(grey).getpixel((0, 0)) == (100, 100, 100)
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # fully transparent black → white
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (1, 1), (0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] == pytest.approx(127, abs=1)
    pal = Image.new("P", (1, 1), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert to_rgb(pal).getpixel((0, 0)) == (10, 20, 30)
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)


# -- save_to_disk ------------------------------------------------------------------------------------
def _saved(tmp_path, dict_splits: bool = False):
    import datasets

    rng = np.random.default_rng(1)
    feats = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=["x", "y"]),
            "note": datasets.Value("string"),
        }
    )
    images = [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(6)]
    ds = datasets.Dataset.from_dict(
        {"img": images, "fine_label": [0, 1] * 3, "note": ["n"] * 6}, features=feats
    )
    path = tmp_path / "saved"
    if dict_splits:
        datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(path)
    else:
        ds.save_to_disk(path)
    return path


def test_save_to_disk_dataset_with_detected_columns(tmp_path, proc):
    path = _saved(tmp_path)
    batches = load_calibration_batches(path, image_processor=proc, examples_per_class=2)
    assert torch.equal(torch.bincount(batches[0]["labels"]), torch.tensor([2, 2]))
    assert dataset_label_names(path) == ["x", "y"]
    with pytest.raises(HfPxError, match=r"no image column 'photo'.*--image-column"):
        load_calibration_batches(path, image_processor=proc, image_column="photo")
    with pytest.raises(HfPxError, match=r"holds str, not an image.*--image-column"):
        load_calibration_batches(path, image_processor=proc, image_column="note", num_samples=2)
    with pytest.raises(HfPxError, match=r"holds str values, not class ids"):
        load_calibration_batches(path, image_processor=proc, label_column="note")


def test_save_to_disk_dataset_dict_splits(tmp_path, proc):
    path = _saved(tmp_path, dict_splits=True)
    test = load_labelled_batches(path, split="test", image_processor=proc)
    assert test[0]["labels"].tolist() == [0, 1, 0, 1]
    with pytest.raises(
        HfPxError, match=r"has no split 'validation'; choose --split from 'train', 'test'"
    ):
        load_calibration_batches(path, split="validation", image_processor=proc)


# -- Hub ids, paths, arguments -----------------------------------------------------------------------------
def test_unknown_hub_dataset_offline(proc, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert datasets.config.HF_HUB_OFFLINE  # conftest sets it before datasets is imported
    with pytest.raises(HfPxError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        load_calibration_batches("nobody-xyz/no-such-dataset", image_processor=proc)
    with pytest.raises(HfPxError, match="no such dataset directory './nowhere/at/all'"):
        load_calibration_batches("./nowhere/at/all", image_processor=proc)


def test_bad_arguments(proc, tmp_path):
    with pytest.raises(HfPxError, match="either examples_per_class or num_samples, not both"):
        load_calibration_batches(image_processor=proc, num_samples=5, examples_per_class=1)
    with pytest.raises(HfPxError, match="batch_size must be a positive integer"):
        load_calibration_batches(image_processor=proc, batch_size=0)
    with pytest.raises(HfPxError, match="num_samples must be a positive integer"):
        load_calibration_batches(image_processor=proc, num_samples=-3)
    with pytest.raises(HfPxError, match="built-in digits dataset has no split 'test'"):
        load_calibration_batches(image_processor=proc, split="test")
    with pytest.raises(HfPxError, match="only 1797 images, fewer than num_samples=2000"):
        load_calibration_batches(image_processor=proc, num_samples=2000)
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(HfPxError, match="is a file; pass an image folder"):
        load_calibration_batches(f, image_processor=proc)


# -- image processors ---------------------------------------------------------------------------------
def test_image_processor_from_model_dir_or_default(tmp_path):
    from transformers import ViTConfig

    cfg = ViTConfig(image_size=48)
    default = default_image_processor(cfg)
    assert default.size == {"height": 48, "width": 48}
    assert list(default.image_mean) == [0.485, 0.456, 0.406]
    assert default_image_processor().size == {"height": 224, "width": 224}
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert load_image_processor(model_dir) is None  # no preprocessor_config.json
    default_image_processor(image_size=20).save_pretrained(model_dir)
    loaded = load_image_processor(model_dir)
    assert loaded is not None and loaded.size == {"height": 20, "width": 20}
    assert load_image_processor("nobody-xyz/no-such-model") is None  # offline, not cached
    (model_dir / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(HfPxError, match="preprocessor_config.json .*; fix or delete it"):
        load_image_processor(model_dir)


# -- a Hub dataset, streamed from a local Hub-protocol server -------------------------------------------
class _DatasetHub:
    """Just enough of the Hub's dataset API for `datasets.load_dataset(..., streaming=True)`:
    repo info, tree listing, and file download with HTTP range requests."""

    SHA = "c" * 40

    def __init__(self, repo: str, files: dict[str, bytes]) -> None:
        import hashlib
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import unquote, urlsplit

        hub = self
        self.requests: list[tuple[str, str]] = []
        self.sent: dict[str, int] = {}  # bytes of each file sent by range requests
        r = re.escape(repo)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                hub.requests.append((self.command, path))
                if re.fullmatch(rf"/api/datasets/{r}(/revision/[^/]+)?", path):
                    siblings = [{"rfilename": f} for f in files]
                    return self._json({"id": repo, "sha": hub.SHA, "siblings": siblings})
                m = re.fullmatch(rf"/api/datasets/{r}/tree/[^/]+(?:/(.*))?", path)
                if m:
                    sub = (m.group(1) or "").strip("/")
                    prefix = sub + "/" if sub else ""
                    entries, dirs = [], set()
                    for f, data in files.items():
                        if not f.startswith(prefix):
                            continue
                        rest = f[len(prefix) :]
                        if "/" in rest:
                            dirs.add(prefix + rest.split("/")[0])
                            continue
                        oid = hashlib.sha1(data).hexdigest()
                        entries.append({"type": "file", "path": f, "size": len(data), "oid": oid})
                    entries += [{"type": "directory", "path": d, "oid": "0" * 40} for d in dirs]
                    return self._json(entries)
                m = re.fullmatch(rf"/datasets/{r}/resolve/[^/]+/(.+)", path)
                if m and m.group(1) in files:
                    data = files[m.group(1)]
                    headers = {
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                        "X-Repo-Commit": hub.SHA,
                        "Accept-Ranges": "bytes",
                    }
                    wanted = self.headers.get("Range")
                    if wanted and self.command == "GET":
                        a, b = wanted.split("=")[1].split("-")
                        a, b = int(a), int(b) if b else len(data) - 1
                        headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
                        hub.sent[path] = hub.sent.get(path, 0) + b + 1 - a
                        return self._send(206, data[a : b + 1], headers)
                    return self._send(200, data, headers)
                self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_STREAM_PROBE = """
import json, sys
from hf_px.calibration import dataset_label_names, default_image_processor, load_calibration_batches
from hf_px import HfPxError
import hf_px.calibration.sampling as sampling
sampling._STREAM_BUFFER = 100  # a small shuffle buffer: 2 of the 36 shards (plus read-ahead)
batches = load_calibration_batches("user/digits", image_processor=default_image_processor(image_size=8),
                                   examples_per_class=2, batch_size=8)
labels = sorted(int(y) for b in batches for y in b["labels"])
try:
    load_calibration_batches("user/digits", split="test")
    err = ""
except HfPxError as e:
    err = str(e)
print(json.dumps({"labels": labels, "names": dataset_label_names("user/digits"), "err": err}))
"""


def test_hub_dataset_is_streamed_not_downloaded_whole(tmp_path):
    import io
    import subprocess
    import sys

    ds = digits_dataset()
    shards = 36  # 50 images each: the sample needs a few shards, not all
    files = {"README.md": b"---\nlicense: cc-by-4.0\n---\n# digits\n"}
    for i in range(shards):
        buf = io.BytesIO()
        ds.shard(num_shards=shards, index=i, contiguous=True).to_parquet(buf)
        files[f"data/train-{i:05d}-of-{shards:05d}.parquet"] = buf.getvalue()
    hub = _DatasetHub("user/digits", files)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-c", _STREAM_PROBE], env=env, capture_output=True, text=True
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["labels"] == sorted(list(range(10)) * 2)
    assert out["names"] == [str(i) for i in range(10)]
    assert "has no split 'test'; choose --split from" in out["err"]
    total = sum(len(v) for k, v in files.items() if k.endswith(".parquet"))
    assert 0 < sum(hub.sent.values()) < total  # only the rows needed travelled
    assert not (tmp_path / "hf" / "datasets").exists() or not any(
        p.suffix == ".arrow" for p in (tmp_path / "hf" / "datasets").rglob("*")
    )
