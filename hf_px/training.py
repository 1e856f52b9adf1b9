"""Sparse training with fixed masks: pruned weights stay exactly 0.0.

Masking only the gradients is not enough. AdamW's decoupled weight decay
(θ ← θ − lr·λ·θ) and SGD's momentum buffer move a weight whose gradient is 0,
and a weight pruned after some dense steps still has a non-zero Adam moment or
momentum. So every step does three things, in this order:

1. ``grad ← grad · m`` before the step (the optimiser's statistics never see a
   pruned coordinate's gradient, so Adam's second moment stays 0 there);
2. ``optimizer.step()``;
3. ``θ ← θ · m`` and then ``θ[¬m] = +0.0`` (θ·0 is −0.0 for negative θ), and the
   optimiser's per-parameter state tensors of the weight's shape (Adam moments,
   momentum buffers) are zeroed at pruned coordinates, so nothing accumulates
   there between steps.

Masks are plain bool tensors keyed by parameter name (True = kept), exactly
what :func:`hf_px.prune` returns in ``PruningResult.masks``.

* :class:`MaskedTrainingCallback` does 1 in ``on_pre_optimizer_step`` (after
  gradient clipping) and 3 in ``on_optimizer_step`` of a `transformers.Trainer`.
* :func:`masked_step` does 1–3 for a plain PyTorch loop; :func:`finetune` is
  such a loop (the Python API, kept for batches already in memory).
* :func:`trainer_finetune` runs a `transformers.Trainer` with the callback on a
  `datasets.Dataset` (what ``hf-px finetune`` uses: logging, evaluation, gradient
  accumulation, mixed precision, data parallelism under torchrun/accelerate).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .config import PruningResult
from .errors import HfPxError
from .masks.check import check_masks
from .methods.base import cross_entropy, logits_of
from .utils import float32_compute

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")


def as_masks(masks: Any) -> dict[str, torch.Tensor]:
    """A name→mask dict from a dict or a :class:`~hf_px.PruningResult` (``prune``'s,
    or :func:`hf_px.load_pruning`'s for a saved checkpoint)."""
    if isinstance(masks, PruningResult):
        return dict(masks.masks)
    if not isinstance(masks, Mapping):
        raise HfPxError(
            "masks must be a dict {parameter name: bool tensor} or a PruningResult, e.g. "
            "hf_px.load_pruning(checkpoint_dir)"
        )
    return dict(masks)


def bind_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[tuple]:
    """``[(parameter, bool mask on its device)]`` for every masked parameter.

    Raises :class:`HfPxError` for a name the model lacks or a shape mismatch, so a
    checkpoint's masks cannot silently be applied to another architecture.
    """
    masks = as_masks(masks)
    params = dict(model.named_parameters())
    fix = "use the masks saved with this model's checkpoint"
    return [(params[n], m) for n, m in check_masks(masks, params, fix=fix).items()]


@torch.no_grad()
def mask_gradients(bound: list[tuple]) -> None:
    """Step 1: zero the gradient of every pruned weight."""
    for p, m in bound:
        if p.grad is not None:
            p.grad.masked_fill_(~m, 0.0)


@torch.no_grad()
def apply_masks(bound: list[tuple], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Step 3: pruned weights to exactly +0.0; optimiser state zeroed there too."""
    for p, m in bound:
        p.masked_fill_(~m, 0.0)
        if optimizer is None:
            continue
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.masked_fill_(~m, 0.0)


def masked_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | list[tuple],
) -> None:
    """``optimizer.step()`` that keeps pruned weights at 0 (module docstring, 1–3).

    `masks` is a name→mask dict or, to skip the lookup every step, the list
    returned by :func:`bind_masks`.
    """
    bound = masks if isinstance(masks, list) else bind_masks(model, masks)
    mask_gradients(bound)
    optimizer.step()
    apply_masks(bound, optimizer)


class MaskedTrainingCallback(TrainerCallback):
    """`transformers.Trainer` callback that keeps `masks` fixed during training.

    ``Trainer(..., callbacks=[MaskedTrainingCallback(result)])`` with `result` from
    :func:`hf_px.prune` or :func:`hf_px.load_pruning` (or its ``.masks`` dict). Masks are
    applied once at the start of training too, so a model whose pruned weights
    were not yet zeroed starts sparse.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | PruningResult) -> None:
        if not isinstance(masks, Mapping | PruningResult) or not as_masks(masks):
            raise HfPxError(
                "MaskedTrainingCallback needs a non-empty {name: bool mask} dict or a "
                "PruningResult (hf_px.load_pruning(checkpoint_dir))"
            )
        self.masks = as_masks(masks)
        self._bound: list[tuple] | None = None
        self._model_id: int | None = None

    def _bind(self, model: nn.Module | None) -> list[tuple]:
        if model is None:
            raise HfPxError("the Trainer passed no model to MaskedTrainingCallback")
        if self._bound is None or self._model_id != id(model):
            self._bound = bind_masks(model, self.masks)
            self._model_id = id(model)
        return self._bound

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        apply_masks(self._bind(model), optimizer)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        mask_gradients(self._bind(model))

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        apply_masks(self._bind(model), optimizer)


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    raise HfPxError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _check_batches(batches: list) -> None:
    if not batches:
        raise HfPxError("finetune needs at least one training batch with pixel_values and labels")
    for i, b in enumerate(batches):
        x = b.get("pixel_values") if isinstance(b, Mapping) else None
        y = b.get("labels") if isinstance(b, Mapping) else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise HfPxError(f"training batch {i} has no float `pixel_values` tensor N×C×H×W")
        if not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]:
            raise HfPxError(f"training batch {i} needs a `labels` tensor with one id per image")


