"""PX's default form follows the weights: the bound for an initialised model, the
per-sample Fisher form for one whose weights were loaded from a checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batches, tiny_resnet, tiny_vit
from transformers import AutoModelForImageClassification

from hf_px import HfPxError, compute_scores, prune
from hf_px.methods import px
from hf_px.utils import loaded_from_checkpoint


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    tiny_vit().save_pretrained(path)
    return path


def _load(path):
    return AutoModelForImageClassification.from_pretrained(path).eval()


def test_initialised_model_is_scored_with_the_bound():
    model = tiny_vit()
    assert not loaded_from_checkpoint(model)
    result = prune(model, make_batches(), 0.5, "px", rounds=2)
    assert result.config.method_options["form"] == "bound"


def test_loaded_model_is_scored_with_the_fisher_form(saved_vit):
    batches = make_batches()
    model = _load(saved_vit)
    assert loaded_from_checkpoint(model)
    auto = prune(model, batches, 0.5, "px", rounds=2)
    assert auto.config.method_options["form"] == "fisher"
    explicit = prune(_load(saved_vit), batches, 0.5, "px", rounds=2, form="fisher")
    bound = prune(_load(saved_vit), batches, 0.5, "px", rounds=2, form="bound")
    for n, m in auto.masks.items():
        assert torch.equal(m, explicit.masks[n]), n
    assert any(not torch.equal(m, bound.masks[n]) for n, m in auto.masks.items())
    # one scoring call decides the same way as prune's first round
    s_auto = compute_scores(_load(saved_vit), batches, "px")
    s_fisher = compute_scores(_load(saved_vit), batches, "px", form="fisher")
    for n, s in s_auto.items():
        torch.testing.assert_close(s, s_fisher[n], rtol=0, atol=0)


def test_reinitialised_head_does_not_make_a_loaded_body_initialised(saved_vit):
    model = AutoModelForImageClassification.from_pretrained(
        saved_vit, num_labels=5, ignore_mismatched_sizes=True
    )
    assert loaded_from_checkpoint(model)
    assert px.form_choice(model, {})[0] == "fisher"


def test_a_bound_only_option_means_the_bound_and_conflicts_with_another_form(saved_vit):
    model = _load(saved_vit)
    form, why = px.form_choice(model, {"norm": "rms"})
    assert form == "bound" and "norm" in why
    assert px.form_choice(model, {"form": "auto"})[0] == "fisher"
    with pytest.raises(HfPxError, match="form='bound' only"):
        prune(model, make_batches(), 0.5, "px", rounds=1, form="fisher", bn="rms")


def test_loaded_resnet_weights_decide_too(tmp_path):
    tiny_resnet().save_pretrained(tmp_path)
    assert px.form_choice(_load(tmp_path), {})[0] == "fisher"
    assert px.form_choice(tiny_resnet(), {})[0] == "bound"
