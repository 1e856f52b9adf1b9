"""`--split` names a split the data has, for every source and command, and is checked
before the model loads."""

from __future__ import annotations

import pytest

from hf_px.calibration import digits_dataset, open_dataset, resolve_split
from hf_px.cli.main import run
from hf_px.errors import HfPxError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two single `Dataset`s on disk: one without a split name, one that was `test`."""
    import datasets

    tmp = tmp_path_factory.mktemp("splits")
    rows = digits_dataset().select(range(40))
    rows.save_to_disk(str(tmp / "plain"))
    test = datasets.Dataset(rows.data, info=rows.info, split=datasets.Split.TEST)
    test.save_to_disk(str(tmp / "test"))
    return tmp / "plain", tmp / "test"


def test_a_single_dataset_refuses_a_split_it_is_not(saved):
    plain, test = saved
    assert len(open_dataset(plain)) == 40  # the default split: the data itself
    assert len(open_dataset(test, split="test")) == 40
    assert len(open_dataset(test)) == 40
    with pytest.raises(HfPxError, match="no split 'nonexistent'") as err:
        open_dataset(plain, split="nonexistent")
    assert "drop --split" in str(err.value)
    with pytest.raises(HfPxError, match="--split test"):
        open_dataset(test, split="validation")


def test_an_image_folder_refuses_a_split_it_lacks_before_opening(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / c / "0.png")
    assert resolve_split(tmp_path, None, "test") == "test"
    with pytest.raises(HfPxError, match="no split 'validation'.*'train', 'test'"):
        resolve_split(tmp_path, None, "validation")


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("hf-px: error:")]
    return line


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{missing}", "--dataset", "{plain}", "--split", "nonexistent"],
        ["prune", "{missing}", "--sparsity", "0.5", "--dataset", "{plain}", "--split", "nope"],
        ["prune", "{missing}", "--sparsity", "0.5", "--eval", "--eval-dataset", "{plain}",
         "--eval-split", "nope"],
        ["finetune", "{missing}", "--dataset", "{plain}", "--split", "nope"],
    ],
    ids=["eval", "prune", "prune-eval", "finetune"],
)  # fmt: skip
def test_every_command_refuses_a_missing_split_before_loading_the_model(
    saved, tmp_path, capsys, argv
):
    missing = tmp_path / "no-model-here"  # a model error would come first if loaded first
    if argv[0] == "finetune":
        missing.mkdir()
        (missing / "pruning_config.json").write_text("{}")
    values = {"{missing}": str(missing), "{plain}": str(saved[0])}
    code = run([values.get(a, a) for a in argv] + ["--quiet"])
    line = _error(capsys)
    assert code == 2
    assert "no split 'no" in line and "drop --split" in line, line


def test_a_prune_card_records_the_split_it_used(saved, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", "px-digits-resnet", "--sparsity", "0.5", "--method", "magnitude"]
    argv += ["--dataset", str(saved[1]), "--num-samples", "20", "--output-dir", str(out), "-q"]
    assert run(argv) == 0, capsys.readouterr().err
    assert "(split `test`)" in (out / "README.md").read_text()  # its own split, not `train`


SPLIT_CHECK = """
import json, sys
from hf_px.calibration import resolve_split

split = resolve_split(None, None, None), resolve_split("sklearn-digits", None, "train")
print(json.dumps({"split": split, "built": [m for m in ("sklearn", "datasets") if m in sys.modules]}))
"""


def test_the_built_in_digits_split_is_checked_without_building_the_data():
    """The check before the model loads costs nothing for the default data: neither the
    digits (sklearn) nor `datasets` are imported for it; a wrong split is still refused."""
    import json
    import subprocess
    import sys

    from conftest import subprocess_env

    with pytest.raises(HfPxError, match="built-in digits dataset has no split 'test'"):
        resolve_split(None, None, "test")
    proc = subprocess.run(
        [sys.executable, "-c", SPLIT_CHECK], env=subprocess_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"split": [None, "train"], "built": []}
