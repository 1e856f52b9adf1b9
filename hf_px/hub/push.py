"""Share a written checkpoint folder on the Hugging Face Hub.

One call to :func:`push_to_hub` = ``create_repo(exist_ok=True)`` (+ the branch
when ``revision`` names one) + ``upload_folder`` in one commit, which also deletes the
weight files (and hf-px records) of an earlier checkpoint that the new one lacks. The token comes
from the ``token`` argument, else ``HF_TOKEN``, else the login cache — resolved
by ``huggingface_hub`` itself; this module never writes, logs or prints it.

Every failure becomes an :class:`~hf_px.errors.HfPxFailure` whose one-line
message says what to do; the local folder is only ever read. The uploaded card's
loading snippet names the repo. ``hf-px prune --push-to-hub`` writes it so in the
first place, and the folder goes up as it is; a card written without knowing the
repo (``hf-px push`` of an existing folder) loads from ``"."``, so that one commit
takes the folder's files from disk and the card, that line rewritten, from memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..card import retarget_card
from ..config import CONFIG_NAME, REPORT_NAME
from ..errors import HfPxError, HfPxFailure
from ..refs import check_repo_id
from ..utils import hub_offline, read_json_dict

logger = logging.getLogger(__name__)

# files of an earlier checkpoint that a push over it deletes when the new one lacks them:
# every weight format from_pretrained may pick, and hf-px's own records (other files stay)
STALE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.gguf",
    CONFIG_NAME,
    REPORT_NAME,
)
_LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload `folder` to the model repo `repo_id`; return the commit (or PR) URL.

    The repo is created if missing (``private`` only applies then). ``revision``
    names a branch, created from ``main`` when it does not exist yet;
    ``create_pr`` opens a pull request against ``main`` instead of committing to it.
    """
    folder = _check_folder(folder)
    if create_pr and revision not in (None, "main"):
        raise HfPxError(
            "--create-pr opens a pull request against main; drop --revision or --create-pr"
        )
    check_push_target(repo_id, token=token)

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    summary, description = _commit_text(folder)
    message = commit_message or summary
    try:
        with _quiet_hub_warnings():
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            repo_id = repo_url.repo_id or repo_id
            if revision not in (None, "main") and not create_pr:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = {
                "repo_id": repo_id,
                "commit_message": message,
                "commit_description": description,
                "revision": revision,
                "create_pr": create_pr,
            }
            readme = _retargeted_card(folder, repo_id)
            if readme is None:  # the card already names the repo (or there is none)
                info = api.upload_folder(
                    folder_path=folder,
                    # in the same commit: weights the new checkpoint lacks would load instead
                    delete_patterns=list(STALE_PATTERNS),
                    **commit,
                )
            else:
                operations = _operations(api, folder, readme, repo_id, revision, create_pr)
                info = api.create_commit(operations=operations, **commit)
    except Exception as exc:  # mapped to one line below; anything unknown re-raised
        failure = _as_failure(exc, repo_id, api.endpoint)
        if failure is exc:
            raise
        raise failure from None
    url = info.pr_url or info.commit_url
    logger.info("pushed %s to %s", folder.name, url)
    return str(url)


def _retargeted_card(folder: Path, repo_id: str) -> str | None:
    """The folder's card with its snippet loading `repo_id`; None when it needs no change."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return retarget_card(text, repo_id)


def _operations(
    api: Any, folder: Path, readme: str, repo_id: str, revision: str | None, create_pr: bool
) -> list:
    """What ``upload_folder(delete_patterns=STALE_PATTERNS)`` would commit, the card
    taken from `readme` instead of the folder's file."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    kept = filter_repo_objects(files, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, "README.md"])
    adds = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(files[rel])) for rel in kept]
    adds.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode()))
    added = {op.path_in_repo for op in adds}
    # a pull request is opened against main: what it would delete is main's
    remote = api.list_repo_files(repo_id, revision=None if create_pr else revision)
    stale = filter_repo_objects(remote, allow_patterns=list(STALE_PATTERNS))
    deletes = [
        CommitOperationDelete(path_in_repo=rel)
        for rel in stale
        if rel not in added and rel != ".gitattributes"
    ]
    return deletes + adds


