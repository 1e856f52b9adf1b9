"""Calibration, evaluation and fine-tuning labels go through one mapping from the data
set's class names to the model's `id2label`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_px import load_pruning
from hf_px.calibration import load_calibration_batches, load_labelled_batches
from hf_px.cli.main import run
from hf_px.cli.resolve import SHIPPED
from hf_px.errors import HfPxError
from hf_px.loading import load_model


def _digit_folder(root: Path, classes=(3, 5, 7), per_class: int = 6) -> Path:
    """An image folder `<digit>/*.png` of held-out digits: datasets numbers its classes
    0, 1, 2, and only their names say which digits they are."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(digits.target == c)[-per_class:]:
            grey = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(grey, mode="L").convert("RGB").save(root / str(c) / f"{i}.png")
    return root


def _as_class_label(folder: Path, out: Path, names: list[str]) -> Path:
    """The folder's rows, in its order, saved with a ClassLabel over `names` (ids = digits)."""
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    digits = [int(ds.features["label"].names[y]) for y in ds["label"]]
    ds = ds.remove_columns("label").add_column("label", digits)
    ds.cast_column("label", datasets.ClassLabel(names=names)).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def digit_sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    folder = _digit_folder(tmp / "folder")
    saved = _as_class_label(folder, tmp / "saved", [str(i) for i in range(10)])
    return folder, saved


def test_calibration_labels_are_the_models_ids_by_class_name(digit_sets):
    folder, saved = digit_sets
    model, processor = load_model(SHIPPED["px-digits-resnet"])
    got = {}
    for name, ref in (("folder", folder), ("saved", saved)):
        batches = load_calibration_batches(
            ref, image_processor=processor, num_samples=18, need_labels=True,
            model_config=model.config,
        )  # fmt: skip
        got[name] = torch.cat([b["labels"] for b in batches])
    assert torch.equal(got["folder"], got["saved"])
    assert set(got["folder"].tolist()) == {3, 5, 7}


def test_snip_masks_do_not_depend_on_how_the_data_set_numbers_its_classes(
    digit_sets, tmp_path, capsys
):
    masks = {}
    for name, ref in zip(("folder", "saved"), digit_sets, strict=True):
        out = tmp_path / name
        argv = ["prune", "px-digits-resnet", "--sparsity", "0.9", "--method", "snip"]
        argv += ["--dataset", str(ref), "--num-samples", "18", "--output-dir", str(out)]
        argv += ["--quiet", "--json"]
        assert run(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
        masks[name] = load_pruning(out).masks
    for n, m in masks["folder"].items():
        assert torch.equal(m, masks["saved"][n]), n


def _one_error(err: str) -> str:
    (line,) = [ln for ln in err.splitlines() if ln.startswith("hf-px: error:")]
    assert "Traceback" not in err
    return line


@pytest.fixture(scope="module")
def eleven_classes(tmp_path_factory, digit_sets):
    """Class '10' (ids 10) among the model's ten digits: not a class the model knows."""
    tmp = tmp_path_factory.mktemp("eleven")
    return _as_class_label(
        _relabel_seven_as_ten(digit_sets[0], tmp), tmp / "saved", [str(i) for i in range(11)]
    )


def _relabel_seven_as_ten(folder: Path, tmp: Path) -> Path:
    import shutil

    out = tmp / "folder"
    shutil.copytree(folder, out)
    (out / "7").rename(out / "10")
    return out


@pytest.mark.parametrize("command", ["prune", "eval", "finetune"])
def test_a_class_the_model_lacks_is_one_line_naming_it(
    eleven_classes, digit_sets, tmp_path, capsys, command
):
    out = tmp_path / "out"
    if command == "prune":
        argv = ["prune", "px-digits-resnet", "--sparsity", "0.5", "--method", "snip"]
        argv += ["--num-samples", "18"]
    elif command == "eval":
        argv = ["eval", "px-digits-resnet"]
    else:
        src = tmp_path / "p50"
        assert run(["prune", "px-digits-resnet", "--sparsity", "0.5", "--method", "magnitude",
                    "--output-dir", str(src), "--quiet"]) == 0  # fmt: skip
        capsys.readouterr()
        argv = ["finetune", str(src)]
    code = run([*argv, "--dataset", str(eleven_classes), "--output-dir", str(out), "--quiet"]
               if command != "eval" else [*argv, "--dataset", str(eleven_classes), "--quiet"])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert code == 2
    assert "'10'" in line, line
    assert not out.exists()


def test_an_unnamed_label_id_out_of_the_models_range_is_one_line(tmp_path, capsys):
    import datasets

    folder = _digit_folder(tmp_path / "folder", classes=(1, 2), per_class=3)
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    ds = ds.remove_columns("label").add_column("label", [10] * 3 + [2] * 3)  # plain ints
    ds.save_to_disk(str(tmp_path / "saved"))
    argv = ["prune", "px-digits-resnet", "--sparsity", "0.5", "--method", "grasp"]
    argv += ["--dataset", str(tmp_path / "saved"), "--num-samples", "6"]
    argv += ["--output-dir", str(tmp_path / "o"), "-q"]
    assert run(argv) == 2
    line = _one_error(capsys.readouterr().err)
    assert "label id 10" in line and "10 classes" in line


def test_labelled_batches_map_the_same_way(digit_sets):
    model, processor = load_model(SHIPPED["px-digits-resnet"])
    folder, saved = digit_sets
    a, b = (
        torch.cat([x["labels"] for x in load_labelled_batches(
            ref, image_processor=processor, model_config=model.config)])
        for ref in (folder, saved)
    )  # fmt: skip
    assert torch.equal(a, b) and set(a.tolist()) == {3, 5, 7}
    with pytest.raises(HfPxError, match="'10'"):
        load_labelled_batches(
            _relabel_seven_as_ten(folder, Path(str(saved) + "-x")),
            image_processor=processor,
            model_config=model.config,
        )
    assert json.loads(json.dumps(model.config.id2label))  # the model itself is untouched


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_library_batches_with_a_label_past_the_models_classes_are_refused(method):
    from conftest import make_batches, tiny_resnet

    from hf_px import prune

    batches = make_batches(classes=3)
    batches[1]["labels"][0] = 3  # a three-class model: ids 0..2
    with pytest.raises(HfPxError, match="label id 3 of batch 1 is out of range .* 3 classes"):
        prune(tiny_resnet(num_labels=3), batches, 0.5, method=method)