def _pool(batches: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All images and labels as two tensors, and the largest batch size given."""
    shapes = {tuple(b["pixel_values"].shape[1:]) for b in batches}
    if len(shapes) > 1:
        raise HfPxError(
            f"training batches hold images of several sizes {sorted(shapes)}; prepare them "
            "with one image processor so that every image has the same size"
        )
    images = torch.cat([b["pixel_values"] for b in batches])
    labels = torch.cat([b["labels"].reshape(-1).long() for b in batches])
    return images, labels, max(len(b["labels"]) for b in batches)


def finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | PruningResult | None,
    train_batches: Iterable[dict[str, Any]],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    seed: int = 0,
    schedule: str = "cosine",
    max_grad_norm: float | None = 1.0,
    shuffle: str = "images",
) -> dict[str, Any]:
    """Train `model` on `train_batches` for `epochs`, keeping `masks` fixed.

    Cross-entropy on ``model(pixel_values).logits``; with ``shuffle="images"`` the
    *images* are reshuffled into new batches (of the largest given batch size) each
    epoch by a generator seeded with `seed`, so batches mix classes even when
    `train_batches` come class-sorted (as an image folder reads); ``"batches"`` keeps
    the given batches and reshuffles only their order (the benchmarks' protocol,
    for batches already class-mixed); learning rate constant or cosine
    decayed per step to 0 (`schedule`); gradients clipped to `max_grad_norm`
    (None = off) before masking. ``masks=None`` trains densely. The model is
    left in eval mode. Returns ``{"steps", "epochs", "first_loss", "final_loss",
    "epoch_losses", "train_s", "pruned_weights", "pruned_weights_nonzero",
    "sparsity"}`` — ``final_loss`` is the mean over the last epoch,
    ``pruned_weights_nonzero`` counts pruned weights that are not 0.0 after
    training (0 unless something outside this loop wrote to them), ``sparsity``
    the fraction of masked weights that the masks prune.

    One function on purpose: the epoch loop (reshuffle, step, mask, record) reads
    top to bottom.
    """
    batches = list(train_batches)
    _check_batches(batches)
    _check_settings(
        epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule, shuffle=shuffle
    )
    bound = bind_masks(model, masks) if masks else []
    opt = make_optimizer(model, optimizer, float(lr), float(weight_decay))
    images, labels, batch_size = _pool(batches)
    n_batches = math.ceil(len(labels) / batch_size) if shuffle == "images" else len(batches)
    total = epochs * n_batches
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # dropout / stochastic depth
    apply_masks(bound)
    model.train()
    t0 = time.perf_counter()
    step, first, epoch_losses = 0, None, []
    half = contextlib.ExitStack()
    half.enter_context(float32_compute(model))  # half weights train in float32
    try:
        for epoch in range(epochs):
            # samples, not batches, are shuffled: a class-sorted data set would otherwise
            # give single-class batches, and BatchNorm would train on one class's statistics
            if shuffle == "images":
                steps = [
                    (images[i], labels[i])
                    for i in torch.randperm(len(labels), generator=g).split(batch_size)
                ]
            else:
                order = torch.randperm(len(batches), generator=g).tolist()
                steps = [(batches[i]["pixel_values"], batches[i]["labels"]) for i in order]
            running, n = 0.0, 0
            for x, y in steps:
                if schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
                loss = cross_entropy(logits_of(model(pixel_values=x)), y)
                if not torch.isfinite(loss):
                    raise HfPxError(
                        f"training loss became {loss.item()} at step {step}; lower --lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                masked_step(opt, model, bound)
                value = float(loss.detach())
                first = value if first is None else first
                running, n, step = running + value, n + 1, step + 1
            epoch_losses.append(running / n)
            logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, running / n)
    finally:
        half.close()  # back in their own dtype: pruned weights stay exactly 0
        model.eval()
    zeros = sum(int((p == 0).logical_and(~m).sum()) for p, m in bound)
    pruned = sum(int((~m).sum()) for _, m in bound)
    masked_total = sum(m.numel() for _, m in bound)
    return {
        "steps": step,
        "epochs": epochs,
        "first_loss": first,
        "final_loss": epoch_losses[-1],
        "epoch_losses": epoch_losses,
        "train_s": time.perf_counter() - t0,
        "pruned_weights": pruned,
        "pruned_weights_nonzero": pruned - zeros,
        "sparsity": pruned / masked_total if masked_total else 0.0,
    }


# -- fine-tuning with transformers.Trainer ---------------------------------------------------
def image_transform(
    image_processor: Any,
    image_column: str,
    label_column: str,
    label_table: torch.Tensor | None = None,
):
    """A ``Dataset.with_transform`` function: rows → ``{"pixel_values", "labels"}``.

    Images are decoded when a batch is read (not stored prepared), converted to
    RGB and prepared by the checkpoint's own image processor, as transformers'
    image-classification examples do; `label_table` maps data-set ids to the
    model's (by class name, :func:`hf_px.calibration.labels.label_table`).
    """
    from .calibration.images import decode_image

    def transform(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        images = [
            decode_image(v, f"an image of column {image_column!r}") for v in batch[image_column]
        ]
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        labels = torch.as_tensor(batch[label_column], dtype=torch.long)
        if label_table is not None:
            labels = label_table[labels]
        return {"pixel_values": torch.as_tensor(pixel_values).float(), "labels": labels}

    return transform


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.stack([torch.as_tensor(r["labels"]) for r in rows]),
    }


def _accuracy(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def trainer_finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | PruningResult,
    train_dataset: Any,
    *,
    eval_dataset: Any = None,
    epochs: int = 1,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    gradient_accumulation_steps: int = 1,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    bf16: bool = False,
    seed: int = 0,
    max_grad_norm: float = 1.0,
    work_dir: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune with `transformers.Trainer` and :class:`MaskedTrainingCallback`.

    `train_dataset` / `eval_dataset`: `datasets.Dataset` objects whose rows give
    ``pixel_values`` and ``labels`` (e.g. through ``with_transform(image_transform(...))``).
    Cosine learning-rate decay, gradients clipped to `max_grad_norm`, ``optimizer``
    ``"adamw"`` (decoupled weight decay) or ``"sgd"`` (with `momentum`). Runs under
    ``torchrun``/``accelerate launch`` as data parallelism (Trainer's own). Trainer
    writes nothing worth keeping (``save_strategy="no"``) into `work_dir` (a
    temporary folder by default, removed afterwards). Returns ``{"trainer",
    "epoch_losses", "first_loss", "final_loss", "steps", "eval_before", "eval_after",
    "pruned_weights_nonzero", "train_s", "num_processes"}``; ``eval_*`` are None without
    `eval_dataset`, else ``{"accuracy", "loss", "num_samples"}``.

    Longer than most on purpose: building the Trainer, the evaluations around
    training and the temporary folder's clean-up share one ``try``/``finally``.
    """
    import shutil
    import tempfile

    from transformers import Trainer

    _check_settings(
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    masks = as_masks(masks)
    own_dir = work_dir is None
    work = work_dir or tempfile.mkdtemp(prefix="hf-px-trainer-")
    half = contextlib.ExitStack()
    half.enter_context(float32_compute(model))  # half weights train in float32
    try:
        args = _training_arguments(
            work,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            max_grad_norm=max_grad_norm,
            bf16=bf16,
            seed=seed,
            quiet=quiet,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collate,
            compute_metrics=_accuracy,
            # a structured model has no masks: its removed units are gone, not held at 0
            callbacks=[MaskedTrainingCallback(masks)] if masks else [],
        )
        if quiet:  # Trainer prints every log dict without a progress bar
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        before = _evaluate(trainer, eval_dataset)
        t0 = time.perf_counter()
        out = trainer.train()
        train_s = time.perf_counter() - t0
        after = _evaluate(trainer, eval_dataset)
    finally:
        half.close()  # back in their own dtype: pruned weights stay exactly 0
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    bound = bind_masks(model, masks)
    nonzero = sum(int((p.detach()[~m] != 0).sum()) for p, m in bound)
    return {
        "trainer": trainer,
        "epoch_losses": losses,
        "first_loss": losses[0] if losses else out.training_loss,
        "final_loss": losses[-1] if losses else out.training_loss,
        "steps": int(out.global_step),
        "eval_before": before,
        "eval_after": after,
        "pruned_weights_nonzero": nonzero,
        "train_s": train_s,
        "num_processes": int(args.world_size),
    }


#: the values each fine-tuning setting may take, one rule per setting for both loops
CHOICES = {"schedule": ("cosine", "constant"), "shuffle": ("images", "batches")}


def _check_settings(**settings: Any) -> None:
    """One rule per setting, the error naming it as the caller spells it."""
    for name, value in settings.items():
        if name == "optimizer" and value not in OPTIMIZERS:
            raise HfPxError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}")
        if name in CHOICES and value not in CHOICES[name]:
            raise HfPxError(
                f"unknown {name} {value!r}; choose {' or '.join(map(repr, CHOICES[name]))}"
            )
        if name in ("epochs", "batch_size", "gradient_accumulation_steps") and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise HfPxError(f"{name} must be a positive integer, got {value!r}")
        if name in ("lr", "learning_rate") and not (
            isinstance(value, int | float) and 0 < value < math.inf
        ):
            raise HfPxError(f"{name} must be a positive number, got {value!r}")
        if name == "weight_decay" and not (isinstance(value, int | float) and value >= 0):
            raise HfPxError(f"{name} must be a number ≥ 0, got {value!r}")


def _training_arguments(work: str, *, optimizer: str, momentum: float, **settings: Any) -> Any:
    """Trainer's settings for a masked fine-tune: cosine decay, nothing saved or reported."""
    from transformers import TrainingArguments

    try:
        return TrainingArguments(
            output_dir=work,
            num_train_epochs=settings["epochs"],
            learning_rate=float(settings["learning_rate"]),
            per_device_train_batch_size=settings["batch_size"],
            per_device_eval_batch_size=settings["batch_size"],
            gradient_accumulation_steps=settings["gradient_accumulation_steps"],
            weight_decay=float(settings["weight_decay"]),
            optim="adamw_torch" if optimizer == "adamw" else "sgd",
            optim_args=None if optimizer == "adamw" else f"momentum={momentum}",
            lr_scheduler_type="cosine",
            max_grad_norm=settings["max_grad_norm"],
            bf16=settings["bf16"],
            use_cpu=not torch.cuda.is_available(),
            seed=settings["seed"],
            data_seed=settings["seed"],
            logging_strategy="epoch",
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=settings["quiet"],
            ddp_find_unused_parameters=False,
        )
    except (ValueError, ImportError) as err:
        first = str(err).strip().splitlines()[0]
        raise HfPxError(f"invalid training settings ({first}); drop --bf16 or fix it") from None


def _evaluate(trainer: Any, dataset: Any) -> dict[str, Any] | None:
    if dataset is None:
        return None
    metrics = trainer.evaluate()
    return {
        "accuracy": float(metrics["eval_accuracy"]),
        "loss": float(metrics["eval_loss"]),
        "num_samples": len(dataset),
    }
