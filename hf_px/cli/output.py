"""What the CLI shows: logging, progress bars, and the final result.

* Logs and progress bars go to stderr, on the main process only; ``--quiet``
  (or ``HF_PX_DISABLE_PROGRESS_BARS=1``) silences the bars and info logs, also
  those of transformers, datasets and huggingface_hub.
* stdout carries the result only: one JSON object with ``--json`` (also for an error:
  ``{"error", "exit_code"}`` plus what did complete, :func:`completed`), else the
  summary. Anything a library prints while a command runs goes to stderr
  (:func:`stdout_to_stderr`), e.g. Trainer's log dicts.
* A log line never shares a line with a bar: tqdm clears its bars before it is written.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..utils import env_flag

_STATE: dict[str, Any] = {"quiet": False, "main": True, "completed": {}, "restore": []}


def _is_main_by_env() -> bool:
    """Rank from the launcher (torchrun/accelerate) before any Accelerator exists."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("", "0")


class _BarSafeHandler(logging.StreamHandler):
    """Writes each record with tqdm's bars cleared first and redrawn after."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def setup(*, quiet: bool, debug: bool) -> None:
    _STATE["quiet"] = quiet or env_flag("HF_PX_DISABLE_PROGRESS_BARS")
    _STATE["main"] = _is_main_by_env()
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    if not _STATE["main"]:
        level = logging.ERROR if not debug else logging.DEBUG
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("hf_px")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if not progress_enabled():
        silence_library_bars()
    if quiet or not _STATE["main"]:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")


def set_main_process(is_main: bool) -> None:
    """Called once the Accelerator knows the rank."""
    _STATE["main"] = bool(is_main)
    if not is_main:
        logging.getLogger("hf_px").setLevel(logging.ERROR)
        silence_library_bars()


def is_main() -> bool:
    return _STATE["main"]


def progress_enabled() -> bool:
    return _STATE["main"] and not _STATE["quiet"]


def silence_library_bars() -> None:
    """Turn off the bars of transformers, datasets and huggingface_hub: by their switches
    when imported (each reads its environment once, at import), else by that environment."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    switches = {
        "huggingface_hub": ("huggingface_hub.utils", "progress_bars"),
        "transformers": ("transformers.utils.logging", "progress_bar"),
        "datasets": ("datasets.utils.tqdm", "progress_bars"),
    }
    for package, (module_name, what) in switches.items():
        if package not in sys.modules:
            continue
        with contextlib.suppress(Exception):
            module = importlib.import_module(module_name)
            enabled = (
                not module.are_progress_bars_disabled()
                if hasattr(module, "are_progress_bars_disabled")
                else module.is_progress_bar_enabled()
            )
            getattr(module, f"disable_{what}")()
            if enabled:  # run() turns them back on for the next caller in this process
                _STATE["restore"].append(getattr(module, f"enable_{what}"))


def restore_library_bars() -> None:
    """Undo :func:`silence_library_bars` (called when an in-process run returns)."""
    while _STATE["restore"]:
        with contextlib.suppress(Exception):
            _STATE["restore"].pop()()


def forget_completed() -> None:
    """A new command starts: nothing of an earlier in-process run is reported."""
    _STATE["completed"] = {}


def completed(**fields: Any) -> None:
    """Record what a command has finished: an error's JSON object carries it."""
    _STATE["completed"].update(fields)


def completed_fields() -> dict[str, Any]:
    return dict(_STATE["completed"])


#: a bar whose remaining time comes from the caller's postfix (``eta=``), not tqdm's rate
OWN_ETA_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def bar(total: int | None = None, desc: str = "", unit: str = "it", bar_format: str | None = None):
    """A tqdm bar on stderr (a disabled one off the main process or when quiet)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not progress_enabled(),
        dynamic_ncols=True,
        leave=True,
        bar_format=bar_format,
    )


def duration(seconds: float) -> str:
    """``75.2`` → ``"1m15s"``, ``3725`` → ``"1h02m"``: an ETA for a progress bar."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@contextlib.contextmanager
def phase(desc: str, timings: dict[str, float], key: str) -> Iterator[None]:
    """One step of a command: a one-tick bar (shows elapsed time) + its timing."""
    t0 = time.perf_counter()
    with bar(total=1, desc=desc, unit="step") as b:
        yield
        b.update(1)
    timings[key] = round(time.perf_counter() - t0, 3)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[Any]:
    """While a command runs, whatever is printed goes to stderr; yields the real stdout."""
    real = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf → None (strict JSON has neither), tuples → lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def emit_json(obj: dict[str, Any], stream: Any) -> None:
    if not is_main():
        return
    stream.write(json.dumps(_clean(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")
    stream.flush()


def say(text: str = "") -> None:
    """Human-readable output on stdout, main process only."""
    if is_main():
        print(text)


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"
