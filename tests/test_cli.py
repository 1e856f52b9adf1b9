"""The `hf-px` command line, end to end, in subprocesses as a user runs it (the error
cases that need no process of their own run in this process: the `cli` fixture).

prune → inspect → eval → reload with plain `from_pretrained`; `--json` parsed;
every error case with its exit code and a one-line message naming
the fix. Models: the ResNet hf-px ships (`px-digits-resnet`) and tiny models
built from configs and saved to tmp_path. Data: the built-in offline digits
and image folders written by the tests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CHILD_THREADS, subprocess_env, tiny_vit

from hf_px.cli.main import run
from hf_px.cli.resolve import SHIPPED, default_output_dir, model_name, sparsity_tag
from hf_px.errors import HfPxError

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    values = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf_home"),
        "OMP_NUM_THREADS": CHILD_THREADS,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess_env(drop=("HF_", "ACCELERATE_"), **{**values, **extra})


def hfpx(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "hf_px", *args],
        cwd=cwd,
        env=env or _env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_json(stdout: str) -> dict:
    """stdout must be exactly one JSON object (json.loads rejects trailing text)."""
    return json.loads(stdout)


def _assert_one_line_error(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("hf-px: error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """`hf-px prune px-digits-resnet --sparsity 0.9 --eval --json` (a few rounds)."""
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "out"
    data = _digits_folder(tmp)
    proc = hfpx(
        "prune",
        "px-digits-resnet",
        "--sparsity",
        "0.9",
        "--rounds",
        "3",
        "--examples-per-class",
        "3",
        "--eval",
        "--eval-dataset",
        str(data),
        "--output-dir",
        str(out),
        "--json",
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, out, proc, data


def test_prune_json_is_one_object_with_the_truth(pruned_run):
    _, out, proc, _ = pruned_run
    s = _one_json(proc.stdout)
    assert s["output_dir"] == str(out) and out.is_dir()
    assert s["method"] == "px" and s["rounds"] == 3
    assert s["requested_sparsity"] == 0.9
    assert s["num_pruned"] == round(0.9 * s["num_prunable"])
    assert s["sparsity"] == pytest.approx(s["num_pruned"] / s["num_prunable"])
    assert set(s["per_tensor_density"]) >= {"classifier.1.weight"}
    assert all(0.0 < d <= 1.0 for d in s["per_tensor_density"].values())
    assert s["calibration"]["num_samples"] == 30  # 3 per class x 10 digits
    ev = s["evaluation"]
    assert ev["dense"]["accuracy"] > 0.9  # the shipped model
    assert 0.0 <= ev["pruned"]["accuracy"] <= 1.0
    assert ev["dense"]["num_samples"] == ev["pruned"]["num_samples"] == 50
    assert ev["accuracy_before"] == ev["dense"]["accuracy"]  # the card's flat keys
    assert ev["accuracy_after"] == ev["pruned"]["accuracy"]
    assert {"load_s", "prune_s", "save_s", "total_s"} <= set(s["timings"])
    # per phase of the pruning (px on trained weights: form fisher, its data side; threshold)
    assert s["px_form"]["form"] == "fisher"
    assert {"scoring_data_s", "threshold_s"} <= set(s["timings"])
    assert s["size_on_disk_bytes"] > 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "preprocessor_config.json").is_file()
    assert (out / "pruning_config.json").is_file()


def test_prune_progress_goes_to_stderr(pruned_run):
    _, _, proc, _ = pruned_run
    assert "pruning (px)" in proc.stderr  # the per-round bar, on stderr only
    assert "density" in proc.stderr
    assert "data_passes" in proc.stderr and "3/3" in proc.stderr  # rounds done
    assert re.search(r"eta=\d+(s|m\d\ds|h\d\dm)", proc.stderr)  # prune's schedule-aware ETA


def test_inspect_reports_the_written_sparsity(pruned_run, cli):
    tmp, out, proc, _ = pruned_run
    s = _one_json(proc.stdout)
    info = cli("inspect", str(out), "--json", cwd=tmp)
    assert info.returncode == 0, info.stderr
    d = _one_json(info.stdout)
    assert d["format"] == "dense"
    assert d["sparsity"] == pytest.approx(s["sparsity"])
    assert d["pruning_config"]["method"] == "px"
    human = cli("inspect", str(out), "--quiet", cwd=tmp).stdout
    assert "pruned with px" in human and "classifier.1.weight" in human


def test_eval_gives_the_numbers_prune_measured(pruned_run, cli):
    """`hf-px eval` on the written checkpoint = prune's own after-pruning evaluation."""
    tmp, out, proc, data = pruned_run
    after = _one_json(proc.stdout)["evaluation"]["pruned"]
    ev = cli("eval", str(out), "--dataset", str(data), "--json", cwd=tmp)
    assert ev.returncode == 0, ev.stderr[-2000:]
    d = _one_json(ev.stdout)
    assert d["split"] == "train" and d["num_samples"] == 50
    assert d["correct"] == after["correct"]
    assert d["loss"] == pytest.approx(after["loss"], rel=1e-5)


