"""What a prune request means for the weights a model already has at zero, and the
requests that would prune nothing or everything."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import make_batches, tiny_resnet, tiny_vit

from hf_px import load_pruning, prune
from hf_px.cli.main import run
from hf_px.errors import HfPxError


def _zeros(model, masks) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach() == 0 for n in masks}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_zeros_a_model_came_with_stay_pruned_and_count_toward_the_target(caplog):
    model = tiny_resnet()
    first = prune(model, make_batches(), 0.6, method="magnitude")
    came_with = {n: ~m for n, m in first.masks.items()}
    again = prune(model, make_batches(), 0.8, method="px", rounds=3)
    assert again.num_pruned == round(0.8 * again.num_prunable)
    for n, mask in again.masks.items():
        assert not (mask & came_with[n]).any(), n  # nothing the model had at zero comes back
        assert torch.equal(~mask, _zeros(model, again.masks)[n]), n
    assert again.history[0]["density"] < 0.4  # the schedule starts from what was kept


def test_a_target_below_the_zeros_it_came_with_reports_them_and_warns(caplog):
    model = tiny_vit()
    first = prune(model, make_batches(), 0.9, method="magnitude")
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        again = prune(model, make_batches(), 0.5, method="snip")
    assert again.sparsity == first.sparsity
    assert again.config.sparsity == 0.5  # the request, as asked
    for n, mask in again.masks.items():
        assert torch.equal(mask, first.masks[n]), n
    (line,) = [w for w in _warnings(caplog) if "already" in w]
    assert "90.00%" in line and "50.00%" in line and "\n" not in line


def test_cli_reprune_of_a_pruned_checkpoint_reports_its_zeros(tmp_path, capsys):
    first, second = tmp_path / "p90", tmp_path / "p50"
    common = ["--method", "magnitude", "--json", "--quiet", "--dataset", "sklearn-digits"]
    assert run(["prune", "px-digits-resnet", "--sparsity", "0.9", "--output-dir", str(first),
                *common]) == 0  # fmt: skip
    capsys.readouterr()
    assert run(["prune", str(first), "--sparsity", "0.5", "--output-dir", str(second),
                *common]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert summary["requested_sparsity"] == 0.5
    assert "already" in err
    saved = load_pruning(second)
    assert saved.sparsity == pytest.approx(0.9, abs=1e-4)
    report = json.loads((second / "sparsity_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert "pruned to 90% sparsity" in (second / "README.md").read_text()


@pytest.mark.parametrize(
    ("sparsity", "fragment"),
    [(0.999999, "prunes every one of"), (1e-9, "prunes none of")],
)
def test_a_sparsity_that_prunes_everything_or_nothing_is_refused(sparsity, fragment):
    model = tiny_resnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HfPxError, match=fragment):
        prune(model, make_batches(), sparsity, method="magnitude")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("sparsity", ["0.999999", "1e-9"])
def test_cli_refuses_them_in_one_line_before_any_data_is_read(tmp_path, capsys, sparsity):
    out = tmp_path / "out"
    code = run(["prune", "px-digits-resnet", "--sparsity", sparsity, "--output-dir", str(out),
                "--dataset", str(tmp_path / "not-read"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("hf-px: error:")]
    assert "79,280" in line and "dataset" not in line  # refused before the data set is opened
    assert not out.exists()


def test_an_exclude_pattern_that_matches_nothing_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        result = prune(tiny_resnet(), make_batches(), 0.5, method="magnitude",
                       exclude=["clasifier", "classifier"])  # fmt: skip
    assert "classifier.1.weight" not in result.masks
    (line,) = [w for w in _warnings(caplog) if "clasifier" in w]
    assert "match no prunable weight" in line and "'classifier'" not in line


def test_a_tensor_left_with_no_weight_is_named_in_a_warning(caplog):
    model = tiny_vit()
    with torch.no_grad():
        model.classifier.weight.mul_(1e-3)  # the smallest magnitudes: all pruned first
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        result = prune(model, make_batches(), 0.5, method="magnitude", min_density_ratio=0.0)
    assert not result.masks["classifier.weight"].any()
    (line,) = [w for w in _warnings(caplog) if "every weight" in w]
    assert "'classifier.weight'" in line


def test_a_tensor_that_came_all_zero_is_named_as_such(caplog):
    model = tiny_vit()
    with torch.no_grad():
        model.classifier.weight.zero_()  # zero-initialised, or pruned away earlier
    with caplog.at_level(logging.WARNING, logger="hf_px"):
        result = prune(model, make_batches(), 0.5, method="magnitude")
    assert not result.masks["classifier.weight"].any()
    (line,) = [w for w in _warnings(caplog) if "every weight" in w]
    assert "1 came all zero" in line and "--exclude" in line
