"""``hf-px env``: what a bug report needs (versions, CPU capability, devices, settings).

Offline and cheap: it reads versions and settings, never the network or a model.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from typing import Any

from . import output, parsing

#: the packages whose versions decide hf-px's behaviour, in the order they are shown
PACKAGES = ("hf-px", "torch", "transformers", "accelerate", "datasets", "huggingface_hub")
#: the environment variables hf-px and the Hub client read (tokens are never shown)
ENV_PREFIXES = ("HF_PX_", "HF_HUB_")
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _settings() -> dict[str, str]:
    out = {}
    for key in sorted(os.environ):
        if key.startswith(ENV_PREFIXES):
            secret = any(w in key.upper() for w in _SECRET_WORDS)
            out[key] = "<set, hidden>" if secret else os.environ[key]
    return out


def _cuda(torch) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": bool(torch.cuda.is_bf16_supported()),
            }
        )
    return devices


def collect() -> dict[str, Any]:
    """The environment as one JSON-safe dict (the same keys with and without ``--json``)."""
    import torch

    from ..checkpoint.bitmask import native_decoder

    return {
        "versions": {p: _version(p) for p in PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "native_bitmask_decoder": native_decoder() is not None,
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "devices": _cuda(torch),
        },
        "settings": _settings(),
    }


def run_env(args: argparse.Namespace) -> int:
    with output.stdout_to_stderr():
        info = collect()
    if args.json:
        output.emit_json(info, sys.stdout)
    else:
        _print(info)
    return 0


def _print(info: dict[str, Any]) -> None:
    say = output.say
    say("Copy-and-paste the text below in your bug report.")
    say("")
    for package, version in info["versions"].items():
        say(f"- {package}: {version or 'not installed'}")
    say(f"- Python: {info['python']} ({info['platform']})")
    cap = info["cpu_capability"]
    forced = info["aten_cpu_capability_env"]
    say(
        f"- CPU capability used by torch: {cap}"
        + (f" (ATEN_CPU_CAPABILITY={forced})" if forced else "")
    )
    say(f"- torch threads: {info['threads']} of {info['cpu_count']} CPUs")
    say(f"- native bitmask decoder built: {'yes' if info['native_bitmask_decoder'] else 'no'}")
    cuda = info["cuda"]
    if cuda["devices"]:
        for d in cuda["devices"]:
            say(f"- CUDA {d['index']}: {d['name']}, {d['memory_gib']} GiB, sm {d['capability']}")
    else:
        say(f"- CUDA: none (torch built with CUDA {cuda['torch_cuda'] or 'no'})")
    settings = info["settings"]
    say("- settings: " + (", ".join(f"{k}={v}" for k, v in settings.items()) or "none"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hf-px env``."""
    p = subparsers.add_parser(
        "env",
        help="versions, CPU capability, devices and settings for a bug report",
        description="Print what a bug report needs: the versions of hf-px and the libraries "
        "it uses, the CPU capability torch dispatches to, threads, whether the native "
        "bitmask decoder was built, CUDA devices, and the HF_PX_* / HF_HUB_* settings "
        "in force (token values hidden). Works offline.",
    )
    parsing.common(p)
    p.set_defaults(func=run_env)
