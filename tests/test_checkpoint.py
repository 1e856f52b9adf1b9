"""save_pruned / load_model / inspect_checkpoint: real files, real from_pretrained, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CHILD_THREADS, bits, make_batches, pruned, tiny_convnext, tiny_resnet, tiny_vit
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hf_px
from hf_px import HfPxError, HfPxFailure, save_pruned
from hf_px.checkpoint import inspect_checkpoint
from hf_px.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


def assert_same_bits(expected: dict, got: dict) -> None:
    assert set(expected) == set(got)
    for k, v in expected.items():
        assert v.dtype == got[k].dtype, k
        assert torch.equal(bits(v), bits(got[k])), k


def assert_pruned_are_zero(state: dict, result) -> None:
    for name, mask in result.masks.items():
        assert bool((bits(state[name])[~mask] == 0).all()), name  # +0.0 exactly


def listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def run_fresh(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=CHILD_THREADS, TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


# A process that never imports hf_px: the dense checkpoint loads bit for bit, the
# bitmask checkpoint is refused loudly (never random weights).
PLAIN = """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForImageClassification
    dense, packed, out = sys.argv[1:4]
    model = AutoModelForImageClassification.from_pretrained(dense)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, out)
    try:
        AutoModelForImageClassification.from_pretrained(packed)
        refused = None
    except Exception as e:
        refused = type(e).__name__
    print(json.dumps({"refused": refused, "hf_px_imported": any(m.startswith("hf_px") for m in sys.modules)}))
"""


def test_dense_loads_bit_exact_without_hf_px_and_bitmask_fails_loudly(tmp_path):
    model, result = pruned(tiny_vit)
    dense = save_pruned(model, tmp_path / "dense", result, card=False)
    packed = save_pruned(model, tmp_path / "packed", result, format="bitmask", card=False)
    proc = run_fresh(PLAIN, dense, packed, tmp_path / "loaded.safetensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["hf_px_imported"] is False
    loaded = load_file(tmp_path / "loaded.safetensors")
    assert_same_bits(model.state_dict(), loaded)
    assert_pruned_are_zero(loaded, result)
    # the bitmask checkpoint: an exception, and the output says what to do
    assert report["refused"] is not None
    assert "pip install hf-px" in proc.stderr and "import hf_px" in proc.stderr


# `import hf_px` must not import transformers, yet must make from_pretrained decode.
LAZY = """
    import json, sys
    import hf_px
    lazy = "transformers" not in sys.modules
    from safetensors.torch import save_file
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1])
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, sys.argv[2])
    print(json.dumps({"lazy": lazy, "quantized": hasattr(model.config, "quantization_config")}))
"""


def test_import_hf_px_then_plain_from_pretrained_decodes_bitmask(tmp_path):
    model, result = pruned(tiny_convnext, 0.95)
    packed = save_pruned(model, tmp_path / "packed", result, format="bitmask", card=False)
    proc = run_fresh(LAZY, packed, tmp_path / "loaded.safetensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"lazy": True, "quantized": False}
    loaded = load_file(tmp_path / "loaded.safetensors")
    assert_same_bits(model.state_dict(), loaded)


EXPLICIT = """
    import json, sys
    import hf_px
    from hf_px.checkpoint import quantizer
    # explicit registration before transformers' registry is imported: the import runs
    # the post-import hook, which registers too (this used to deadlock)
    quantizer.register()
    quantizer.register()
    from transformers.quantizers import auto
    print(json.dumps({"registered": quantizer.QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING}))
