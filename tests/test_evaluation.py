"""hf_px.evaluation by hand: accuracy and loss, label mapping by name, the model's mode."""

from __future__ import annotations

import pytest
import torch
from conftest import PixelNet

from hf_px.errors import HfPxError
from hf_px.evaluation import evaluate, label_mapping


def _two_class_net() -> PixelNet:
    net = PixelNet(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net.body[1].weight.copy_(torch.eye(2))
    return net


def test_evaluate_accuracy_and_loss_by_hand():
    net = _two_class_net()
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [1.0, 0.0]]).view(4, 2, 1, 1)
    y = torch.tensor([0, 1, 1, 0])
    got = evaluate(
        net, [{"pixel_values": x[:2], "labels": y[:2]}, {"pixel_values": x[2:], "labels": y[2:]}]
    )
    logits = x.view(4, 2)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert got["accuracy"] == 0.75 and got["correct"] == 3 and got["num_samples"] == 4
    assert got["loss"] == pytest.approx(expected_loss)


def test_evaluate_maps_dataset_labels_to_the_models_by_name():
    net = _two_class_net()
    net.config = type("C", (), {"id2label": {0: "cat", 1: "dog"}, "num_labels": 2})()
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0]]).view(2, 2, 1, 1)
    # the data set calls "dog" 0 and "cat" 1: right predictions once mapped by name
    batches = [{"pixel_values": x, "labels": torch.tensor([1, 0])}]
    assert evaluate(net, batches, label_names=["Dog", "cat"])["accuracy"] == 1.0
    assert evaluate(net, batches)["accuracy"] == 0.0  # ids taken as they are
    assert label_mapping(net, ["cat", "dog"]) is None
    with pytest.raises(HfPxError, match="not among the model's labels"):
        evaluate(net, batches, label_names=["dog", "horse"])


def test_evaluate_leaves_the_mode_and_rejects_unlabelled_batches():
    net = _two_class_net().train()
    x = torch.ones(2, 2, 1, 1)
    evaluate(net, [{"pixel_values": x, "labels": torch.tensor([0, 1])}])
    assert net.training
    with pytest.raises(HfPxError, match="labels"):
        evaluate(net, [{"pixel_values": x}])
