"""`hf-px prune` refuses a data-driven method without --dataset, except on the shipped model."""

from __future__ import annotations

import pytest

from hf_px.cli.main import run


@pytest.mark.parametrize("method", ["px", "snip", "grasp"])
def test_data_driven_method_without_dataset_is_refused(method, tmp_path, capsys):
    from conftest import tiny_resnet

    src = tmp_path / "tiny"
    tiny_resnet().save_pretrained(src)
    out = tmp_path / "out"
    capsys.readouterr()
    code = run(["prune", str(src), "--sparsity", "0.9", "--method", method,
                "--output-dir", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hf-px: error:")]
    assert code == 2 and len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert "pass --dataset" in errors[0] and f"--method {method}" in errors[0]
    assert not out.exists()  # refused before calibrating or writing anything


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "synflow"])
def test_data_free_methods_need_no_dataset(method, tmp_path):
    from conftest import tiny_resnet

    src = tmp_path / "tiny"
    tiny_resnet().save_pretrained(src)
    args = ["prune", str(src), "--sparsity", "0.5", "--method", method, "--rounds", "1"]
    assert run([*args, "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0


@pytest.mark.slow
def test_the_shipped_model_calibrates_on_the_builtin_digits(tmp_path):
    args = ["prune", "px-digits-resnet", "--sparsity", "0.5", "--method", "px", "--rounds", "1"]
    assert run([*args, "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
