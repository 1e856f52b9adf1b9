"""Hub id or local path: the one place that answers it, names a reference in written
files, and keeps local paths out of them.

A *reference* (a model or a dataset) is local when it exists on this machine or is
written as a path (leading ``.``, ``/`` or ``~``, a backslash, or a spelling no Hub id
has); anything else is a Hub id, fetched through ``huggingface_hub``. What a card or a
saved config shows of a reference is its :func:`public_name`: Hub ids as they are, local
paths by their last component. A card cites (``base_model``, ``datasets``) only a
namespaced id that is not also a local path (:func:`looks_like_hub_id`).

Two guards keep the privacy promise (no local path in a card or saved config):
:func:`scrub_paths` reduces absolute and home paths in a record before it is written,
and :func:`check_no_local_paths` refuses a written folder whose text still names a local
directory or the user.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Any

from .errors import HfPxError, HfPxFailure
from .utils import first_line

# what may be asked of the Hub: NAME or NAMESPACE/NAME in the Hub's alphabet
_HUB_REFERENCE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# what a card may cite: NAMESPACE/NAME as huggingface_hub.utils.validate_repo_id spells it
_CITABLE_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}")


def written_as_path(text: str) -> bool:
    """Whether `text` is spelled as a path rather than a Hub id (existence not asked)."""
    return text.startswith((".", "/", "~")) or "\\" in text or not _HUB_REFERENCE.fullmatch(text)


def is_local(reference: str | os.PathLike) -> bool:
    """Whether `reference` names something on this machine rather than a Hub id."""
    text = os.fspath(reference)
    return Path(text).expanduser().exists() or written_as_path(text)


def local_dir(reference: str | os.PathLike | None) -> Path | None:
    """`reference` as an existing local directory (``~`` expanded), else None."""
    if reference is None:
        return None
    path = Path(os.fspath(reference)).expanduser()
    return path if path.is_dir() else None


def looks_like_hub_id(value: Any) -> bool:
    """NAMESPACE/NAME that is not also a local path (a relative dir can look like an id)."""
    if not isinstance(value, str) or not _CITABLE_ID.fullmatch(value):
        return False
    if ".." in value or value.endswith((".git", ".")):
        return False
    return not is_local(value)


def last_component(text: str) -> str:
    """The last component of a path written with either separator (a Windows path read
    on POSIX keeps its backslashes in ``Path.name``)."""
    return re.split(r"[/\\]", text.rstrip("/\\"))[-1]


def public_name(reference: str | os.PathLike | None) -> str | None:
    """How a data set or model is named in written files: Hub ids as they are, local
    paths by their last component only (no local path is ever written)."""
    if reference is None:
        return None
    text = os.fspath(reference)
    if is_local(text):
        return last_component(Path(text).expanduser().name) or "local"
    return text


def check_repo_id(repo_id: str) -> None:
    """A one-line error unless `repo_id` is a repo id the Hub accepts."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HfPxError(
            f"invalid repo id {repo_id!r}; use NAMESPACE/NAME, e.g. my-user/vit-base-px90"
        ) from None


def local_files(
    ref: str | os.PathLike,
    patterns: list[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local directory holding `ref`'s files that match `patterns`.

    A directory is used as it is; a Hub model id is fetched through
    `huggingface_hub` (only the matching files, into the normal cache, so it
    works offline for a cached repo). Which of the files exist is the caller's
    to check.
    """
    directory = local_dir(ref)
    if directory is not None:
        return directory
    text = os.fspath(ref)
    if is_local(text):
        raise HfPxError(f"{text} is not a directory or a Hub model id; check the path")
    from huggingface_hub import errors, snapshot_download

    try:
        return Path(
            snapshot_download(text, revision=revision, token=token, allow_patterns=patterns)
        )
    except errors.RepositoryNotFoundError:
        raise HfPxError(
            f"no model {text!r} on the Hub (or it is private); check the id or set HF_TOKEN"
        ) from None
    except errors.RevisionNotFoundError:
        raise HfPxError(f"{text!r} has no revision {revision!r}; check --revision") from None
    except errors.LocalEntryNotFoundError:
        raise HfPxError(
            f"{text!r} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE?); "
            "download it once online, or pass a local directory"
        ) from None
    except (errors.HfHubHTTPError, OSError) as err:
        raise HfPxError(
            f"cannot download {text!r} from the Hub ({first_line(err)}); retry later"
        ) from None


# ---------------------------------------------------------------- scrubbing


def scrub_paths(value: Any) -> Any:
    """Absolute or home-relative path strings → their last component, recursively.

    Only those: a record also holds regular expressions and relative names, which a
    looser rule (a backslash, a leading dot) would mangle.
    """
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_paths(v) for v in value)
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    return value


# a URL names a path on a server, not on this machine (file:// URLs excepted)
_URL = re.compile(r"(?<![\w.+-])(?!file:)[A-Za-z][\w+.-]*://[^\s\"'<>()\[\]`]*")
_PATH_START = r"(?<![\w.\-/\\~])"  # a path begins a token: not inside an id, URL or name
_NAME_END = r"(?![\w.\-])"  # ... and a name ends where the next component would begin
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".csv")


def local_path_leak(text: str, paths: set[str], user: str) -> str | None:
    """The local path or user name `text` names as a path, or None.

    The user name counts as a path component (``/data/alice/…``, ``C:\\Users\\alice``,
    ``~alice``), never as a Hub namespace (``alice/model``, ``huggingface.co/alice/…``).
    """
    text = _URL.sub(" ", text)
    for p in sorted(paths, key=len, reverse=True):
        if re.search(_PATH_START + re.escape(p) + _NAME_END, text):
            return p
    if user:
        component = rf"(?:(?:[A-Za-z]:)?[/\\](?:[^\s\"'`<>|]*?[/\\])?|~){re.escape(user)}"
        if re.search(_PATH_START + component + _NAME_END, text):
            return user
    return None


def check_no_local_paths(directory: Path, paths: list[Path]) -> None:
    """No text file written in `directory` may name one of `paths`, the home directory
    or the user."""
    needles = {str(p.absolute()) for p in paths} | {str(p.resolve()) for p in paths}
    needles.add(str(Path.home()))
    # short strings ("/a") would match ordinary text ("n/a")
    needles = {n for n in needles if len(n) >= 4}
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    user = user if len(user) >= 3 else ""
    for f in sorted(directory.rglob("*")):
        if not f.is_file() or f.suffix not in _TEXT_SUFFIXES:
            continue
        found = local_path_leak(f.read_text(errors="replace"), needles, user)
        if found is not None:
            raise HfPxFailure(
                f"{f.name} would contain a local path or user name ({found!r}); nothing was "
                "written — pass Hub ids or relative names instead of local paths"
            )
