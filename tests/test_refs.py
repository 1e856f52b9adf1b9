"""Hub id or local path: one answer for loading, public names, cards and scrubbing."""

from __future__ import annotations

import pytest
from conftest import pruned

from hf_px.card import write_card
from hf_px.errors import HfPxError
from hf_px.refs import (
    is_local,
    local_files,
    looks_like_hub_id,
    public_name,
    scrub_paths,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("google/vit-base-patch16-224", True),
        ("facebook/convnext-tiny-224", True),
        ("/abs/path/model", False),
        ("./model", False),
        ("~/models/vit", False),
        ("../x/y", False),
        ("a/b/c", False),
        ("vit", False),
        (None, False),
    ],
)
def test_looks_like_hub_id(value, expected):
    assert looks_like_hub_id(value) is expected


def test_existing_relative_dir_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "ckpts" / "vit").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not looks_like_hub_id("ckpts/vit")
    assert is_local("ckpts/vit")
    assert public_name("ckpts/vit") == "vit"


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("cifar10", "cifar10"),
        ("ylecun/mnist", "ylecun/mnist"),
        ("sklearn-digits", "sklearn-digits"),
        ("./data/imgs/", "imgs"),
        ("/srv/data/imgs", "imgs"),
        ("~/imgs", "imgs"),
        (".", "local"),
        (None, None),
    ],
)
def test_public_name_keeps_hub_ids_and_reduces_paths(reference, expected):
    assert public_name(reference) == expected


def test_a_windows_path_is_reduced_to_its_last_component():
    # on POSIX, Path.name of a backslash path is the whole path: it leaked into files
    assert public_name("C:\\Users\\someone\\cifar") == "cifar"


def test_public_name_and_the_card_agree_on_what_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, result = pruned()
    for reference in ("a/b/imgs", "D:\\corp\\imgs"):
        # what the CLI records, and what the card shows of it, both drop the directories
        assert public_name(reference) == "imgs"
        path = write_card(
            tmp_path / "card",
            model=model,
            result=result,
            calibration={"dataset": reference, "num_samples": 8},
        )
        text = path.read_text()
        assert "local folder `imgs`" in text
        assert "corp" not in text and "a/b/" not in text


def test_a_path_like_reference_is_not_fetched_from_the_hub(tmp_path):
    with pytest.raises(HfPxError, match="not a directory or a Hub model id"):
        local_files(str(tmp_path / "missing"), ["*.json"])
    assert local_files(tmp_path, ["*.json"]) == tmp_path


def test_scrubbing_keeps_regexes_and_relative_names():
    record = {"exclude": ["^vit\\.encoder\\.", "classifier"], "dataset": "/srv/x/imgs"}
    assert scrub_paths(record) == {
        "exclude": ["^vit\\.encoder\\.", "classifier"],
        "dataset": "imgs",
    }
    assert scrub_paths(("~/a/b", "rel/name")) == ("b", "rel/name")
