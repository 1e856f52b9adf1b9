"""The card counts MACs at the model's own input size, names the evaluated split, loads
through the image processor, and shows accuracy before/after pruning and after fine-tuning."""

from __future__ import annotations

import json

import torch
from conftest import PixelNet
from torch import nn

from hf_px import PruningConfig, PruningResult
from hf_px.card import write_card


def _net_and_result(finetune: dict | None = None):
    torch.manual_seed(0)
    net = PixelNet(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 5)
    )
    masks = {"body.0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool),
             "body.3.weight": torch.ones(5, 4 * 16 * 16, dtype=torch.bool)}  # fmt: skip
    masks["body.3.weight"][:, :512] = False
    calibration = {"finetune": finetune} if finetune else {}
    config = PruningConfig(method="magnitude", sparsity=0.5, rounds=1, calibration=calibration)
    return net, PruningResult(masks=masks, config=config)


def test_macs_at_the_image_processors_size_match_a_hand_count(tmp_path):
    net, result = _net_and_result()
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16}}
        )
    )
    text = write_card(tmp_path, model=net, result=result).read_text()
    conv = 16 * 16 * 4 * (3 * 3 * 3)  # output elements × C_in·k_h·k_w
    linear = 5 * (4 * 16 * 16)
    assert conv + linear == 32_768  # "32.8 k"; at 224×224 the conv alone is 5.4 M
    remaining = conv + linear * (1024 - 512) // 1024
    assert f"| Multiply-accumulates per image | 32.8 k | {remaining / 1e3:.1f} k" in text
    assert "one\n1×3×16×16 input" in text
    # the loading snippet prepares an image with the processor, at that size
    assert "AutoImageProcessor.from_pretrained(model_id)" in text
    assert 'Image.new("RGB", (16, 16))' in text


def test_evaluation_names_the_split_and_shows_three_stages(tmp_path):
    recipe = {"dataset": "digits-train", "split": "train", "num_samples": 1347, "epochs": 2,
              "steps": 86, "learning_rate": 1e-4, "batch_size": 32, "optimizer": "adamw",
              "weight_decay": 0.0, "seed": 0, "num_processes": 2,
              "gradient_accumulation_steps": 2, "trainer": "transformers.Trainer"}  # fmt: skip
    net, result = _net_and_result(recipe)
    evaluation = {"dataset": "digits-test", "split": "test", "num_samples": 450,
                  "accuracy_dense": 0.99, "accuracy_pruned": 0.5, "accuracy_finetuned": 0.9,
                  "loss_pruned": 1.5, "loss_finetuned": 0.3}  # fmt: skip
    text = write_card(tmp_path, model=net, result=result, evaluation=evaluation).read_text()
    assert "split `test`, 450 images" in text and "split `train`" not in text.split("## Eval")[1]
    assert "| Before pruning | After pruning | After fine-tuning |" in text
    assert "| 99.00% | 50.00% (1.5000) | 90.00% (0.3000) |" in text
    assert "## Fine-tuning" in text and "not fine-tuned" not in text
    assert "| Epochs / steps | 2 / 86 |" in text
    assert "32 per process × 2 process(es) × 2 accumulation step(s)" in text
    assert "`transformers.Trainer`" in text
    # the model-index reports the latest stage
    head = text.split("---")[1]
    assert "value: 0.9" in head and "name: test" in head.lower() or "split: test" in head


def test_an_evaluation_record_and_either_spelling_give_one_card(tmp_path):
    """`hf-px prune --eval`'s `*_before`/`*_after` and the record's stage names are read in
    one place: the same figures give the same card, and the report records one spelling."""
    from hf_px.card import Evaluation

    net, result = _net_and_result()
    common = {"dataset": "digits-test", "split": "test", "num_samples": 450}
    old = {**common, "accuracy_before": 0.99, "accuracy_after": 0.5, "loss_after": 1.5}
    record = Evaluation(**common, accuracy_dense=0.99, accuracy_pruned=0.5, loss_pruned=1.5)
    assert Evaluation.from_mapping(old) == record
    texts = [
        write_card(tmp_path / str(i), model=net, result=result, evaluation=ev).read_text()
        for i, ev in enumerate((old, record, record.to_dict()))
    ]
    assert texts[0] == texts[1] == texts[2]
    assert "| 99.00% | 50.00% (1.5000) |" in texts[0]