@contextlib.contextmanager
def _quiet_hub_warnings() -> Iterator[None]:
    """huggingface_hub logs each retry ("Retrying in 1s") at WARNING; a failed push must end
    in one line that says what to do, so at the default verbosity those stay silent."""
    hub_logger = logging.getLogger("huggingface_hub")
    previous = hub_logger.level
    if hub_logger.getEffectiveLevel() == logging.WARNING:
        hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(previous)


def _check_folder(folder: str | Path) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise HfPxError(f"{path.name or folder!s} is not a directory; pass a checkpoint folder")
    if not any(p.is_file() for p in path.iterdir()):
        raise HfPxError(f"{path.name} is empty; write a checkpoint there first (hf-px prune)")
    return path


def check_push_target(repo_id: str, *, token: str | None = None) -> None:
    """What a push needs that is knowable before any work: a valid repo id, the Hub
    reachable in principle (not offline) and a token. Makes no request."""
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if hub_offline():
        raise HfPxError(f"cannot push to {repo_id} while HF_HUB_OFFLINE is set; unset it")
    if token is None and get_token() is None:
        raise HfPxFailure(f"no Hugging Face token found; {_LOGIN_HINT}")


def _commit_text(folder: Path) -> tuple[str, str]:
    """A commit summary naming what was pruned and how, from the files being pushed."""
    config = read_json_dict(folder / CONFIG_NAME)
    report = read_json_dict(folder / REPORT_NAME)
    if not config:
        return f"Upload {folder.name} with hf-px", ""
    family = config.get("model_type") or "model"
    method = str(config.get("method", "?"))
    achieved = report.get("sparsity", config.get("sparsity"))
    summary = f"Upload {family} pruned to {_pct(achieved)} sparsity with {method} (hf-px)"
    lines = [
        f"- method: {method}, {config.get('rounds')} round(s), scope {config.get('scope')}",
        f"- sparsity: requested {_pct(config.get('sparsity'))}, achieved {_pct(achieved)}",
        f"- hf-px version: {config.get('hf_px_version', '?')}",
    ]
    return summary, "\n".join(lines)


def _pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError):
        return "?"


def _as_failure(exc: Exception, repo_id: str, endpoint: str) -> Exception:
    """One-line, actionable message for what the Hub (or the network) said."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    tail = "the local checkpoint is complete and unchanged"
    if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
        return HfPxFailure(
            "the Hub rejected the model card's metadata; fix the YAML header of README.md "
            f"and push again ({tail})"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HfPxFailure(f"cannot push while HF_HUB_OFFLINE is set; unset it and retry ({tail})")
    if isinstance(exc, httpx2.TransportError):
        return HfPxFailure(
            f"could not reach the Hub at {endpoint} ({type(exc).__name__}); check your network "
            f"connection or HF_ENDPOINT and retry ({tail})"
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return HfPxFailure(f"the Hub rejected the token (HTTP 401); {_LOGIN_HINT} ({tail})")
        if status == 403:
            return HfPxFailure(
                f"no write permission on {repo_id} (HTTP 403); use a token with write access to "
                f"that namespace or push to a repo you own ({tail})"
            )
        if status == 404:
            return HfPxFailure(
                f"repository or branch not found for {repo_id} (HTTP 404); check the repo id, "
                f"--revision and that your token can see the repo ({tail})"
            )
        if status in (409, 412):
            return HfPxFailure(
                f"the repo changed during the upload (HTTP {status}); retry the push ({tail})"
            )
        if status == 429 or status >= 500:
            return HfPxFailure(
                f"the Hub is unavailable or rate-limiting (HTTP {status}); retry the push "
                f"later ({tail})"
            )
        return HfPxFailure(f"the Hub refused the upload (HTTP {status}); check {repo_id} ({tail})")
    if isinstance(exc, OSError):
        return HfPxFailure(
            f"could not read the checkpoint for upload ({exc.strerror or type(exc).__name__}); "
            "check the folder's permissions and free space in the temp directory"
        )
    return exc
