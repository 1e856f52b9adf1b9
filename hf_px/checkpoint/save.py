"""`save_pruned`: a pruned model as a Hugging Face model directory (atomic, two formats).

Layout written (a standard Hugging Face model directory)::

    config.json                  + quantization_config for `bitmask`
    model.safetensors            or model-0000k-of-0000n.safetensors + index
    preprocessor_config.json     when an image processor is given
    pruning_config.json          PruningConfig (reproduces the run)
    pruning_masks.safetensors    the masks, position-coded (:mod:`.state`; load_pruning);
                                 `dense` only: a `bitmask` index codes its mask itself
    sparsity_report.json         PruningResult.report()
    README.md (+ card assets)    hf_px.card.write_card

Formats:

* ``dense`` — transformers' own ``save_pretrained`` output, zeros in place:
  any ``from_pretrained`` loads it, no hf-px needed.
* ``bitmask`` — the same files, then every Linear/Conv-like ``*weight`` tensor
  is replaced by its 1-D non-zero values (under the weight's own name) and a
  uint8 ``*.weight_hfpx_index`` (:mod:`hf_px.checkpoint.bitmask`). A pruned
  weight's index lists the positions its mask keeps (a kept weight that is 0
  included), so the masks are read from it and stored once; the rare mask
  that cannot be (a renamed key, a non-zero bit it prunes) goes to
  ``pruning_masks.safetensors``. ``import hf_px``
  makes ``from_pretrained`` decode them (:mod:`hf_px.checkpoint.quantizer`);
  plain transformers refuses the shapes instead of loading random weights.

Everything is written into a temporary directory beside the target and renamed
into place, so a failure leaves nothing behind and a reader never sees half a
checkpoint.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..card import CalibrationRecord, Evaluation, write_card
from ..config import FORMATS, REPORT_NAME, PruningConfig, PruningResult
from ..errors import HfPxError, HfPxFailure
from ..masks.check import check_masks
from ..refs import check_no_local_paths, local_dir, scrub_paths
from ..utils import SAFE_INDEX_NAME, weight_files
from . import bitmask
from .constants import INDEX_SUFFIX, MARKER_KEY, MASKS_METADATA, quantization_config_dict
from .state import masks_metadata, write_masks

logger = logging.getLogger(__name__)


def save_pruned(
    model: nn.Module,
    output_dir: str | os.PathLike,
    result: PruningResult,
    *,
    image_processor: Any = None,
    format: str = "dense",
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    calibration: CalibrationRecord | dict[str, Any] | None = None,
    evaluation: Evaluation | dict[str, Any] | None = None,
    card: bool = True,
    max_shard_size: int | str = "5GB",
    repo_id: str | None = None,
) -> Path:
    """Write `model` (pruned by `result`) as a Hugging Face model directory; returns its path.

    ``format``: ``"dense"`` (default, loads anywhere) or ``"bitmask"`` (small;
    needs ``import hf_px`` before ``from_pretrained``). An existing non-empty
    `output_dir` is replaced only with ``overwrite=True``; the directory the
    model was loaded from is never written. ``calibration`` (a
    :class:`~hf_px.card.CalibrationRecord` or its dict) is recorded in
    ``pruning_config.json`` and shown on the card, with ``source`` (``{"model_id",
    "local_path"}``) and ``evaluation``; ``repo_id``, the Hub repo the folder will be pushed to when known, is what
    the card's loading snippet loads (else the folder itself, ``"."``). Raises
    :class:`HfPxError` for bad input, :class:`HfPxFailure` for I/O.
    """
    _check_save_args(model, result, format)
    target = Path(output_dir).expanduser()
    check_output_dir(target, overwrite, _input_dirs(model, source))
    result, calibration, evaluation = _public_records(result, calibration, evaluation)
    parent = target.absolute().parent
    with _new_parents(parent), _staging(parent, target.name) as tmp:
        # transformers writes the checkpoint (original) key names that every version
        # loads; the bitmask format keeps them, so no version can match the 1-D values
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        in_weights: set[str] = set()
        if format == "bitmask":
            by_key = _masks_by_stored_key(model, result.masks)
            in_weights = _compress_weights(tmp, by_key, list(result.masks))
            _add_quantization_config(tmp)
        if image_processor is not None:
            image_processor.save_pretrained(tmp)
        try:
            result.config.save_pretrained(tmp)
            record = result.report()
            if evaluation is not None and evaluation.to_dict():
                record["evaluation"] = evaluation.to_dict()  # what a later fine-tune compares
            report = json.dumps(record, indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise HfPxError(
                f"the pruning config is not JSON-serialisable ({e}); keep method options and "
                "calibration info to strings and numbers"
            ) from None
        (tmp / REPORT_NAME).write_text(report + "\n")
        rest = {n: m for n, m in result.masks.items() if n not in in_weights}
        if rest or format == "dense":
            write_masks(tmp, rest, names=list(result.masks))
        if card:
            write_card(
                tmp,
                model=model,
                result=result,
                source=source,
                calibration=calibration,
                evaluation=evaluation,
                format=format,
                repo_id=repo_id,
            )
        check_no_local_paths(tmp, [target, parent, *_input_dirs(model, source)])
        _commit(tmp, target, overwrite)
    logger.info("saved %s checkpoint to %s", format, target)
    return target


# ---------------------------------------------------------------- validation


def _check_save_args(model: nn.Module, result: PruningResult, format: str) -> None:
    if format not in FORMATS:
        raise HfPxError(f"unknown checkpoint format {format!r}; choose 'dense' or 'bitmask'")
    if not isinstance(model, nn.Module) or not hasattr(model, "save_pretrained"):
        raise HfPxError(
            "save_pruned needs a transformers model (e.g. from AutoModelForImageClassification)"
        )
    if not isinstance(result, PruningResult):
        raise HfPxError("`result` must be the PruningResult returned by hf_px.prune")
    _check_masks(model, result)


def _public_records(result: PruningResult, calibration: Any, evaluation: Any) -> tuple:
    """The run's records with local paths scrubbed (they would leak the machine's
    layout), the calibration recorded in ``pruning_config.json`` (over what the config
    held, so a fine-tune recipe stays), the evaluation in its one spelling from here on."""
    config = result.config.to_dict()
    if calibration is not None:
        if not isinstance(calibration, CalibrationRecord | dict):
            raise HfPxError(
                "calibration must be a CalibrationRecord or a dict such as "
                f"{{'dataset': ..., 'num_samples': ...}}, got {type(calibration).__name__}"
            )
        given = calibration.to_dict() if isinstance(calibration, CalibrationRecord) else calibration
        config["calibration"] = {**config["calibration"], **given}
    result = dataclasses.replace(result, config=PruningConfig.from_dict(scrub_paths(config)))
    if evaluation is not None:
        as_dict = evaluation.to_dict() if isinstance(evaluation, Evaluation) else evaluation
        evaluation = Evaluation.from_mapping(scrub_paths(as_dict))
    return result, result.config.calibration, evaluation


def _check_masks(model: nn.Module, result: PruningResult) -> None:
    params = dict(model.named_parameters())
    masks = check_masks(result.masks, params, fix="pass the model that hf_px.prune pruned")
    for name, mask in masks.items():
        p = params[name]
        if bool((p.detach()[~mask] != 0).any()):
            raise HfPxError(
                f"weights of {name!r} that the mask prunes are not zero (was the model changed "
                "after hf_px.prune?); save the model that prune returned"
            )


def _input_dirs(model: nn.Module, source: dict[str, Any] | None) -> list[Path]:
    found = []
    names = [getattr(getattr(model, "config", None), "_name_or_path", None)]
    if source:
        names.append(source.get("local_path"))
    for n in names:
        directory = local_dir(str(n)) if n else None
        if directory is not None:
            found.append(directory.resolve())
    return found


def check_output_dir(target: Path, overwrite: bool, inputs: list[Path] = ()) -> None:
    """Refuse a target that overlaps an input, is a file, is not empty without `overwrite`,
    or cannot be written (probed by creating and removing a directory beside it)."""
    resolved = target.resolve()
    for d in inputs:
        if resolved == d or d in resolved.parents or resolved in d.parents:
            raise HfPxError(
                f"output directory {target} overlaps the input directory {d.name}; "
                "choose another --output-dir (an input is never modified)"
            )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise HfPxError(f"output path {target} exists and is not a directory; choose another")
        if any(target.iterdir()) and not overwrite:
            raise HfPxError(
                f"output directory {target} is not empty; pass --overwrite to replace it "
                "or choose another output directory"
            )
    _probe_writable(resolved.parent, target.name)


def _probe_writable(parent: Path, name: str) -> None:
    """The staging directory goes into `parent` (or its nearest existing ancestor, where
    the missing parents are created): a failure to write there is known before any work."""
    existing = next((p for p in (parent, *parent.parents) if p.exists()), parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        # named like staging, so that a run killed right here leaves nothing unaccounted for
        os.rmdir(tempfile.mkdtemp(prefix=_staging_prefix(name, "tmp"), dir=existing))
    except OSError as e:
        raise HfPxFailure(
            f"cannot write in {existing}: {e.strerror or e}; choose a writable --output-dir"
        ) from None


# ---------------------------------------------------------------- atomic write


@contextmanager
def _new_parents(parent: Path) -> Iterator[None]:
    """Create `parent` (and missing ancestors); remove what was created if the body fails."""
    first_new = None
    for p in (parent, *parent.parents):
        if p.exists():
            break
        first_new = p
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HfPxFailure(
            f"cannot create {parent}: {e.strerror}; choose a writable --output-dir"
        ) from None
    try:
        yield
    except BaseException:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise


_STAGING = re.compile(r"^\..+\.hf-px-(?:tmp|old)-(?P<host>[^@/]+)@(?P<pid>\d+)-[^-]+$")
_LEGACY_STAGING = re.compile(r"^\..+\.hf-px-(?:tmp|old)-[^-@]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _staging_prefix(name: str, kind: str) -> str:
    """``.<name>.hf-px-<kind>-<host>@<pid>-``: whether the writer still runs can be told on
    its own host only (the folder may be on a shared file system)."""
    return f".{name}.hf-px-{kind}-{_host()}@{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging directories that a killed hf-px run on this host left in `parent`
    (their writer's pid no longer runs); report those whose writer cannot be checked here
    (another host, or an older hf-px that recorded no pid)."""
    removed, unknown = [], []
    try:
        entries = [e for e in parent.iterdir() if e.is_dir()]
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match and match["host"] == _host():
            if not _pid_alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif match or _LEGACY_STAGING.match(entry.name):
            unknown.append(entry.name)
    if removed:
        logger.warning(
            "removed %d leftover staging director%s of an interrupted hf-px run in %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            parent,
        )
    if unknown:
        logger.warning(
            "found staging directories in %s that this run cannot tell are abandoned (%s); "
            "delete them if no hf-px run is writing there",
            parent,
            ", ".join(sorted(unknown)),
        )
    return removed


