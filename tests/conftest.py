"""Fixtures and helpers shared by the tests: tiny models built from configs, tiny
hand-built nets, batches, pruned models, bit views, subprocess environments, scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one thread per pytest-xdist worker: two workers of two threads on two cores leave
# OpenMP barriers waiting on descheduled threads (a 1 s test then takes minutes)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# the same for the child processes the tests start (CLI, quickstart, scripts)
CHILD_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
os.environ.setdefault("OMP_NUM_THREADS", CHILD_THREADS)


# The modules that start processes (~7 s of torch/transformers imports each) hold most of
# the suite's time. With `--no-loadscope-reorder` (Makefile) xdist hands modules out in
# collection order, so these go first, longest first, and the short ones fill the end
# instead of one long module finishing alone on one worker.
LONG_MODULES = (
    "test_cli_contract",
    "test_hub",
    "test_distributed",
    "test_finetune_trainer",
    "test_cli",
    "test_quickstart",
    "test_calibration",
    "test_families",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: order within


class PixelNet(nn.Module):
    """A hand-built classifier called as ``model(pixel_values=...)``."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values)


def tiny_resnet(num_labels: int = 3, seed: int = 0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    cfg = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="bottleneck",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(cfg).eval()


def tiny_vit(num_labels: int = 3, seed: int = 0, layers: int = 2):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg).eval()


def tiny_convnext(num_labels: int = 3, seed: int = 0):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(seed)
    cfg = ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels, image_size=32
    )
    return ConvNextForImageClassification(cfg).eval()


def make_batches(n_batches: int = 2, batch_size: int = 4, size: int = 32, classes: int = 3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "labels": torch.randint(0, classes, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]


@pytest.fixture
def batches():
    return make_batches()


def pruned(builder=tiny_vit, sparsity: float = 0.9, **kw):
    """(model, result): a tiny model pruned by magnitude in one round (fast, data-free)."""
    import hf_px

    model = builder(**kw)
    result = hf_px.prune(model, make_batches(), sparsity, method="magnitude", rounds=1)
    return model, result


_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers: compares -0.0, NaN payloads and subnormals exactly."""
    return t.detach().contiguous().view(_INT[t.element_size()])


def sparse(shape, density: float, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """A random tensor with about `density` of its entries non-zero."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        t = torch.randint(1, 256, shape, generator=g, dtype=torch.uint8)
    else:
        t = torch.randn(shape, generator=g).to(dtype)
    keep = torch.rand(shape, generator=g) < density
    return torch.where(keep, t, torch.zeros((), dtype=dtype))


@pytest.fixture
def in_process(monkeypatch):
    """`hf_px.cli.main.run` in this process, with the logging/env changes it makes undone after."""
    import logging

    from hf_px.cli.main import run

    log = logging.getLogger("hf_px")
    saved = (list(log.handlers), log.level, log.propagate)
    # restored as found, unset ones unset: a "0" set here would make `datasets` warn that
    # it cannot disable its bars when a run asks for --quiet
    keys = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
    keys += ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY")
    env = {key: os.environ.get(key) for key in keys}
    yield run
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    log.handlers[:], log.level, log.propagate = saved


@pytest.fixture
def cli(in_process, capsys, monkeypatch):
    """`hf-px ARGS` run from `cwd` in this process, returned as a CompletedProcess: for the
    error contract and checks that need no process of their own (a subprocess pays ~5 s of
    imports; what only a process shows -- signals, exit codes, imports -- keeps one)."""
    import subprocess

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = in_process(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


ROOT = Path(__file__).resolve().parents[1]
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def subprocess_env(*, drop: tuple[str, ...] = ("ACCELERATE_",), **values: str) -> dict[str, str]:
    """The environment for a child process: ours without launcher variables and those
    starting with `drop`, this checkout first on PYTHONPATH, then `values`."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(values)
    return env


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, without putting scripts/ on sys.path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
