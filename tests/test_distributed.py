"""Data-parallel calibration with real processes (gloo on CPU).

The 2-process runs start real workers under `torchrun` / `accelerate launch`
(tests/_dist_worker.py) and compare with the same worker run as one process:
scores bit-for-bit, masks identical, each batch scored exactly once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from hf_px import HfPxError, compute_scores
from hf_px import distributed as dist_mod
from hf_px.calibration import digits_dataset
from hf_px.distributed import (
    Reducer,
    check_not_offloaded,
    check_same_weights,
    check_world_size,
    make_accelerator,
    make_reducer,
)

WORKER = Path(__file__).resolve().parent / "_dist_worker.py"
ROOT = WORKER.parents[1]
import _dist_worker as worker  # noqa: E402  (tests/ is on sys.path, as for conftest)


def _env(tmp_path: Path) -> dict[str, str]:
    # one thread everywhere: the 1-process reference then runs the same kernels
    return subprocess_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "w")  # noqa: SIM115 - closed by _wait
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout and proc.stdout.close()
    assert proc.returncode == 0, (out / "log.txt").read_text()[-3000:]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """One process (plain python) and two processes (torchrun), started together."""
    tmp = tmp_path_factory.mktemp("dist")
    env = _env(tmp)
    one, two, plain = tmp / "one", tmp / "two", tmp / "plain"
    p1 = _start([sys.executable, str(WORKER), str(one)], one, env)
    p2 = _start([*TORCHRUN, "2", str(WORKER), str(two)], two, env)
    p3 = _start([*TORCHRUN, "2", str(WORKER), str(plain), "--plain-accelerator"], plain, env)
    _wait(p1, one)
    _wait(p2, two)
    _wait(p3, plain)
    return {
        "one": torch.load(one / "rank0.pt"),
        "rank0": torch.load(two / "rank0.pt"),
        "rank1": torch.load(two / "rank1.pt"),
        "plain": [(plain / f"error{r}.txt").read_text() for r in (0, 1)],
    }


def test_plain_accelerator_under_torchrun_on_cpu_is_refused(runs):
    """`Accelerator()` without cpu=True on a machine without GPU: each rank sees one
    process (it would score everything and write twice); both ranks refuse."""
    for err in runs["plain"]:
        assert err.startswith("launched for 2 processes but this one sees 1;")
        assert "cpu=True" in err


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), (n, float((a[n].double() - b[n].double()).abs().max()))


def test_two_processes_really_split_the_batches(runs):
    r0, r1, one = runs["rank0"], runs["rank1"], runs["one"]
    assert one["world_size"] == 1 and r0["world_size"] == 2 and r1["world_size"] == 2
    assert (r0["rank"], r1["rank"]) == (0, 1)
    # 7 uneven batches: rank 0 gets batches 0, 2, 4, 6 and rank 1 gets 1, 3, 5
    sizes = worker.BATCH_SIZES
    assert r0["shard_images"] == sum(sizes[0::2]) and r1["shard_images"] == sum(sizes[1::2])
    assert r0["shard_images"] + r1["shard_images"] == one["shard_images"] == sum(sizes)


@pytest.mark.parametrize("case", [c[0] for c in worker.CASES])
def test_two_processes_give_the_single_process_scores_and_masks(runs, case):
    one, r0, r1 = runs["one"][case], runs["rank0"][case], runs["rank1"][case]
    assert any(float(s.abs().max()) > 0 for s in one["scores"].values())
    # float64 sums are exact: bit-for-bit the same scores, hence the same masks
    _assert_same(one["scores"], r0["scores"])
    _assert_same(one["masks"], r0["masks"])
    # and every process ends with the same scores and masks
    _assert_same(r0["scores"], r1["scores"])
    _assert_same(r0["masks"], r1["masks"])
    kept = sum(int(m.sum()) for m in r0["masks"].values())
    total = sum(m.numel() for m in r0["masks"].values())
    assert kept == total - round(0.8 * total)


def test_collectives_sum_and_detect_different_weights(runs):
    for rank in ("rank0", "rank1"):
        red = runs[rank]["reducer"]
        assert torch.equal(red["reduced"]["a"], torch.full((3, 4), 3.0))
        assert torch.equal(red["reduced"]["b"], torch.arange(10, dtype=torch.float32) * 3)
        assert red["reduced"]["c"].dtype == torch.float64
        assert torch.allclose(red["reduced"]["c"], torch.full((25,), 0.3, dtype=torch.float64))
        assert red["reduced"]["c_in_place"]  # float64 and large: no copy
        assert torch.equal(red["reduced"]["d"], torch.full((5,), 3.0, dtype=torch.float64))
        assert red["reduced"]["e"].dtype == torch.bfloat16
        assert torch.equal(red["reduced"]["e"].float(), torch.full((2, 2), 6.0))
        assert torch.equal(
            red["rows"], torch.tensor([[0.0, 1.0], [1.0, 11.0]], dtype=torch.float64)
        )
        assert "process(es) [1] hold different weights" in red["mismatch"]


@pytest.mark.slow
@pytest.mark.ci
def test_accelerate_launch_multi_gpu_on_cpu_matches(runs, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` starts two gloo processes on CPU."""
    out = tmp_path / "acc"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(WORKER),
        str(out),
    ]
    _wait(_start(cmd, out, _env(tmp_path)), out)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert (r0["world_size"], r1["rank"]) == (2, 1)
    for case, *_ in worker.CASES:
        _assert_same(runs["one"][case]["masks"], r0[case]["masks"])
        _assert_same(runs["one"][case]["scores"], r1[case]["scores"])


