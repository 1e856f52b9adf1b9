"""`PruningConfig`: validated on construction like `prune`, one set of defaults,
`save_pretrained`/`from_pretrained`, `prune(..., config=cfg)`, forward-compatible keys."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re

import pytest
import torch
from conftest import make_batches, tiny_resnet

from hf_px import HfPxError, PruningConfig, compute_scores, prune

BAD = [
    {"sparsity": 90},
    {"sparsity": 0.0},
    {"sparsity": "lots"},
    {"sparsity": 0.5, "method": "nope"},
    {"sparsity": 0.5, "scope": "local"},
    {"sparsity": 0.5, "rounds": 0},
    {"sparsity": 0.5, "rounds": 2.5},
    {"sparsity": 0.5, "exclude": ["("]},
    {"sparsity": 0.5, "min_density_ratio": 1.5},
]


@pytest.mark.parametrize("kwargs", BAD)
def test_config_refuses_what_prune_refuses_with_the_same_line(kwargs):
    with pytest.raises(HfPxError) as from_config:
        PruningConfig(**kwargs)
    with pytest.raises(HfPxError) as from_prune:
        prune(tiny_resnet(), make_batches(1, 2), **kwargs)
    assert str(from_config.value) == str(from_prune.value)
    assert "\n" not in str(from_config.value)


def test_sparsity_90_names_the_fix():
    with pytest.raises(HfPxError, match=r"did you mean 0\.9"):
        PruningConfig(sparsity=90)


def test_one_set_of_defaults():
    cfg = PruningConfig()
    sig = inspect.signature(prune).parameters
    # every prune keyword that is a config field defaults to "take the config's"
    for f in dataclasses.fields(PruningConfig):
        if f.name in sig and sig[f.name].kind is not inspect.Parameter.VAR_KEYWORD:
            assert sig[f.name].default is None, f.name
    assert cfg.min_density_ratio == 0.1 and cfg.rounds is None and cfg.method == "px"
    result = prune(tiny_resnet(), make_batches(1, 2), method="magnitude")
    assert result.config == dataclasses.replace(
        PruningConfig(method="magnitude"), rounds=1, model_type="resnet"
    )


def test_prune_takes_a_config_and_keywords_override_it():
    batches = make_batches(1, 4)
    cfg = PruningConfig(method="magnitude", sparsity=0.7, exclude=["classifier"], seed=3)
    a, b = tiny_resnet(), tiny_resnet()
    by_config = prune(a, batches, config=cfg)
    by_keywords = prune(b, batches, 0.7, "magnitude", exclude=["classifier"], seed=3)
    assert by_config.config == by_keywords.config
    assert by_config.masks.keys() == by_keywords.masks.keys()
    assert all(torch.equal(by_config.masks[n], by_keywords.masks[n]) for n in by_config.masks)
    assert by_config.sparsity == pytest.approx(0.7, abs=1e-3)
    assert cfg.rounds is None  # the caller's config is not changed
    over = prune(tiny_resnet(), batches, sparsity=0.5, config=cfg)
    assert over.config.sparsity == 0.5 and over.config.exclude == ["classifier"]
    with pytest.raises(HfPxError, match="config must be a PruningConfig"):
        prune(tiny_resnet(), batches, config={"sparsity": 0.5})


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    cfg = PruningConfig(
        method="grasp", sparsity=0.8, rounds=3, method_options={"temperature": 100.0}
    )
    path = cfg.save_pretrained(tmp_path / "new" / "dir")  # created
    assert path.name == "pruning_config.json"
    assert PruningConfig.from_pretrained(tmp_path / "new" / "dir") == cfg
    assert PruningConfig.from_pretrained(str(tmp_path / "new" / "dir"), seed=5).seed == 5
    with pytest.raises(HfPxError, match="pruning_config.json"):
        PruningConfig.from_pretrained(tmp_path / "new")
    with pytest.raises(HfPxError, match="is a file"):
        cfg.save_pretrained(path)


def test_unknown_keys_from_a_newer_version_warn_and_are_dropped(tmp_path, caplog):
    data = {**PruningConfig(sparsity=0.6).to_dict(), "future_knob": 3, "another": "x"}
    (tmp_path / "pruning_config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        cfg = PruningConfig.from_pretrained(tmp_path)
    assert cfg.sparsity == 0.6 and not hasattr(cfg, "future_knob")
    assert "future_knob" in caplog.text and "another" in caplog.text
    # a bad value in a saved file is refused with the same line as prune's
    (tmp_path / "pruning_config.json").write_text(json.dumps({**data, "sparsity": 90}))
    with pytest.raises(HfPxError, match=r"did you mean 0\.9"):
        PruningConfig.from_pretrained(tmp_path)
    (tmp_path / "pruning_config.json").write_text("{not json")
    with pytest.raises(HfPxError, match="not valid JSON"):
        PruningConfig.from_pretrained(tmp_path)


def test_a_config_saved_with_the_retired_schedule_field_still_loads(tmp_path, caplog):
    # hf-px once saved "schedule": "exponential" (the only schedule it had) in every config
    data = {**PruningConfig(sparsity=0.6).to_dict(), "schedule": "exponential"}
    (tmp_path / "pruning_config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        cfg = PruningConfig.from_pretrained(tmp_path)
    assert cfg == PruningConfig(sparsity=0.6)
    assert "schedule" in caplog.text and not hasattr(cfg, "schedule")


def test_a_misspelt_method_option_is_refused_naming_the_valid_ones():
    valid = "attn, bn, cut_scale, fisher_classes, form, keep_classifier, norm, qk, refresh"
    line = f"px has no option 'nrom'; valid: {valid}"
    batches = make_batches(1, 2)
    with pytest.raises(HfPxError, match=re.escape(line)):
        prune(tiny_resnet(), batches, 0.5, "px", rounds=2, nrom="rms")
    with pytest.raises(HfPxError, match=re.escape(line)):
        compute_scores(tiny_resnet(), batches, "px", nrom="rms")
    with pytest.raises(HfPxError, match=re.escape(line)):
        PruningConfig(method_options={"nrom": "rms"})
    with pytest.raises(HfPxError, match="magnitude has no option 'temperature'; valid: none"):
        PruningConfig(method="magnitude", method_options={"temperature": 2})
    with pytest.raises(HfPxError, match="temperature=0 is not a positive number"):
        prune(tiny_resnet(), batches, 0.5, "grasp", temperature=0)


def test_method_options_are_checked_and_recorded_as_typed():
    cfg = PruningConfig(method_options={"refresh": "0.25", "cut_scale": "false"})
    result = prune(tiny_resnet(), make_batches(1, 2), 0.5, "px", rounds=2, config=cfg)
    recorded = result.config.method_options
    assert recorded["refresh"] == 0.25 and recorded["cut_scale"] is False
    assert recorded["form"] == "bound"  # resolved from the weights, recorded


def test_a_saved_method_option_this_version_does_not_know_warns_and_is_dropped(tmp_path, caplog):
    data = PruningConfig(method_options={"bn": "rms"}).to_dict()
    data["method_options"]["future_knob"] = 3
    (tmp_path / "pruning_config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        cfg = PruningConfig.from_pretrained(tmp_path)
    assert cfg.method_options == {"bn": "rms"}
    assert "future_knob" in caplog.text
