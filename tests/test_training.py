"""Sparse training keeps masks fixed: plain PyTorch steps, `finetune`, a real Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_convnext, tiny_resnet, tiny_vit

from hf_px import HfPxError, prune
from hf_px.training import (
    MaskedTrainingCallback,
    apply_masks,
    bind_masks,
    finetune,
    make_optimizer,
    masked_step,
)


def digits_batches(n_batches: int = 3, batch_size: int = 16, size: int = 16, classes: int = 3):
    """Real images: scikit-learn's digits of the first `classes` classes, upsampled, RGB."""
    from sklearn.datasets import load_digits

    d = load_digits(n_class=classes)
    x = torch.tensor(d.images[: n_batches * batch_size], dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(d.target[: n_batches * batch_size], dtype=torch.long)
    x = torch.nn.functional.interpolate(x[:, None], size=(size, size), mode="bilinear")
    x = x.expand(-1, 3, -1, -1).contiguous()
    return [
        {"pixel_values": x[i : i + batch_size], "labels": y[i : i + batch_size]}
        for i in range(0, len(y), batch_size)
    ]


def loss_on(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return float(
            sum(
                torch.nn.functional.cross_entropy(
                    model(pixel_values=b["pixel_values"]).logits, b["labels"]
                )
                for b in batches
            )
            / len(batches)
        )


def pruned_values(model, masks) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach()[~m].reshape(-1) for n, m in masks.items()])


def train_steps(model, masks, batches, opt, steps, masked=True):
    bound = bind_masks(model, masks)
    model.train()
    for i in range(steps):
        b = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(
            model(pixel_values=b["pixel_values"]).logits, b["labels"]
        )
        opt.zero_grad()
        loss.backward()
        if masked:
            masked_step(opt, model, bound)
        else:
            opt.step()
    model.eval()


@pytest.mark.parametrize(
    "optimizer,kwargs",
    [
        ("adamw", {"lr": 3e-3, "weight_decay": 0.1}),
        ("sgd", {"lr": 0.05, "weight_decay": 0.01, "momentum": 0.9}),
    ],
)
def test_masked_steps_keep_pruned_weights_zero_and_learn(optimizer, kwargs):
    batches = digits_batches()
    model = tiny_resnet(num_labels=3)
    # a few dense steps first, so the optimiser holds non-zero moments / momentum
    # at coordinates that are pruned afterwards (the revival route through state)
    opt = make_optimizer(model, optimizer, **kwargs)
    train_steps(model, {}, batches, opt, 3, masked=False)
    masks = prune(model, batches[:1], 0.8, "magnitude").masks
    assert float(pruned_values(model, masks).abs().max()) == 0.0
    before = loss_on(model, batches)
    train_steps(model, masks, batches, opt, 15)
    values = pruned_values(model, masks)
    assert values.numel() > 1000
    assert torch.equal(values, torch.zeros_like(values))
    assert not torch.signbit(values).any()  # +0.0, not −0.0
    assert loss_on(model, batches) < before
    # optimiser state holds nothing at pruned coordinates either
    params = dict(model.named_parameters())
    for n, m in masks.items():
        for v in opt.state[params[n]].values():
            if isinstance(v, torch.Tensor) and v.shape == m.shape:
                assert float(v[~m].abs().max()) == 0.0


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_unmasked_steps_revive_pruned_weights(optimizer):
    """The control: the same steps through plain `optimizer.step()` do revive
    pruned weights, so the test above measures the masking, not the setup."""
    batches = digits_batches(n_batches=1)
    model = tiny_resnet(num_labels=3)
    masks = prune(model, batches, 0.8, "magnitude").masks
    opt = make_optimizer(model, optimizer, lr=3e-3, weight_decay=0.1)
    train_steps(model, masks, batches, opt, 2, masked=False)
    assert int((pruned_values(model, masks) != 0).sum()) > 100


