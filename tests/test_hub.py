"""Hub sharing against a local Hub-protocol server, with the real clients.

The client side (hf_px.hub.push_to_hub → huggingface_hub; transformers'
from_pretrained; ModelCard.load) runs in a subprocess whose HF_ENDPOINT points
at the server *before* huggingface_hub is imported (it reads the endpoint once,
in ``huggingface_hub.constants``) and whose HF_HOME is a fresh temporary folder.
huggingface_hub retries 5xx with exponential backoff; the subprocess replaces
the ``time`` module seen by ``huggingface_hub.utils._http`` with one whose
``sleep`` only records the requested delay.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CHILD_THREADS, pruned, subprocess_env, tiny_vit
from hub_server import HubServer
from safetensors.torch import load_file

import hf_px
from hf_px.errors import HfPxError

TOKEN = "hf_TestWriteToken_4f1d9c2b7a"
READ_ONLY_TOKEN = "hf_TestReadToken_91be07aa35"
USER = "alice"

CLIENT_PREAMBLE = """
import atexit, json, os, sys, time as _time
import huggingface_hub.utils._http as _http

SLEEPS = []


class _NoSleep:
    def __getattr__(self, name):
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds):
        SLEEPS.append(seconds)


_http.time = _NoSleep()
atexit.register(lambda: open(os.environ["SLEEP_LOG"], "w").write(json.dumps(SLEEPS)))
"""

# the real command line, as a user runs it: `hf-px push DIR REPO_ID ...`
CLI = (
    CLIENT_PREAMBLE
    + """
from hf_px.cli import main

raise SystemExit(main(sys.argv[1:]))
"""
)

# several library calls in one process: [{folder, repo_id, **kwargs}] -> [url or error]
API_CALLS = (
    CLIENT_PREAMBLE
    + """
from hf_px.errors import HfPxError
from hf_px.hub import push_to_hub

out = []
for call in json.loads(sys.argv[1]):
    try:
        out.append({"url": push_to_hub(call.pop("folder"), call.pop("repo_id"), **call)})
    except HfPxError as exc:
        out.append({"error": str(exc), "exit_code": exc.exit_code})