"""


def test_explicit_registration_before_transformers_does_not_hang():
    proc = run_fresh(EXPLICIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"registered": True}


@pytest.mark.parametrize("builder", [tiny_vit, tiny_convnext, tiny_resnet])
def test_bitmask_round_trip_through_from_pretrained(tmp_path, builder):
    model, result = pruned(builder, 0.9)
    out = save_pruned(model, tmp_path / "m", result, format="bitmask", card=False)
    dense = save_pruned(model, tmp_path / "d", result, card=False)
    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert_same_bits(model.state_dict(), loaded.state_dict())
    assert_pruned_are_zero(loaded.state_dict(), result)
    # the loaded model is a plain dense model: no quantizer left behind
    assert not hasattr(loaded.config, "quantization_config")
    assert not getattr(loaded, "is_quantized", False)
    # tiny models: safetensors headers and dense norms weigh a lot; still clearly smaller
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.75 * (dense / "model.safetensors").stat().st_size
    x = make_batches(1)[0]["pixel_values"]
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, loaded(pixel_values=x).logits)
    # re-saving the loaded model gives an ordinary dense checkpoint
    loaded.save_pretrained(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert "quantization_config" not in config
    again = AutoModelForImageClassification.from_pretrained(tmp_path / "resaved")
    assert_same_bits(model.state_dict(), again.state_dict())


def test_bitmask_keeps_half_precision_bits_and_honours_dtype(tmp_path):
    model, result = pruned(tiny_resnet, 0.8)
    fp32 = save_pruned(model, tmp_path / "fp32", result, format="bitmask", card=False)
    model = model.to(torch.bfloat16)
    out = save_pruned(model, tmp_path / "bf16", result, format="bitmask", card=False)
    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert_same_bits(model.state_dict(), loaded.state_dict())
    # a float32 checkpoint loaded as bfloat16: the same rounding as .to(bfloat16)
    cast = AutoModelForImageClassification.from_pretrained(fp32, dtype=torch.bfloat16)
    assert_same_bits(model.state_dict(), cast.state_dict())


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_sharded_checkpoints_load(tmp_path, fmt):
    model, result = pruned(tiny_vit, 0.5)
    out = save_pruned(model, tmp_path / fmt, result, format=fmt, card=False, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert_same_bits(model.state_dict(), loaded.state_dict())


def test_directory_contents_and_records(tmp_path):
    from transformers import ViTImageProcessor

    model, result = pruned(tiny_vit, 0.9)
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    out = save_pruned(model, tmp_path / "out", result, image_processor=proc, card=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert hf_px.PruningConfig.from_pretrained(out) == result.config
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["num_pruned"] == result.num_pruned
    assert "README.md" not in names
    # nothing but the target directory appeared beside it
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_card_is_written_when_available(tmp_path):
    model, result = pruned(tiny_resnet, 0.9)
    out = save_pruned(model, tmp_path / "out", result, format="bitmask")
    assert (out / "README.md").exists()


def test_non_empty_output_refused_unless_overwrite(tmp_path):
    model, result = pruned(tiny_resnet)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(HfPxError, match="--overwrite"):
        save_pruned(model, target, result, card=False)
    assert listing(target) == {"keep.txt": b"mine"}
    save_pruned(model, target, result, card=False, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # an existing empty directory is fine without overwrite
    (tmp_path / "empty").mkdir()
    save_pruned(model, tmp_path / "empty", result, card=False)


def test_input_model_directory_is_never_written(tmp_path):
    src_model, _ = pruned(tiny_resnet, 0.5)
    src = tmp_path / "src"
    src_model.save_pretrained(src)
    before = listing(src)
    model = AutoModelForImageClassification.from_pretrained(src)
    result = hf_px.prune(model, make_batches(), 0.9, method="magnitude", rounds=1)
    for target in (src, src / "pruned"):
        with pytest.raises(HfPxError, match="overlaps the input directory"):
            save_pruned(model, target, result, overwrite=True, card=False)
    other = tmp_path / "elsewhere"
    with pytest.raises(HfPxError, match="overlaps the input directory"):
        save_pruned(model, src, result, overwrite=True, card=False, source={"local_path": str(src)})
    save_pruned(model, other, result, card=False, source={"local_path": str(src)})
    assert listing(src) == before


def test_bad_arguments_are_refused(tmp_path):
    model, result = pruned(tiny_resnet)
    with pytest.raises(HfPxError, match="dense"):
        save_pruned(model, tmp_path / "x", result, format="zip", card=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(HfPxError, match="not a directory"):
        save_pruned(model, tmp_path / "file", result, card=False)
    with pytest.raises(HfPxError, match="PruningResult"):
        save_pruned(model, tmp_path / "x", {"masks": {}}, card=False)
    name = next(iter(result.masks))
    with torch.no_grad():
        dict(model.named_parameters())[name].add_(1.0)
    with pytest.raises(HfPxError, match="not zero"):
        save_pruned(model, tmp_path / "x", result, card=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_write_leaves_nothing(tmp_path, overwrite):
    model, result = pruned(tiny_vit)
    target = tmp_path / "out"
    if overwrite:
        target.mkdir()
        (target / "old.txt").write_text("old")
    # weights and config are written before the records; this one cannot be serialised
    result.config.calibration["callback"] = object()
    with pytest.raises(HfPxError, match="JSON"):
        save_pruned(model, target, result, format="bitmask", overwrite=overwrite, card=False)
    with pytest.raises(HfPxError, match="JSON"):  # parents it had to create go too
        save_pruned(model, tmp_path / "new" / "dirs" / "out", result, card=False)
    if overwrite:
        assert listing(target) == {"old.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if overwrite else [])


def test_no_local_path_or_user_in_written_files(tmp_path):
    model, result = pruned(tiny_vit)
    data = tmp_path / "my-images"
    src = tmp_path / "src"
    src.mkdir()
    result.config.calibration = {"dataset": str(data), "num_samples": 8}
    out = save_pruned(
        model,
        tmp_path / "out",
        result,
        format="bitmask",
        source={"model_id": None, "local_path": str(src)},
        calibration={"dataset": str(data), "num_samples": 8},
    )
    saved = json.loads((out / "pruning_config.json").read_text())
    assert saved["calibration"]["dataset"] == "my-images"
    for name, raw in listing(out).items():
        if name.endswith((".json", ".md")):
            text = raw.decode()
            assert str(tmp_path) not in text and str(Path.home()) not in text, name


def test_the_calibration_given_to_save_is_recorded_in_the_config(tmp_path):
    from hf_px.card import CalibrationRecord, FinetuneRecipe

    model, result = pruned(tiny_resnet)
    result.config.calibration = {"finetune": {"epochs": 3}, "note": "kept"}
    record = CalibrationRecord(dataset="ylecun/mnist", split="train", num_samples=8)
    out = save_pruned(model, tmp_path / "out", result, calibration=record)
    saved = hf_px.PruningConfig.from_pretrained(out).calibration
    # merged over what the config held: a fine-tune recipe and the caller's own keys stay
    assert saved == {**record.to_dict(), "finetune": {"epochs": 3}, "note": "kept"}
    back = CalibrationRecord.from_mapping(saved)
    assert back == CalibrationRecord(
        dataset="ylecun/mnist", split="train", num_samples=8, finetune=FinetuneRecipe(epochs=3)
    )
    assert "ylecun/mnist (split `train`), 8 images" in (out / "README.md").read_text()
    with pytest.raises(HfPxError, match="CalibrationRecord or a dict"):
        save_pruned(model, tmp_path / "bad", result, calibration=["mnist"], card=False)
    assert not (tmp_path / "bad").exists()


def test_a_leak_the_scrubber_misses_aborts_the_write(tmp_path):
    model, result = pruned(tiny_resnet)
    result.config.calibration["note"] = f"run from {tmp_path}/work"
    with pytest.raises(HfPxFailure, match="local path"):
        save_pruned(model, tmp_path / "out", result, card=False)
    assert list(tmp_path.iterdir()) == []


def test_inspect_reports_format_sparsity_and_size(tmp_path):
    model, result = pruned(tiny_vit, 0.9)
    dense = inspect_checkpoint(save_pruned(model, tmp_path / "d", result, card=False))
    packed = inspect_checkpoint(
        save_pruned(model, tmp_path / "b", result, format="bitmask", card=False)
    )
    assert dense["format"] == "dense" and packed["format"] == "bitmask"
    for info in (dense, packed):
        assert info["sparsity"] == pytest.approx(result.sparsity)
        assert info["pruning_config"]["method"] == "magnitude"
    assert packed["size_bytes"] < 0.3 * dense["size_bytes"]
    # stored under transformers' checkpoint names (the parameter is vit.layers.0.mlp.fc1)
    stored = packed["tensors"]["vit.encoder.layer.0.intermediate.dense.weight"]
    assert stored["storage"] in ("elias-fano", "bitmask")
    assert stored["sparsity"] == result.per_tensor_sparsity["vit.layers.0.mlp.fc1.weight"]
    assert dense["tensors"]["classifier.weight"]["storage"] == "dense"
    json.dumps(dense)
    with pytest.raises(HfPxError, match="no config.json"):
        inspect_checkpoint(tmp_path)


def test_load_model_safetensors_with_processor(tmp_path):
    from transformers import ViTImageProcessor

    model, result = pruned(tiny_vit)
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    out = save_pruned(model, tmp_path / "m", result, image_processor=proc, card=False)
    loaded, processor = load_model(out)
    assert not loaded.training and processor is not None
    assert_same_bits(model.state_dict(), loaded.state_dict())
    packed = save_pruned(model, tmp_path / "b", result, format="bitmask", card=False)
    loaded, processor = load_model(packed)
    assert processor is None
    assert_same_bits(model.state_dict(), loaded.state_dict())


def test_load_model_pickle_only_needs_opt_in(tmp_path):
    model = tiny_resnet()
    d = tmp_path / "bin"
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(HfPxError, match="--allow-pickle"):
        load_model(d)
    loaded, _ = load_model(d, allow_pickle=True)
    assert_same_bits(model.state_dict(), loaded.state_dict())


def test_load_model_refuses_non_classifiers_and_unknown_ids(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(HfPxError, match="not an image classifier") as e:
        load_model(tmp_path / "bert")
    assert "\n" not in str(e.value)
    with pytest.raises(HfPxError, match="cannot find model") as e:
        load_model("hf-px-tests/no-such-model-anywhere")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfPxError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_plain_state_dict_file_is_what_dense_stores(tmp_path):
    # the dense format adds nothing to the weights file: every tensor is the model's own
    model, result = pruned(tiny_convnext, 0.7)
    out = save_pruned(model, tmp_path / "d", result, card=False)
    stored = load_file(out / "model.safetensors")
    assert sum(t.numel() for t in stored.values()) == sum(
        t.numel() for t in model.state_dict().values()
    )


def test_inspect_counts_zeros_of_weights_stored_whole(tmp_path):
    model = tiny_resnet()
    result = hf_px.prune(
        model, make_batches(), 0.5, method="magnitude", rounds=1, exclude=["classifier"]
    )
    head = model.classifier[1].weight
    with torch.no_grad():
        head[0, 0] = 0.0  # not pruned, just zero
    info = inspect_checkpoint(
        save_pruned(model, tmp_path / "b", result, format="bitmask", card=False)
    )
    stored = info["tensors"]["classifier.1.weight"]
    assert stored["storage"] == "full"
    assert stored["zeros"] == 1
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "b")
    assert_same_bits(model.state_dict(), loaded.state_dict())