@pytest.mark.parametrize("build", [tiny_vit, tiny_convnext])
def test_finetune_transformers_families(build):
    batches = digits_batches(n_batches=2, size=32)
    model = build(num_labels=3)
    masks = prune(model, batches[:1], 0.9, "px", rounds=2).masks
    before = loss_on(model, batches)
    stats = finetune(model, masks, batches, epochs=8, lr=3e-3, weight_decay=0.05, seed=1)
    assert stats["steps"] == 16 and stats["pruned_weights_nonzero"] == 0
    assert stats["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert float(pruned_values(model, masks).abs().max()) == 0.0
    assert loss_on(model, batches) < before
    assert not model.training


def test_finetune_is_deterministic_and_sgd_works():
    batches = digits_batches(n_batches=2)
    outs = []
    for _ in range(2):
        model = tiny_resnet(num_labels=3)
        masks = prune(model, batches[:1], 0.5, "random", seed=3).masks
        finetune(model, masks, batches, epochs=2, lr=0.05, optimizer="sgd", seed=7)
        outs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_finetune_bad_input():
    batches = digits_batches(n_batches=1)
    model = tiny_resnet(num_labels=3)
    masks = prune(model, batches, 0.5, "magnitude").masks
    with pytest.raises(HfPxError, match="epochs"):
        finetune(model, masks, batches, epochs=0)
    with pytest.raises(HfPxError, match="optimizer"):
        finetune(model, masks, batches, optimizer="lamb")
    with pytest.raises(HfPxError, match="labels"):
        finetune(model, masks, [{"pixel_values": batches[0]["pixel_values"]}])
    with pytest.raises(HfPxError, match="at least one"):
        finetune(model, masks, [])
    with pytest.raises(HfPxError, match="names no parameter"):
        finetune(tiny_vit(num_labels=3), masks, batches)
    with pytest.raises(HfPxError, match="lower --lr"):
        finetune(model, masks, batches, lr=1e30, max_grad_norm=None, epochs=3)
    with pytest.raises(HfPxError, match="non-empty"):
        MaskedTrainingCallback({})


def _digits_dataset(n: int = 48):
    from datasets import Dataset

    b = digits_batches(n_batches=1, batch_size=n)[0]
    ds = Dataset.from_dict(
        {"pixel_values": b["pixel_values"].numpy().astype(np.float32), "labels": b["labels"]}
    )
    return ds.with_format("torch"), b


def _trainer(model, ds, out, callbacks):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        weight_decay=0.1,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=ds, callbacks=callbacks)


def test_trainer_callback_keeps_masks(tmp_path):
    ds, batch = _digits_dataset()
    model = tiny_resnet(num_labels=3)
    masks = prune(model, [batch], 0.8, "snip").masks
    before = loss_on(model, [batch])
    trainer = _trainer(model, ds, tmp_path / "masked", [MaskedTrainingCallback(masks)])
    trainer.train()
    assert trainer.state.global_step == 8
    values = pruned_values(model, masks)
    assert torch.equal(values, torch.zeros_like(values))
    assert loss_on(model, [batch]) < before
    # control: without the callback the same Trainer revives pruned weights
    other = tiny_resnet(num_labels=3)
    apply_masks(bind_masks(other, masks))
    _trainer(other, ds, tmp_path / "plain", []).train()
    assert int((pruned_values(other, masks) != 0).sum()) > 100


def _class_sorted_recorder():
    """A linear net that records the classes of every batch it sees, and three
    single-class batches (as an image folder reads)."""
    from conftest import PixelNet

    seen: list[set] = []
    net = PixelNet(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net.register_forward_pre_hook(
        lambda m, a, kw: seen.append(set(kw["pixel_values"][:, 0, 0, 0].tolist())), with_kwargs=True
    )
    batches = [
        {"pixel_values": torch.full((8, 1, 2, 2), float(c)), "labels": torch.full((8,), c)}
        for c in range(3)
    ]
    return net, seen, batches


def test_finetune_shuffles_images_not_just_batches():
    """Class-sorted batches (as an image folder reads) are re-mixed every epoch."""
    net, seen, batches = _class_sorted_recorder()
    stats = finetune(net, None, batches, epochs=2, lr=1e-3, seed=0)
    assert stats["steps"] == 6 and len(seen) == 6
    assert all(len(s) > 1 for s in seen)  # every batch mixes classes
    with pytest.raises(HfPxError, match="one image processor"):
        finetune(net, None, [batches[0], {**batches[1], "pixel_values": torch.ones(8, 1, 3, 3)}])


def test_finetune_can_keep_the_given_batches_in_a_seeded_order():
    """``shuffle="batches"`` (the benchmarks' protocol): each step sees one given batch,
    every batch once per epoch, in an order drawn from the seed."""
    net, seen, batches = _class_sorted_recorder()
    stats = finetune(net, None, batches, epochs=2, lr=1e-3, seed=0, shuffle="batches")
    assert stats["steps"] == 6
    order = [next(iter(s)) for s in seen]
    assert all(len(s) == 1 for s in seen)  # batches kept whole
    want = torch.randperm(3, generator=torch.Generator().manual_seed(0)).tolist()
    assert order[:3] == [float(i) for i in want] and sorted(order[3:]) == [0.0, 1.0, 2.0]
    with pytest.raises(HfPxError, match="unknown shuffle 'rows'"):
        finetune(net, None, batches, shuffle="rows")
