"""Boolean environment variables: one reader, one vocabulary, for every flag hf-px reads."""

from __future__ import annotations

import pytest

from hf_px.checkpoint import bitmask
from hf_px.cli.main import _wants_debug
from hf_px.utils import env_flag, hub_offline


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes", "on", "ON", " on "])
def test_set_values(monkeypatch, value):
    monkeypatch.setenv("HF_PX_TEST_FLAG", value)
    assert env_flag("HF_PX_TEST_FLAG")


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2", "enabled"])
def test_unset_values(monkeypatch, value):
    monkeypatch.setenv("HF_PX_TEST_FLAG", value)
    assert not env_flag("HF_PX_TEST_FLAG")


def test_missing_is_unset(monkeypatch):
    monkeypatch.delenv("HF_PX_TEST_FLAG", raising=False)
    assert not env_flag("HF_PX_TEST_FLAG")


def test_every_flag_reads_on(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    monkeypatch.setenv("HF_PX_PURE_PYTHON_DECODE", "on")
    monkeypatch.setenv("HF_PX_DEBUG", "on")
    assert hub_offline()
    assert bitmask.native_decoder() is None  # "on" was ignored here
    assert _wants_debug([])


def test_debug_off_is_off(monkeypatch):
    # any value but "" and "0" used to turn debugging on, "false" included
    monkeypatch.setenv("HF_PX_DEBUG", "false")
    assert not _wants_debug([])