def test_reload_with_plain_from_pretrained_in_a_fresh_process(pruned_run):
    tmp, out, proc, _ = pruned_run
    s = _one_json(proc.stdout)
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForImageClassification\n"
        "m = AutoModelForImageClassification.from_pretrained(sys.argv[1])\n"
        "sd = m.state_dict()\n"
        "print(json.dumps({'zeros': {n: int((sd[n] == 0).sum()) for n in sys.argv[2:]},"
        " 'hf_px': 'hf_px' in sys.modules}))\n"
    )
    names = sorted(s["per_tensor_density"])
    r = subprocess.run(
        [sys.executable, "-c", code, str(out), *names],
        env=_env(tmp),
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["hf_px"] is False
    assert sum(got["zeros"].values()) == s["num_pruned"]


def test_default_output_dir_and_human_summary(tmp_path, cli):
    proc = cli(
        "prune",
        "px-digits-resnet",
        "--sparsity",
        "0.5",
        "--method",
        "magnitude",
        "--num-samples",
        "8",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "px-digits-resnet-px50"
    assert (out / "model.safetensors").is_file()
    assert "50.00%" in proc.stdout and "px-digits-resnet-px50" in proc.stdout
    assert "pruning (magnitude)" not in proc.stderr  # --quiet: no bars
    # the same again: refused, nothing touched, exit 2, names the fix
    before = (out / "model.safetensors").stat().st_mtime_ns
    again = cli("prune", "px-digits-resnet", "--sparsity", "0.5", cwd=tmp_path)
    _assert_one_line_error(again, 2, "--overwrite")
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_config_built_vit_on_an_image_folder_layerwise_bitmask(tmp_path, capsys, cli):
    model_dir = tmp_path / "tiny-vit"
    _save_tiny_vit(model_dir)
    data = _digits_folder(tmp_path, per_class=2, classes=3)
    proc = cli(
        "prune",
        str(model_dir),
        "--sparsity",
        "0.75",
        "--method",
        "snip",
        "--scope",
        "layerwise",
        "--exclude",
        "classifier",
        "--dataset",
        str(data),
        "--examples-per-class",
        "2",
        "--batch-size",
        "4",
        "--format",
        "bitmask",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = _one_json(proc.stdout)
    assert s["output_dir"] == "tiny-vit-px75"  # default: ./<model-name>-px<sparsity%>
    assert "classifier.weight" not in s["per_tensor_density"]
    # layerwise: every tensor at the requested density (to rounding)
    for density in s["per_tensor_density"].values():
        assert density == pytest.approx(0.25, abs=0.02)
    assert s["config"]["exclude"] == ["classifier"]
    assert s["calibration"]["num_samples"] == 6
    out = tmp_path / s["output_dir"]
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card  # no local path in written files
    inspected = cli("inspect", str(out), "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["format"] == "bitmask"
    # 75% of the weights pruned: measured 0.38x the fp32 dense bytes
    assert info["size_bytes"] < 0.5 * 4 * info["num_elements"]


@pytest.mark.parametrize("flag,form", [([], "fisher"), (["--px-form", "bound"], "bound")])
def test_px_form_follows_the_loaded_weights_and_is_said(tmp_path, capsys, in_process, flag, form):
    model_dir = tmp_path / "tiny-vit"
    _save_tiny_vit(model_dir)
    data = _digits_folder(tmp_path, per_class=2, classes=3)
    out = tmp_path / "out"
    argv = ["prune", str(model_dir), "--sparsity", "0.5", "--rounds", "2", "--dataset"]
    argv += [str(data), "--examples-per-class", "2", "--output-dir", str(out), "--json", *flag]
    assert in_process(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["px_form"]["form"] == form
    assert ("checkpoint" in s["px_form"]["why"]) == (not flag)
    assert json.loads((out / "pruning_config.json").read_text())["method_options"]["form"] == form


# -- errors, as a new user meets them ----------------------------------------------------------
def test_sparsity_given_as_percent(tmp_path, cli):
    proc = cli("prune", "px-digits-resnet", "--sparsity", "90", cwd=tmp_path)
    _assert_one_line_error(proc, 2, "0.9")


def test_text_model_is_refused(tmp_path, cli):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny-bert")
    proc = cli("prune", str(tmp_path / "tiny-bert"), "--sparsity", "0.9", cwd=tmp_path)
    _assert_one_line_error(proc, 2, "bert", "image classifier")
    assert not (tmp_path / "tiny-bert-px90").exists()


def test_hub_id_while_offline(tmp_path, cli):
    proc = cli("prune", "google/vit-base-patch16-224", "--sparsity", "0.9", cwd=tmp_path)
    _assert_one_line_error(proc, 2, "HF_HUB_OFFLINE")


def test_misspelled_model_id_against_a_hub(tmp_path):
    from hub_server import HubServer

    server = HubServer().start()
    try:
        env = _env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=server.url)
        proc = hfpx(
            "prune", "google/vit-bsae-patch16-224", "--sparsity", "0.9", cwd=tmp_path, env=env
        )
    finally:
        server.stop()
    _assert_one_line_error(proc, 2, "vit-bsae-patch16-224", "check the model id")


def test_missing_dataset_path(tmp_path, cli):
    proc = cli(
        "prune",
        "px-digits-resnet",
        "--sparsity",
        "0.9",
        "--dataset",
        str(tmp_path / "no-such-folder"),
        cwd=tmp_path,
    )
    err = _assert_one_line_error(proc, 2)
    assert "no-such-folder" in err


def test_usage_error_in_a_subprocess_is_one_line(tmp_path):
    proc = hfpx("prune", "px-digits-resnet", cwd=tmp_path)  # --sparsity missing
    _assert_one_line_error(proc, 2, "--sparsity")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["prune", "m", "--sparsity", "0.9", "--method", "pxx"], "invalid choice"),
        (["prune", "m", "--sparsity", "0.9", "--px-bn", "rms", "--method", "snip"], "--px-bn"),
        (["prune", "m", "--sparsity", "0.9", "--px-norm", "gate", "--method", "snip"], "--px-norm"),
        (["prune", "m", "--sparsity", "0.9", "--px-norm", "layer"], "invalid choice"),
        (
            ["prune", "m", "--sparsity", "0.9", "--px-refresh", "0.3", "--method", "snip"],
            "--px-refresh",
        ),
        (["prune", "m", "--sparsity", "0.9", "--px-refresh", "often"], "'every' or a fraction"),
        (
            ["prune", "m", "--sparsity", "0.9", "--px-form", "fisher", "--method", "snip"],
            "--px-form",
        ),
        (["prune", "m", "--sparsity", "0.9", "--px-form", "exact"], "invalid choice"),
        (["prune", "m", "--sparsity", "0.9", "--private"], "--push-to-hub"),
        (["prune", "m", "--sparsity", "0.9", "--eval-split", "test"], "--eval"),
        (["prune", "m", "--sparsity", "1e-9x"], "expected a number"),
        (["prune", "m", "--sparsity", "0.9", "--rounds", "0"], "at least 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-px: error: ") and needle in err[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["prune", "m", "--sparsity", "0.9", "--px-nrom", "rms"], "--px-nrom"),
        (["prune", "m", "--sparsity", "0.9", "--px-qk", "tide"], "invalid choice"),
        (["prune", "m", "--sparsity", "0.9", "--px-cut-scale", "maybe"], "true or false"),
        (["prune", "m", "--sparsity", "0.9", "--px-fisher-classes", "x"], "whole number"),
        (["prune", "m", "--sparsity", "0.9", "--grasp-temperature", "0"], "positive"),
        (["prune", "m", "--sparsity", "0.9", "--grasp-temperature", "9"], "--method grasp"),
        (
            ["prune", "m", "--sparsity", "0.9", "--method", "px", "--synflow-double", "no"],
            "--synflow-double only applies to --method synflow",
        ),
    ],
)
def test_method_flags_are_checked_by_the_library_rules(argv, needle, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-px: error: ") and needle in err[0]


def test_every_declared_method_option_has_its_flag(capsys):
    """`--<method>-<option>` for every option every method declares, with its help,
    and the values reach the method's options by name, typed."""
    from hf_px.cli import prune as prune_cmd
    from hf_px.cli.main import build_parser
    from hf_px.methods import METHODS
    from hf_px.methods.options import declared

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    usage = capsys.readouterr().out
    for method in METHODS.values():
        for f in declared(method.options):
            assert f"--{method.name}-{f.name.replace('_', '-')}" in usage
    args = build_parser().parse_args(
        ["prune", "m", "--sparsity", "0.9", "--px-cut-scale", "false", "--px-refresh", "0.2"]
    )
    assert prune_cmd._method_options(args) == {"cut_scale": False, "refresh": 0.2}
    args = build_parser().parse_args(
        ["prune", "m", "--sparsity", "0.9", "--method", "grasp", "--grasp-temperature", "50"]
    )
    assert prune_cmd._method_options(args) == {"temperature": 50.0}


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(HfPxError, match="0.9"):
        run(["prune", "m", "--sparsity", "90", "--debug"])


def test_in_process_run_leaves_environ_and_logger_as_it_found_them(tmp_path, monkeypatch, capsys):
    """--quiet sets TRANSFORMERS_VERBOSITY=error for the command; a later subprocess of
    the same interpreter (a test, a notebook cell) must not inherit it."""
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    log = logging.getLogger("hf_px")
    before = (list(log.handlers), log.level, log.propagate)
    environ = dict(os.environ)
    assert run(["inspect", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "hf-px: error:" in capsys.readouterr().err
    assert dict(os.environ) == environ
    assert (list(log.handlers), log.level, log.propagate) == before


# -- in-process: the output-dir rule -----------------------------------------------------------
def test_output_dir_names():
    assert model_name("google/vit-base-patch16-224") == "vit-base-patch16-224"
    assert model_name("./models/my-resnet/") == "my-resnet"
    assert sparsity_tag(0.9) == "90" and sparsity_tag(0.975) == "97.5"
    assert default_output_dir("google/vit-base-patch16-224", 0.9) == Path(
        "vit-base-patch16-224-px90"
    )
    assert SHIPPED["px-digits-resnet"].joinpath("model.safetensors").is_file()


# -- helpers -----------------------------------------------------------------------------------
def _digits_folder(tmp: Path, per_class: int = 5, classes: int = 10) -> Path:
    """An imagefolder (`<class>/*.png`) of held-out digits, as the shipped model saw them."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp / f"digits-{per_class}x{classes}"
    if root.exists():
        return root
    digits = load_digits()
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        idx = np.flatnonzero(digits.target == c)[-per_class:]
        for i in idx:
            grey = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(grey, mode="L").convert("RGB").save(root / str(c) / f"{i}.png")
    return root


def _save_tiny_vit(path: Path) -> None:
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    model = tiny_vit(num_labels=3)
    model.config.id2label = {i: str(i) for i in range(3)}
    model.config.label2id = {str(i): i for i in range(3)}
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)


# -- push, against a local Hub-protocol server -------------------------------------------------
def test_prune_push_to_hub_then_push_and_inspect_a_hub_id(tmp_path):
    from hub_server import HubServer

    server = HubServer().start()
    server.state.add_user("alice", "hf_cli_write_token")
    try:
        env = _env(
            tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=server.url, HF_TOKEN="hf_cli_write_token"
        )
        pruned = hfpx(
            "prune",
            "px-digits-resnet",
            "--sparsity",
            "0.5",
            "--method",
            "magnitude",
            "--num-samples",
            "8",
            "--push-to-hub",
            "alice/digits-px50",
            "--private",
            "--json",
            cwd=tmp_path,
            env=env,
        )
        assert pruned.returncode == 0, pruned.stderr[-2000:]
        s = _one_json(pruned.stdout)
        assert "alice/digits-px50" in s["pushed_to"] and "push_s" in s["timings"]
        assert server.state.repos["alice/digits-px50"].private
        # the card was written once, naming the repo: the Hub holds the local file as it is
        local_card = (tmp_path / s["output_dir"] / "README.md").read_bytes()
        assert b'model_id = "alice/digits-px50"' in local_card
        hub_files = server.state.repos["alice/digits-px50"].resolve("main").files
        assert hub_files["README.md"] == local_card
        # what was uploaded is what was written
        seen = hfpx("inspect", "alice/digits-px50", "--json", cwd=tmp_path, env=env)
        assert seen.returncode == 0, seen.stderr[-2000:]
        info = _one_json(seen.stdout)
        assert info["sparsity"] == pytest.approx(s["sparsity"])
        assert info["pruning_config"]["method"] == "magnitude"
        # the separate push command, to a new branch
        folder = str(tmp_path / s["output_dir"])
        pr = hfpx(
            "push",
            folder,
            "alice/digits-px50",
            "--revision",
            "dev",
            "--json",
            cwd=tmp_path,
            env=env,
        )
        assert pr.returncode == 0, pr.stderr[-2000:]
        assert "alice/digits-px50" in _one_json(pr.stdout)["url"]
        assert "dev" in server.state.repos["alice/digits-px50"].refs
        assert "hf_cli_write_token" in server.state.tokens_seen()
        assert "hf_cli_write_token" not in pruned.stdout + pruned.stderr + pr.stdout + pr.stderr
        bad = hfpx(
            "push", folder, "alice/digits-px50", cwd=tmp_path, env={**env, "HF_TOKEN": "hf_x"}
        )
        _assert_one_line_error(bad, 1)
        assert "hf_x" not in bad.stderr
    finally:
        server.stop()


def test_eta_durations_read_as_a_clock():
    from hf_px.cli.output import duration

    assert [duration(x) for x in (0, 4.4, 75.2, 3725, -1)] == ["0s", "4s", "1m15s", "1h02m", "0s"]
