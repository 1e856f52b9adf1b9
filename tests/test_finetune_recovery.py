"""Fine-tuning a pruned model recovers accuracy, also from a class-sorted image folder.

The shipped digits ResNet pruned to 90% is trained on its own training digits,
read as an image folder (``<class>/*.png``: the reader returns them class-sorted),
and must get better on those digits and on the 450 held-out ones. Shuffling only
the order of class-sorted batches gives one-class batches, BatchNorm trains on
one class's statistics, and both numbers get worse — this test catches that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from hf_px import prune, recalibrate_batchnorm
from hf_px.calibration import digits_dataset, load_labelled_batches
from hf_px.evaluation import evaluate
from hf_px.loading import load_model
from hf_px.training import finetune

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "hf_px" / "assets" / "digits-resnet"


def _split():
    return load_script("train_digits_model").split_indices(np.asarray(digits_dataset()["label"]))


def _image_folder(root: Path, indices) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    for i in indices:
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey[i], mode="L").convert("RGB").save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.ci
def test_finetune_of_the_pruned_digits_model_improves_it(tmp_path):
    train_idx, test_idx = _split()
    folder = _image_folder(tmp_path / "train", train_idx)
    model, processor = load_model(str(SHIPPED))
    train = load_labelled_batches(folder, image_processor=processor, batch_size=32)
    first = train[0]["labels"]
    assert torch.equal(first, torch.zeros_like(first))  # the reader really is class-sorted
    digits_dataset().select(test_idx.tolist()).save_to_disk(str(tmp_path / "test"))
    test = load_labelled_batches(tmp_path / "test", image_processor=processor, batch_size=128)
    calibration = train[::6]  # every class
    result = prune(model, calibration, sparsity=0.9, method="synflow", rounds=10)
    recalibrate_batchnorm(model, calibration)  # as `hf-px prune` does
    before_train = evaluate(model, train)
    before_test = evaluate(model, test)
    with torch.enable_grad():
        stats = finetune(model, result.masks, train, epochs=2, lr=1e-4, seed=0)
    after_train = evaluate(model, train)
    after_test = evaluate(model, test)
    assert stats["pruned_weights_nonzero"] == 0
    # the training loss falls, and the model improves on its training data and held-out
    assert stats["final_loss"] < stats["epoch_losses"][0] < stats["first_loss"]
    assert after_train["loss"] < 0.8 * before_train["loss"]
    assert after_test["accuracy"] > before_test["accuracy"] + 0.05