@contextmanager
def _staging(parent: Path, name: str) -> Iterator[Path]:
    clean_stale_staging(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(name, "tmp"), dir=parent))
    except OSError as e:
        raise HfPxFailure(
            f"cannot write in {parent}: {e.strerror}; choose a writable --output-dir"
        ) from None
    try:
        yield tmp
    except OSError as e:
        raise HfPxFailure(
            f"writing the checkpoint failed ({e.strerror or e}); nothing was written, "
            "free disk space or choose another --output-dir"
        ) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the staged checkpoint to `target`: at every instant the path holds either the
    old complete checkpoint or the new one (an empty directory is replaced by rename)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        try:
            os.replace(tmp, target)  # POSIX rename replaces an empty directory in one step
            return
        except OSError:
            target.rmdir()  # Windows: rename cannot replace a directory
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    if not overwrite:  # raced: someone filled it meanwhile
        raise HfPxError(f"output directory {target} is not empty; pass --overwrite to replace it")
    if target.is_dir() and not target.is_symlink() and _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old checkpoint
        return
    # no atomic swap here: the path is empty between the two renames
    old = Path(tempfile.mkdtemp(prefix=_staging_prefix(target.name, "old"), dir=target.parent))
    os.replace(target, old / "checkpoint")
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old / "checkpoint", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- bitmask format