@pytest.mark.slow
@pytest.mark.ci
def test_accelerate_launch_cpu_flag_pair_is_refused(tmp_path):
    """`accelerate launch --cpu --num_processes 2` silently starts one process: refuse."""
    out = tmp_path / "cpu"
    out.mkdir()
    code = (
        "import sys; from hf_px.distributed import make_accelerator; from hf_px import HfPxError\n"
        "try:\n    make_accelerator()\nexcept HfPxError as e:\n"
        f"    open({str(out / 'err.txt')!r}, 'w').write(str(e))\n"
    )
    script = tmp_path / "probe.py"
    script.write_text(code)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
    ]
    _wait(_start(cmd, out, _env(tmp_path)), out, timeout=120)
    err = (out / "err.txt").read_text()
    assert "started one process" in err and "torchrun --nproc_per_node N" in err


# -- in-process checks (no second process needed) ---------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k in list(os.environ):
        if k.startswith("ACCELERATE_"):
            monkeypatch.delenv(k)
    yield monkeypatch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_accelerate_cpu_launcher_environment_is_refused(clean_env):
    # the environment `accelerate launch --cpu --num_processes 2` gives its one process
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    with pytest.raises(HfPxError, match="started one process.*torchrun"):
        make_accelerator()


def test_single_process_accelerator_is_the_identity(clean_env):
    acc = make_accelerator()
    reducer = make_reducer(acc)
    assert (reducer.world_size, reducer.rank, reducer.is_main_process) == (1, 0, True)
    t = torch.arange(5.0)
    assert reducer.all_reduce_sum(t) is t
    assert reducer.shard([1, 2, 3]) == [1, 2, 3]
    check_same_weights(worker.tiny_vit(), acc)  # one process: nothing to compare


def test_bad_world_size_variable(clean_env):
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(HfPxError, match="WORLD_SIZE='two' is not an integer; unset it"):
        check_world_size(Reducer())


def test_digest_sees_one_changed_weight():
    a, b = worker.tiny_vit(), worker.tiny_vit()
    assert torch.equal(dist_mod.weights_digest(a), dist_mod.weights_digest(b))
    with torch.no_grad():
        b.vit.embeddings.patch_embeddings.projection.weight[0, 0, 0, 0] += 1e-7
    assert not torch.equal(dist_mod.weights_digest(a), dist_mod.weights_digest(b))


def test_buckets_bound_the_buffer_size(monkeypatch):
    monkeypatch.setattr(dist_mod, "BUCKET_NUMEL", 10)
    tensors = {"a": torch.zeros(4), "b": torch.zeros(5), "c": torch.zeros(3), "d": torch.zeros(9)}
    assert dist_mod._buckets(list(tensors), tensors) == [["a", "b"], ["c"], ["d"]]
    assert dist_mod._buckets([], tensors) == []


def test_offloaded_model_is_refused():
    """accelerate's CPU offload leaves weights on the meta device: no gradient reaches them."""
    from accelerate import cpu_offload

    model = cpu_offload(worker.tiny_vit(), execution_device=torch.device("cpu"))
    with pytest.raises(HfPxError, match="without device_map/offload"):
        check_not_offloaded(model)
    with pytest.raises(HfPxError, match="without device_map/offload"):
        compute_scores(model, worker.uneven_batches()[:1], method="snip")
    check_not_offloaded(worker.tiny_vit())


@pytest.mark.slow
@pytest.mark.ci
def test_cli_prune_under_torchrun_and_accelerate_launch(tmp_path, cli):
    """`python -m hf_px prune` with 2 processes writes the same checkpoint as with 1,
    once (only the main process writes and reports)."""
    model_dir = tmp_path / "model"
    worker.tiny_vit(num_labels=10).save_pretrained(model_dir)
    env = _env(tmp_path)
    data = tmp_path / "digits"
    digits_dataset().save_to_disk(str(data))  # px needs --dataset for a non-shipped model
    args = ["-m", "hf_px", "prune", str(model_dir), "--sparsity", "0.5", "--rounds", "3"]
    args += ["--dataset", str(data), "--num-samples", "21", "--batch-size", "4", "--quiet"]
    accel = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    accel += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    accel += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    commands = {"torchrun": [*TORCHRUN, "2", *args], "accelerate": [*accel, *args]}
    procs = {}
    for name, cmd in commands.items():
        out = tmp_path / name
        procs[name] = (_start([*cmd, "--output-dir", str(out / "ckpt")], out, env), out)
    # the one-process reference in this process (one thread, as the launched ones)
    one = cli(*args[2:], "--output-dir", str(tmp_path / "one" / "ckpt"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    for proc, out in procs.values():
        _wait(proc, out)
    reference = (tmp_path / "one" / "ckpt" / "model.safetensors").read_bytes()
    for name in ("torchrun", "accelerate"):
        out = tmp_path / name
        assert (out / "ckpt" / "model.safetensors").read_bytes() == reference, name
        assert (out / "log.txt").read_text().count("pruned ") == 1, name