print(json.dumps(out))
"""
)


@pytest.fixture
def hub():
    server = HubServer().start()
    server.state.add_user(USER, TOKEN)
    server.state.add_user("reader", READ_ONLY_TOKEN, write=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pruned ViT written as a checkpoint folder (weights, configs, card)."""
    model, result = pruned(tiny_vit, 0.9)
    out = tmp_path_factory.mktemp("ckpt") / "tiny-vit-px90"
    hf_px.save_pruned(
        model,
        out,
        result,
        source={"model_id": "google/vit-base-patch16-224", "license": "apache-2.0"},
        calibration={"dataset": "ylecun/mnist", "num_samples": 8},
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, state, result


def _env(hub_url: str, home: Path, token: str | None) -> dict[str, str]:
    env = subprocess_env(
        drop=("HF_", "HUGGINGFACE"),
        HF_ENDPOINT=hub_url,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        SLEEP_LOG=str(home.parent / f"sleeps-{home.name}.json"),
        OMP_NUM_THREADS=CHILD_THREADS,
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _run(code: str, *args: str, hub_url: str, home: Path, token: str | None, cwd: Path):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(hub_url, home, token),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _push_cli(hub_url, tmp_path, folder, repo_id, *flags, token=TOKEN, home=None):
    home = home or tmp_path / "hf-home-push"
    argv = ["push", str(folder), repo_id, "--quiet", *flags]
    return _run(CLI, *argv, hub_url=hub_url, home=home, token=token, cwd=tmp_path)


def _sleeps(home: Path) -> list[float]:
    return json.loads((home.parent / f"sleeps-{home.name}.json").read_text())


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _files_containing(root: Path, needle: str) -> list[str]:
    data = needle.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


def test_push_then_from_pretrained_in_fresh_cache(hub, checkpoint, tmp_path):
    """push → one commit with every file → from_pretrained(repo_id) in a fresh cache and
    process gives the pruned weights bit for bit; ModelCard.load(repo_id) gives the metadata."""
    folder, state, result = checkpoint
    proc = _push_cli(hub.url, tmp_path, folder, f"{USER}/tiny-vit-px90")
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()

    repo = hub.state.repos[f"{USER}/tiny-vit-px90"]
    head = repo.commits[repo.refs["main"]]
    assert url == f"{hub.url}/{USER}/tiny-vit-px90/commit/{head.sha}"
    assert repo.commits[head.parent].message == "initial commit"  # exactly one upload commit
    assert head.message == "Upload vit pruned to 90.0% sparsity with magnitude (hf-px)"
    assert "requested 90.0%, achieved 90.0%" in head.description
    local = _digest(folder)
    assert set(head.files) == set(local) | {".gitattributes"}
    for name, digest in local.items():
        if name != "README.md":
            assert hashlib.sha256(head.files[name]).hexdigest() == digest, name
    # the card's loading snippet names the repo on the Hub, the folder itself locally
    hub_card, local_card = head.files["README.md"].decode(), (folder / "README.md").read_text()
    assert 'model_id = "."  # ' in local_card
    assert hub_card == local_card.replace('model_id = "."', f'model_id = "{USER}/tiny-vit-px90"')

    load = """
import json, sys
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(sys.argv[1])
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
card = ModelCard.load(sys.argv[1])
exec(card.text.split("```python\\n", 1)[1].split("```", 1)[0])  # the card's own snippet
print(json.dumps(card.data.to_dict()))
"""
    home = tmp_path / "hf-home-fresh"  # nothing cached, no token: a public repo
    loaded = tmp_path / "loaded.safetensors"
    proc = _run(
        load,
        f"{USER}/tiny-vit-px90",
        str(loaded),
        hub_url=hub.url,
        home=home,
        token=None,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(loaded)
    assert weights.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(weights[name], tensor), name
    for name, mask in result.masks.items():
        pruned = weights[name][~mask]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not pruned.signbit().any()
    assert list(home.glob("hub/models--alice--tiny-vit-px90/snapshots/*/model.safetensors"))

    assert proc.stdout.strip().splitlines()[-2] == "torch.Size([1, 3])"  # snippet ran
    card = json.loads(proc.stdout.strip().splitlines()[-1])
    assert card["base_model"] == "google/vit-base-patch16-224"
    assert card["library_name"] == "transformers"
    assert card["pipeline_tag"] == "image-classification"
    assert {"pruned", "sparse", "px", "magnitude", "vit"} <= set(card["tags"])
    assert card["license"] == "apache-2.0"
    assert card["datasets"] == ["ylecun/mnist"]


def test_token_reaches_server_and_is_stored_nowhere(hub, checkpoint, tmp_path):
    folder, _, _ = checkpoint
    home = tmp_path / "hf-home"
    proc = _push_cli(hub.url, tmp_path, folder, f"{USER}/tok-check", home=home)
    assert proc.returncode == 0, proc.stderr
    writes = [r for r in hub.state.requests if r.method == "POST"]
    kinds = {k for r in writes for k in ("/repos/create", "/preupload/", "/commit/") if k in r.path}
    assert kinds == {"/repos/create", "/preupload/", "/commit/"}
    assert all(r.token == TOKEN for r in writes)  # "Authorization: Bearer <token>" on every write
    assert TOKEN not in proc.stdout + proc.stderr
    assert _files_containing(folder, TOKEN) == []
    assert _files_containing(home, TOKEN) == []
    assert [k for k, v in hub.state.stored_files().items() if TOKEN.encode() in v] == []


def test_private_branch_and_pull_request(hub, checkpoint, tmp_path):
    folder, _, _ = checkpoint
    calls = [
        {"folder": str(folder), "repo_id": f"{USER}/private-px", "private": True},
        {"folder": str(folder), "repo_id": f"{USER}/branch-px", "revision": "pruned-90"},
        {"folder": str(folder), "repo_id": f"{USER}/branch-px", "create_pr": True},
        {"folder": str(folder), "repo_id": f"{USER}/branch-px", "commit_message": "Re-upload"},
    ]
    proc = _run(
        API_CALLS,
        json.dumps(calls),
        hub_url=hub.url,
        home=tmp_path / "h",
        token=TOKEN,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    private, branch, pr, main = json.loads(proc.stdout.strip().splitlines()[-1])

    assert hub.state.repos[f"{USER}/private-px"].private
    assert "url" in private

    repo = hub.state.repos[f"{USER}/branch-px"]
    assert branch["url"] == f"{hub.url}/{USER}/branch-px/commit/{repo.refs['pruned-90']}"
    assert "README.md" in repo.resolve("pruned-90").files

    assert pr["url"] == f"{hub.url}/{USER}/branch-px/discussions/1"
    assert "model.safetensors" in repo.resolve("refs/pr/1").files
    assert repo.discussions[0]["title"].startswith("Upload vit pruned to 90.0% sparsity")

    # main only changed with the last, plain push; the PR and branch left it alone
    head = repo.resolve("main")
    assert main["url"].endswith(head.sha) and head.message == "Re-upload"
    assert repo.commits[head.parent].message == "initial commit"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


@pytest.mark.parametrize(
    "case, hint",
    [
        ("401-bad-token", "hf auth login"),
        ("403-read-only-token", "write access"),
        ("500-on-create", "retry the push later"),
        ("503-on-upload", "retry the push later"),
        ("connection-refused", "check your network connection"),
        ("no-token", "hf auth login"),
    ],
)
def test_push_failure_is_one_line_and_leaves_output_complete(hub, checkpoint, tmp_path, case, hint):
    folder, _, _ = checkpoint
    before = _digest(folder)
    url, token = hub.url, TOKEN
    if case == "401-bad-token":
        token = "hf_RevokedToken_000000000"
    elif case == "403-read-only-token":
        token = READ_ONLY_TOKEN
    elif case == "500-on-create":
        hub.state.inject_failure(500, r"^/api/repos/create$")
    elif case == "503-on-upload":
        hub.state.inject_failure(503, r"/preupload/")
    elif case == "connection-refused":
        url = _closed_port_url()
    elif case == "no-token":
        token = None
    home = tmp_path / "hf-home"
    proc = _push_cli(url, tmp_path, folder, f"{USER}/will-fail", token=token, home=home)

    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line: no traceback, no retry chatter
    assert hint in lines[0]
    assert (token or TOKEN) not in proc.stdout + proc.stderr
    assert _digest(folder) == before  # local output complete and untouched
    assert proc.stdout == ""  # no URL printed for a failed push
    sleeps = _sleeps(home)
    if case == "503-on-upload":
        # huggingface_hub retried the preupload 5 times with backoff (sleep patched)
        assert sleeps == [1, 2, 4, 8, 8]
        assert sum(r.path.endswith("/preupload/main") for r in hub.state.requests) == 6
    if case == "no-token":
        assert hub.state.requests == []  # refused before any request
    if case == "401-bad-token":
        assert hub.state.tokens_seen() == {token}
    repo = hub.state.repos.get(f"{USER}/will-fail")
    assert repo is None or set(repo.resolve("main").files) == {".gitattributes"}


def test_bad_input_is_refused_before_any_request(checkpoint, tmp_path):
    from hf_px.hub import push_to_hub

    folder, _, _ = checkpoint
    with pytest.raises(HfPxError, match="not a directory"):
        push_to_hub(tmp_path / "missing", "alice/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfPxError, match="is empty"):
        push_to_hub(tmp_path / "empty", "alice/x")
    with pytest.raises(HfPxError, match="invalid repo id"):
        push_to_hub(folder, "alice/bad name!")
    with pytest.raises(HfPxError, match="drop --revision or --create-pr"):
        push_to_hub(folder, "alice/x", revision="dev", create_pr=True)


@pytest.mark.slow
@pytest.mark.ci
def test_bitmask_checkpoint_round_trips_through_the_hub(hub, tmp_path):
    """The small format on the Hub: `import hf_px` + from_pretrained(repo_id) in a fresh
    cache gives the pruned weights bit for bit."""
    model, result = pruned(tiny_vit, 0.95, seed=1)
    folder = hf_px.save_pruned(model, tmp_path / "bitmask", result, format="bitmask")
    proc = _push_cli(hub.url, tmp_path, folder, f"{USER}/tiny-vit-bitmask")
    assert proc.returncode == 0, proc.stderr
    hub_card = hub.state.repos[f"{USER}/tiny-vit-bitmask"].resolve("main").files["README.md"]
    assert f'model_id = "{USER}/tiny-vit-bitmask"'.encode() in hub_card

    load = """
import sys
import hf_px  # registers the bitmask format
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(sys.argv[1])
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""
    loaded = tmp_path / "loaded.safetensors"
    proc = _run(
        load,
        f"{USER}/tiny-vit-bitmask",
        str(loaded),
        hub_url=hub.url,
        home=tmp_path / "fresh",
        token=None,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(loaded)
    state = model.state_dict()
    assert weights.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(weights[name], tensor), name


def test_push_over_an_existing_repo_leaves_only_the_new_checkpoint(hub, tmp_path):
    """A single-file 90% checkpoint, then a sharded 50% one, to the same repo: the repo holds
    the 50% files only (the old weights deleted in the same commit) and loads as 50%."""
    model90, result90 = pruned(tiny_vit, 0.9)
    model50, result50 = pruned(tiny_vit, 0.5)
    first = hf_px.save_pruned(model90, tmp_path / "px90", result90)
    second = hf_px.save_pruned(model50, tmp_path / "px50", result50, max_shard_size="20KB")
    assert (first / "model.safetensors").is_file() and not (second / "model.safetensors").exists()
    repo_id = f"{USER}/re-pushed"
    for folder in (first, second):
        proc = _push_cli(hub.url, tmp_path, folder, repo_id)
        assert proc.returncode == 0, proc.stderr

    repo = hub.state.repos[repo_id]
    head = repo.resolve("main")
    assert set(head.files) == set(_digest(second)) | {".gitattributes"}
    assert repo.commits[repo.commits[head.parent].parent].message == "initial commit"

    load = """
import sys
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(sys.argv[1])
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""
    loaded = tmp_path / "loaded.safetensors"
    proc = _run(
        load, repo_id, str(loaded), hub_url=hub.url, home=tmp_path / "fresh", token=None,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(loaded)
    for name, tensor in model50.state_dict().items():
        assert torch.equal(weights[name], tensor), name


def test_structured_checkpoint_round_trips_through_the_hub(hub, tmp_path):
    """A structured checkpoint (hooked layout: ResNet with stream units) pushed with
    `hf-px push`, then `import hf_px` + from_pretrained(repo_id) in a fresh cache and
    process gives the smaller model's logits."""
    import transformers as t

    from hf_px.checkpoint.structured import save_structured
    from hf_px.structured import prune_structured

    torch.manual_seed(0)
    cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)
    model = t.ResNetForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = prune_structured(model, [{"pixel_values": x}], 0.3, method="l1", structure="auto")
    folder = save_structured(model, tmp_path / "struct", res)
    with torch.no_grad():
        want = model(pixel_values=x).logits
    torch.save(x, tmp_path / "x.pt")
    proc = _push_cli(hub.url, tmp_path, folder, f"{USER}/tiny-resnet-struct")
    assert proc.returncode == 0, proc.stderr
    load = """
import sys, torch
import hf_px  # registers the structured layout
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(pixel_values=torch.load(sys.argv[2])).logits, sys.argv[3])
"""
    out = tmp_path / "logits.pt"
    args = (f"{USER}/tiny-resnet-struct", str(tmp_path / "x.pt"), str(out))
    proc = _run(load, *args, hub_url=hub.url, home=tmp_path / "fresh", token=None, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), want, atol=1e-5, rtol=0)