def _weight_files(directory: Path) -> tuple[list[str], dict[str, Any] | None]:
    files, index = weight_files(directory)
    if not files:
        raise HfPxFailure("transformers wrote no safetensors weights; upgrade transformers")
    return files, index


def _masks_by_stored_key(
    model: nn.Module, masks: dict[str, torch.Tensor]
) -> dict[str, tuple[str, torch.Tensor]]:
    """``{key in the weight files: (parameter name, mask)}`` for the masks whose parameter
    transformers stores as it is, under its original (checkpoint) name; a weight it
    converts (e.g. two fused into one) is left out, its mask kept in the masks file."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without key conversion stores parameter names
        return {n: (n, m) for n, m in masks.items()}
    # the same renaming save_pretrained applies; a renamed entry is the very object passed
    reverted = revert_weight_conversion(model, dict(masks))
    names = {id(m): n for n, m in masks.items()}
    return {k: (names[id(m)], m) for k, m in reverted.items() if id(m) in names}


def _compress_weights(
    directory: Path, masks: dict[str, tuple[str, torch.Tensor]], order: list[str]
) -> set[str]:
    """Rewrite each shard: every Linear/Conv-like weight (``*weight``, rank ≥ 2, float)
    becomes values + index; returns the names of the masks the indices code.

    `masks`: ``{stored key: (parameter name, mask)}``. A weight with a mask of its
    shape and nothing non-zero where the mask prunes is encoded at the mask's kept
    positions; each shard's metadata maps every mask's name (in `order`) to the key
    coding it there, or null (:data:`.constants.MASKS_METADATA`).

    All of them, pruned or not, and found by the stored names rather than the
    masks' (the file holds transformers' original key names, which may differ
    from the parameter names): an unpruned weight costs its dense size plus a
    48-byte header (code ``full``), and no weight of a `bitmask` checkpoint fits
    a plain ``from_pretrained``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    files, index = _weight_files(directory)
    total = 0
    coded: set[str] = set()
    for i, fname in enumerate(files):
        path = directory / fname
        tensors: dict[str, torch.Tensor] = {}
        here: dict[str, str | None] = dict.fromkeys(order)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                t = f.get_tensor(key)
                if key.endswith("weight") and t.dim() >= 2 and t.is_floating_point():
                    name, mask = masks.get(key, (None, None))
                    if mask is not None and mask.shape == t.shape and bitmask.covers(t, mask):
                        values, idx = bitmask.encode(t, positions=mask)
                        coded.add(name)
                        here[name] = key
                    else:
                        values, idx = bitmask.encode(t)
                    tensors[key] = values
                    tensors[key + INDEX_SUFFIX] = idx
                else:
                    tensors[key] = t
        if i == 0:
            tensors[MARKER_KEY] = torch.zeros(1, dtype=torch.uint8)
        metadata["format"] = "pt"
        metadata["hf_px_format"] = "bitmask"
        metadata[MASKS_METADATA] = masks_metadata(here)
        save_file(tensors, str(path), metadata=metadata)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        if index is not None:
            for key in tensors:
                index["weight_map"][key] = fname
    if index is not None:
        index.setdefault("metadata", {})["total_size"] = total
        (directory / SAFE_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return coded


def _add_quantization_config(directory: Path) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = quantization_config_dict()
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
