"""Every image-classification model type of transformers: pruned correctly, or refused.

One case per type in ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``, each from a
tiny config this suite owns (`tiny_families.py`). A supported type must score
every prunable tensor finite, non-negative and not all-zero with PX, prune exactly
at 90% global without emptying a tensor, reload bit-exactly from dense and bitmask
checkpoints, and run in ``pipeline("image-classification")``. A refused type must
be refused before any work, by the library and by ``hf-px prune``. A type added
to transformers' mapping with neither fails here.
"""

from __future__ import annotations

import json

import pytest
import tiny_families as tf
import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_px import HfPxError, compute_scores, prune
from hf_px.adapters import REFUSED, get_adapter

TYPES = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
SUPPORTED = [t for t in TYPES if t not in REFUSED]
# the second classifier class of types that map to two (the distilled "WithTeacher" heads)
TEACHERS = [(t, a) for t in SUPPORTED for a in tf.architectures(t)[1:] if "Teacher" in a]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models gain nothing from a second thread; on a loaded machine its
    # synchronisation made this file ~10x slower in CPU time (measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_mapped_type_is_either_supported_or_refused():
    missing = sorted(set(TYPES) - set(tf.CONFIGS))
    assert not missing, (
        f"transformers maps new image-classification types {missing}: add a tiny config to "
        "tests/tiny_families.py and either make them prune correctly or list them in "
        "hf_px.adapters.REFUSED"
    )
    assert set(REFUSED) <= set(TYPES), "REFUSED names a type transformers no longer maps"


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_supported_type_prunes_correctly(model_type, tmp_path):
    problems = tf.run_checks(model_type, tmp_path, pipeline=True)
    assert problems["tensors"] >= 3
    bad = {k: v for k, v in problems.items() if isinstance(v, list) and v}
    assert not bad, f"{model_type}: {bad}"


@pytest.mark.parametrize(("model_type", "architecture"), TEACHERS)
def test_distilled_heads_are_kept_as_classifier_and_prune(model_type, architecture):
    model = tf.build(model_type, architecture=architecture)
    heads = get_adapter(model).classifier_parameter_names(model)
    assert len({n.split(".")[0] for n in heads}) == 2, heads  # both heads, untransformed
    data = tf.batches(model_type)
    result = prune(model, data, tf.SPARSITY, method="px", rounds=1)
    assert not tf.check_pruned(model, result, tf.SPARSITY)


class _Configured(nn.Module):
    """A module carrying only a refused type's config: refusal must need nothing else."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(4, 4)

    def forward(self, pixel_values):  # pragma: no cover - never reached
        raise AssertionError("a refused model was run")


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_type_is_refused_before_any_work(model_type, tmp_path, capsys):
    from hf_px.cli.main import run

    config = tf.config(model_type)
    model = _Configured(config)
    batches = [{"pixel_values": torch.zeros(1, 3, 8, 8)}]
    for call in (
        lambda: prune(model, batches, 0.5, method="magnitude"),
        lambda: compute_scores(model, batches, method="px"),
    ):
        with pytest.raises(HfPxError, match=rf"model_type {model_type!r}: "):
            call()
    # the CLI reads the config only: a directory without any weights is refused
    src = tmp_path / "src"
    config.save_pretrained(src)
    out = tmp_path / "out"
    code = run(["prune", str(src), "--sparsity", "0.5", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and model_type in err[0] and REFUSED[model_type][:30] in err[0]
    assert not out.exists()
    assert json.loads((src / "config.json").read_text())["model_type"] == model_type


def test_float64_rescoring_leaves_the_model_bit_exact():
    # random-init tiny EfficientNet: the float32 kernel net underflows (a magnitude, ~1e-100
    # in float64, not round-off) to 0 on whole tensors; reference-BN MobileNetV1 was used
    # here before, but its float64 scores are round-off (docs/method.md §3): 0.0 or not by CPU
    model = tf.build("efficientnet")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    scores = compute_scores(model, tf.batches("efficientnet"), method="px")
    assert {s.dtype for s in scores.values()} == {torch.float64}
    assert not tf.check_scores(scores)
    after = model.state_dict()
    for n, t in before.items():
        assert after[n].dtype == t.dtype and torch.equal(after[n], t), n


@pytest.mark.parametrize("act", [nn.ReLU6(inplace=True), nn.Hardswish(inplace=True), nn.Mish()])
def test_generic_gate_never_reenters_the_module_or_writes_its_input(act):
    from hf_px.adapters.base import default_gate_for

    fn = default_gate_for(act)
    calls = []
    act.register_forward_pre_hook(lambda m, i: calls.append(1))
    # inside a hook of the module itself, as PX reads gates
    act.register_forward_pre_hook(lambda m, i: calls.append(fn(i[0])) and None)
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0, 8.0])
    z_copy = z.clone()
    gate = fn(z)
    assert torch.equal(z, z_copy)
    act(z.clone())
    assert len(calls) == 2  # one per hook: computing the gate called no hook
    expected = act.__class__()(z_copy.clone()) / torch.where(z_copy == 0, 1.0, z_copy)
    nonzero = z_copy != 0
    assert torch.allclose(gate[nonzero], expected[nonzero])
